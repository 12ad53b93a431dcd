#!/usr/bin/env bash
# One process per host (all local GPUs each) joined with jax.distributed; run this on every host.
#
#   COORDINATOR=10.0.0.1:1234 NUM_HOSTS=2 HOST_ID=0 launch/multihost_gpu.sh configs/stage1.py /shared/runs/stage1
#   COORDINATOR=10.0.0.1:1234 NUM_HOSTS=2 HOST_ID=1 launch/multihost_gpu.sh configs/stage1.py /shared/runs/stage1
#
# The workdir must be a filesystem every host sees (NFS, GCS fuse): checkpoints are written collectively.
# Under SLURM, HOST_ID defaults to $SLURM_PROCID and NUM_HOSTS to $SLURM_NTASKS.
set -euo pipefail
config=${1:?config file}; workdir=${2:?shared workdir}; shift 2
: "${COORDINATOR:?host:port of host 0}"
NUM_HOSTS=${NUM_HOSTS:-${SLURM_NTASKS:?NUM_HOSTS}}
HOST_ID=${HOST_ID:-${SLURM_PROCID:?HOST_ID}}
cd "$(dirname "$0")/.."
exec .venv/bin/python -m calrec_jax.main --config="$config" --workdir="$workdir" \
  --config.multihost.enabled=True --config.multihost.coordinator="$COORDINATOR" \
  --config.multihost.num_processes="$NUM_HOSTS" --config.multihost.process_id="$HOST_ID" \
  --config.train.progress=False "$@"
