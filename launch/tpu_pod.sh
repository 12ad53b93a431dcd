#!/usr/bin/env bash
# Create a Cloud TPU VM slice, install calrec_jax on every host, and run a training stage on all hosts at once.
#
#   launch/tpu_pod.sh create                                   # TPU VM slice (env below picks name/zone/type)
#   launch/tpu_pod.sh setup                                    # clone/copy the repo + pip install on every host
#   launch/tpu_pod.sh train configs/stage1.py /mnt/runs/stage1 [--config.key=value ...]
#   launch/tpu_pod.sh train configs/stage2.py /mnt/runs/stage2 --config.ckpt.init_from=/mnt/runs/stage1
#   launch/tpu_pod.sh evaluate configs/stage2.py /mnt/runs/stage2
#   launch/tpu_pod.sh delete
#
# Every host runs the same command (SPMD). On TPU pods jax.distributed.initialize() finds the coordinator,
# process count and id by itself, so the only multi-host switch is --config.multihost.enabled=True. The workdir
# must be a POSIX path all hosts share: `setup` mounts the bucket $BUCKET with gcsfuse at /mnt/runs (or use
# Filestore/NFS). Checkpoints are written collectively by all hosts.
set -euo pipefail

TPU_NAME=${TPU_NAME:-calrec}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-32}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
REPO_DIR=${REPO_DIR:-calrec_jax}            # folder on each host
BUCKET=${BUCKET:-}                          # GCS bucket mounted at /mnt/runs on every host (optional)
SRC=$(cd "$(dirname "$0")/.." && pwd)

on_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"
}

cmd=${1:-}
shift || true
case "$cmd" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
      --version="$RUNTIME"
    ;;
  setup)
    tar -C "$SRC" --exclude=.venv --exclude=workdirs --exclude=.git -czf /tmp/calrec_jax_src.tgz .
    gcloud compute tpus tpu-vm scp /tmp/calrec_jax_src.tgz "$TPU_NAME":/tmp/ --zone="$ZONE" --worker=all
    on_all "mkdir -p $REPO_DIR && tar -C $REPO_DIR -xzf /tmp/calrec_jax_src.tgz && cd $REPO_DIR && \
      python3 -m venv .venv && .venv/bin/pip install -q -U pip && .venv/bin/pip install -q -e '.[weights]' && \
      .venv/bin/pip install -q 'jax[tpu]==0.10.2' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html && \
      .venv/bin/python -c 'import jax; print(jax.process_index(), jax.device_count())'"
    if [[ -n "$BUCKET" ]]; then
      on_all "sudo mkdir -p /mnt/runs && sudo chown \$USER /mnt/runs && \
        (command -v gcsfuse >/dev/null || (sudo apt-get -qq update && sudo apt-get -qq install -y gcsfuse)) && \
        gcsfuse --implicit-dirs $BUCKET /mnt/runs"
    fi
    ;;
  train|evaluate|pipeline)
    config=${1:?config file}; workdir=${2:?workdir (a path shared by all hosts)}; shift 2
    on_all "cd $REPO_DIR && .venv/bin/python -m calrec_jax.main --config=$config --workdir=$workdir --mode=$cmd \
      --config.multihost.enabled=True --config.train.progress=False $* 2>&1 | tee -a \$HOME/calrec_$cmd.log"
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
    ;;
  *)
    sed -n '2,16p' "$0"
    exit 2
    ;;
esac
