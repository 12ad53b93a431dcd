#!/usr/bin/env bash
# Multi-node GPU run: one process per node (all its GPUs), joined with jax.distributed; the same interface as
# launch/tpu_pod.sh.
#
#   launch/multihost_gpu.sh [--dry-run] --launcher=slurm --nodes=2 --gpus-per-node=8 MODE CONFIG WORKDIR [...]
#   launch/multihost_gpu.sh [--dry-run] --launcher=ssh --hosts=gpu1,gpu2 MODE CONFIG WORKDIR [...]
#   COORDINATOR=gpu1:1234 NUM_HOSTS=2 HOST_ID=0 launch/multihost_gpu.sh --launcher=here MODE CONFIG WORKDIR [...]
#
# MODE: train, pipeline (stage 1 -> stage 2 -> evaluation) or evaluate. WORKDIR must be a filesystem every node
# sees (NFS, GCS fuse): checkpoints are written collectively; process 0 writes logs, tables and exports.
# Settings (flags, or environment variables):
#   --launcher / LAUNCHER       slurm (srun inside an allocation or as a job step), ssh, or here (this node only)
#   --nodes / NODES             slurm: number of nodes
#   --gpus-per-node / GPUS_PER_NODE   slurm: GPUs per node (default 8)
#   --hosts / HOSTS             ssh: comma-separated host names; the first is the coordinator
#   --port / PORT               coordinator port (default 12355)
#   --repo-dir / REPO_DIR       the code's folder on every node (default: this checkout's path)
#   COORDINATOR, NUM_HOSTS, HOST_ID   here: host:port of process 0, process count, this process's id
#                               (under SLURM: SLURM_NTASKS and SLURM_PROCID)
# --dry-run prints the exact commands, quoted as they would run, and runs nothing.
set -euo pipefail

DRY_RUN=0
source "$(dirname "$0")/common.sh"  # die, check_config
while [[ $# -gt 0 && $1 == --* ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --launcher=*) LAUNCHER=${1#*=} ;;
    --nodes=*) NODES=${1#*=} ;;
    --gpus-per-node=*) GPUS_PER_NODE=${1#*=} ;;
    --hosts=*) HOSTS=${1#*=} ;;
    --port=*) PORT=${1#*=} ;;
    --repo-dir=*) REPO_DIR=${1#*=} ;;
    --help|-h) sed -n '2,23p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done
mode=${1:-}; config=${2:-}; workdir=${3:-}
[[ $mode =~ ^(train|evaluate|pipeline)$ ]] || die "MODE must be train, pipeline or evaluate (got '${mode}'); see --help"
[[ -n $config && -n $workdir ]] || die "$mode needs CONFIG and WORKDIR (a path every node shares)"
shift 3
[[ -n ${LAUNCHER:-} ]] || die "LAUNCHER is not set: pass --launcher=slurm, --launcher=ssh or --launcher=here"
PORT=${PORT:-12355}
REPO_DIR=${REPO_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
SELF=$REPO_DIR/launch/multihost_gpu.sh

run() { if ((DRY_RUN)); then printf '%q ' "$@" | sed 's/ $//'; echo; else "$@"; fi; }
quote() { printf '%q ' "$@" | sed 's/ $//'; }

case "$LAUNCHER" in
  here)
    : "${COORDINATOR:=}"
    NUM_HOSTS=${NUM_HOSTS:-${SLURM_NTASKS:-}}
    HOST_ID=${HOST_ID:-${SLURM_PROCID:-}}
    if [[ -z $COORDINATOR && -n ${SLURM_JOB_NODELIST:-} ]]; then
      COORDINATOR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):$PORT"
    fi
    [[ -n $COORDINATOR ]] || die "COORDINATOR is not set: export COORDINATOR=<host of process 0>:<port>"
    [[ -n $NUM_HOSTS ]] || die "NUM_HOSTS is not set: export NUM_HOSTS=<number of processes>"
    [[ -n $HOST_ID ]] || die "HOST_ID is not set: export HOST_ID=<this process's id, 0..NUM_HOSTS-1>"
    cd "$REPO_DIR"
    args=(.venv/bin/python -m calrec_jax.main "--config=$config" "--workdir=$workdir" "--mode=$mode"
          --config.multihost.enabled=True "--config.multihost.coordinator=$COORDINATOR"
          "--config.multihost.num_processes=$NUM_HOSTS" "--config.multihost.process_id=$HOST_ID"
          --config.train.progress=False "$@")
    if ((DRY_RUN)); then run "${args[@]}"; else exec "${args[@]}"; fi
    ;;
  slurm)
    [[ -n ${NODES:-} ]] || die "NODES is not set: pass --nodes=<number of nodes> (or export NODES=...)"
    check_config "$mode" "$config" "$@"
    GPUS_PER_NODE=${GPUS_PER_NODE:-8}
    # each task runs this script with --launcher=here; SLURM gives its id, the first node is the coordinator
    run srun --nodes="$NODES" --ntasks-per-node=1 --gpus-per-node="$GPUS_PER_NODE" --kill-on-bad-exit=1 \
      env PORT="$PORT" REPO_DIR="$REPO_DIR" bash "$SELF" --launcher=here "$mode" "$config" "$workdir" "$@"
    ;;
  ssh)
    [[ -n ${HOSTS:-} ]] || die "HOSTS is not set: pass --hosts=<host1,host2,...> (the first is the coordinator)"
    check_config "$mode" "$config" "$@"
    IFS=, read -r -a hosts <<< "$HOSTS"
    n=${#hosts[@]}
    pids=()
    for ((i = 0; i < n; i++)); do
      remote="cd $(quote "$REPO_DIR") && COORDINATOR=$(quote "${hosts[0]}:$PORT") NUM_HOSTS=$n HOST_ID=$i \
$(quote bash launch/multihost_gpu.sh --launcher=here "$mode" "$config" "$workdir" "$@")"
      if ((DRY_RUN)); then
        run ssh "${hosts[$i]}" "$remote"
      else
        ssh "${hosts[$i]}" "$remote" > "calrec_${mode}_host$i.log" 2>&1 &
        pids+=($!)
      fi
    done
    status=0
    for p in "${pids[@]}"; do wait "$p" || status=1; done
    ((DRY_RUN)) || echo "logs: calrec_${mode}_host*.log"
    exit $status
    ;;
  *) die "unknown launcher '$LAUNCHER': use slurm, ssh or here" ;;
esac
