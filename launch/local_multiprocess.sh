#!/usr/bin/env bash
# Rehearse a multi-host run on one machine: N CPU processes joined by jax.distributed on 127.0.0.1.
# The losses equal a one-process run (tests/test_distributed.py checks this).
#
#   launch/local_multiprocess.sh [--dry-run] N CONFIG WORKDIR [calrec_jax.main flags ...]
#   launch/local_multiprocess.sh 2 configs/demo.py:smoke workdirs/two_hosts --config.train.num_steps=20
#
# Each process logs to WORKDIR.process<i>.log. --dry-run prints the N commands and runs nothing.
set -euo pipefail
DRY_RUN=0
source "$(dirname "$0")/common.sh"  # die, check_config
while [[ $# -gt 0 && $1 == --* && $1 != --config* && $1 != --mode* ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --help|-h) sed -n '2,8p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done
[[ $# -ge 3 ]] || die "expected N CONFIG WORKDIR; see --help"
n=$1; config=$2; workdir=$3; shift 3
[[ $n =~ ^[1-9][0-9]*$ ]] || die "N must be a positive number of processes (got '$n')"
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# XLA aborts a CPU process that waits more than 40 s at a collective for the others; processes sharing one
# machine can fall further behind than that while compiling, so allow 30 minutes.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_collective_call_terminate_timeout_seconds=1800"
cmds=()
for ((i = 0; i < n; i++)); do
  cmds+=("$(printf '%q ' env JAX_PLATFORMS=cpu "$python" -m calrec_jax.main --config="$config" --workdir="$workdir" \
    --config.multihost.enabled=True --config.multihost.coordinator="127.0.0.1:$port" \
    --config.multihost.num_processes="$n" --config.multihost.process_id="$i" --config.train.progress=False "$@")")
done
if [[ $DRY_RUN == 1 ]]; then
  printf '%s\n' "${cmds[@]}"
  exit 0
fi
mkdir -p "$(dirname "$workdir")"
pids=()
for ((i = 0; i < n; i++)); do
  eval "${cmds[$i]}" > "$workdir.process$i.log" 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
echo "logs: $workdir.process*.log"
exit $status
