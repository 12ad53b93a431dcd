# Shared by the launchers (sourced, not run): one-line errors and the local config check.

die() { echo "error: $*" >&2; exit 2; }

# check_config MODE CONFIG [flags...]: on this machine, before any remote machine is created or reached, the config
# (with the --config.* flags among the arguments) must be able to run in MODE; otherwise one error line, exit 2.
check_config() {
  local mode=$1 config=$2 here py overrides=()
  shift 2
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  py=${PYTHON:-$here/.venv/bin/python}
  for a in "$@"; do [[ $a == --config.* ]] && overrides+=("$a"); done
  [[ -x $py ]] || die "no Python at $py to check $config with: create .venv as README says, or set PYTHON"
  (cd "$here" && "$py" -m calrec_jax.check --config="$config" --mode="$mode" "${overrides[@]}") >&2 || exit 2
}
