#!/usr/bin/env bash
# Cloud TPU VM slice: create it, install calrec_jax on every worker, run a stage on all workers at once
# (SPMD, --worker=all), copy the results back, delete it.
#
#   launch/tpu_pod.sh [--dry-run] create
#   launch/tpu_pod.sh [--dry-run] setup
#   launch/tpu_pod.sh [--dry-run] train    CONFIG WORKDIR [--config.key=value ...]
#   launch/tpu_pod.sh [--dry-run] pipeline CONFIG WORKDIR [...]      (stage 1 -> stage 2 -> evaluation)
#   launch/tpu_pod.sh [--dry-run] evaluate CONFIG WORKDIR [...]
#   launch/tpu_pod.sh [--dry-run] copy     WORKDIR LOCAL_DIR          (worker 0's results to this machine)
#   launch/tpu_pod.sh [--dry-run] delete
#   launch/tpu_pod.sh [--dry-run] all      MODE CONFIG WORKDIR LOCAL_DIR [...]   (create, setup, MODE, copy, delete)
#
# Settings (environment variables, or --name=value flags before the command):
#   TPU_NAME / --tpu-name       slice name (required)
#   ZONE / --zone               e.g. us-west4-a (required)
#   ACCELERATOR / --accelerator e.g. v5litepod-16, v5p-32, v4-32 (required)
#   PROJECT / --project         GCP project (default: gcloud's)
#   RUNTIME / --runtime         TPU VM image (default: from the accelerator generation)
#   BUCKET / --bucket           GCS bucket mounted at /mnt/runs on every worker (optional; WORKDIR under it is
#                               shared by all workers, which checkpoints need)
#   REPO_DIR / --repo-dir       folder of the code on each worker (default: calrec_jax)
# --dry-run prints every command, quoted exactly as it would run, and runs nothing. Arguments keep their spaces
# through the remote shell.
set -euo pipefail

DRY_RUN=0
source "$(dirname "$0")/common.sh"  # die, check_config
while [[ $# -gt 0 && $1 == --* ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --tpu-name=*) TPU_NAME=${1#*=} ;;
    --zone=*) ZONE=${1#*=} ;;
    --accelerator=*) ACCELERATOR=${1#*=} ;;
    --project=*) PROJECT=${1#*=} ;;
    --runtime=*) RUNTIME=${1#*=} ;;
    --bucket=*) BUCKET=${1#*=} ;;
    --repo-dir=*) REPO_DIR=${1#*=} ;;
    --help|-h) sed -n '2,26p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done

cmd=${1:-}
[[ -n $cmd ]] || { sed -n '2,26p' "$0"; exit 2; }
shift
need() { [[ -n ${!1:-} ]] || die "$1 is not set: export $1=... or pass --$(echo "$1" | tr 'A-Z_' 'a-z-')=... ($2)"; }
need TPU_NAME "the slice's name, e.g. calrec"
need ZONE "e.g. us-west4-a"
need ACCELERATOR "e.g. v5litepod-16"
REPO_DIR=${REPO_DIR:-calrec_jax}
BUCKET=${BUCKET:-}
if [[ -z ${RUNTIME:-} ]]; then
  case "$ACCELERATOR" in
    v5litepod-*|v5e-*) RUNTIME=v2-alpha-tpuv5-lite ;;
    v5p-*) RUNTIME=v2-alpha-tpuv5 ;;
    v6e-*) RUNTIME=v2-alpha-tpuv6e ;;
    *) RUNTIME=tpu-ubuntu2204-base ;;
  esac
fi
SRC=$(cd "$(dirname "$0")/.." && pwd)
GCLOUD=(gcloud compute tpus tpu-vm)
LOC=(--zone="$ZONE")
[[ -n ${PROJECT:-} ]] && LOC+=(--project="$PROJECT")

run() {  # run a command, or print it quoted (--dry-run)
  if ((DRY_RUN)); then printf '%q ' "$@" | sed 's/ $//'; echo; else "$@"; fi
}
quote() { printf '%q ' "$@" | sed 's/ $//'; }  # one shell-safe string of the arguments
on_all() { run "${GCLOUD[@]}" ssh "$TPU_NAME" "${LOC[@]}" --worker=all --command="$1"; }

stage() {  # MODE CONFIG WORKDIR [overrides...]: the same command on every worker
  local mode=$1 config=${2:-} workdir=${3:-}
  [[ -n $config && -n $workdir ]] || die "$mode needs CONFIG and WORKDIR (a path every worker shares, e.g. /mnt/runs/stage1)"
  shift 3
  ((${CHECKED:-0})) || check_config "$mode" "$config" "$@"
  local main=(.venv/bin/python -m calrec_jax.main "--config=$config" "--workdir=$workdir" "--mode=$mode"
              --config.multihost.enabled=True --config.train.progress=False "$@")
  on_all "cd $(quote "$REPO_DIR") && $(quote "${main[@]}") 2>&1 | tee -a \$HOME/calrec_$mode.log"
}

create() {
  run "${GCLOUD[@]}" create "$TPU_NAME" "${LOC[@]}" --accelerator-type="$ACCELERATOR" --version="$RUNTIME"
}

setup() {
  run tar -C "$SRC" --exclude=.venv --exclude=workdirs --exclude=.git -czf /tmp/calrec_jax_src.tgz .
  run "${GCLOUD[@]}" scp /tmp/calrec_jax_src.tgz "$TPU_NAME":/tmp/ "${LOC[@]}" --worker=all
  local repo
  repo=$(quote "$REPO_DIR")
  on_all "mkdir -p $repo && tar -C $repo -xzf /tmp/calrec_jax_src.tgz && cd $repo && python3 -m venv .venv && \
.venv/bin/pip install -q -U pip && .venv/bin/pip install -q -e '.[weights]' && \
.venv/bin/pip install -q 'jax[tpu]==0.10.2' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html && \
.venv/bin/python -c 'import jax; print(jax.process_index(), jax.device_count())'"
  if [[ -n $BUCKET ]]; then
    on_all "sudo mkdir -p /mnt/runs && sudo chown \$USER /mnt/runs && \
(command -v gcsfuse >/dev/null || (sudo apt-get -qq update && sudo apt-get -qq install -y gcsfuse)) && \
gcsfuse --implicit-dirs $(quote "$BUCKET") /mnt/runs"
  fi
}

copy() {  # WORKDIR LOCAL_DIR: process 0 writes logs, tables and exports; worker 0 holds them
  local workdir=${1:-} local_dir=${2:-}
  [[ -n $workdir && -n $local_dir ]] || die "copy needs WORKDIR (on the workers) and LOCAL_DIR (here)"
  run mkdir -p "$local_dir"
  run "${GCLOUD[@]}" scp --recurse "$TPU_NAME:$workdir" "$local_dir" "${LOC[@]}" --worker=0
}

delete() { run "${GCLOUD[@]}" delete "$TPU_NAME" "${LOC[@]}" --quiet; }

case "$cmd" in
  create) create ;;
  setup) setup ;;
  train|evaluate|pipeline) stage "$cmd" "$@" ;;
  copy) copy "$@" ;;
  delete) delete ;;
  all)
    mode=${1:-}; config=${2:-}; workdir=${3:-}; local_dir=${4:-}
    [[ $mode =~ ^(train|evaluate|pipeline)$ ]] || die "all needs MODE (train, evaluate or pipeline) CONFIG WORKDIR LOCAL_DIR"
    [[ -n $local_dir ]] || die "all needs MODE CONFIG WORKDIR LOCAL_DIR"
    shift 4
    check_config "$mode" "$config" "$@"  # a config that cannot run is an error before the slice exists
    CHECKED=1
    create
    if ((DRY_RUN)); then
      setup; stage "$mode" "$config" "$workdir" "$@"; copy "$workdir" "$local_dir"; delete
    else  # the slice is copied from and deleted also when a step fails: a forgotten slice keeps billing
      trap 'copy "$workdir" "$local_dir" || true; delete' EXIT
      setup
      stage "$mode" "$config" "$workdir" "$@"
    fi
    ;;
  *) die "unknown command $cmd (create, setup, train, pipeline, evaluate, copy, delete, all; see --help)" ;;
esac
