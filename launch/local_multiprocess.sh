#!/usr/bin/env bash
# Rehearse a multi-host run on one machine: N CPU processes joined by jax.distributed on 127.0.0.1.
# The losses equal a one-process run (tests/test_distributed.py checks this).
#
#   launch/local_multiprocess.sh 2 configs/demo.py:smoke workdirs/two_hosts --config.train.num_steps=20
set -euo pipefail
n=${1:?number of processes}; config=${2:?config}; workdir=${3:?workdir}; shift 3
cd "$(dirname "$0")/.."
port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$(dirname "$workdir")"
pids=()
# XLA aborts a CPU process that waits more than 40 s at a collective for the others; processes sharing one
# machine can fall further behind than that while compiling, so allow 30 minutes.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_collective_call_terminate_timeout_seconds=1800"
for ((i = 0; i < n; i++)); do
  JAX_PLATFORMS=cpu .venv/bin/python -m calrec_jax.main --config="$config" --workdir="$workdir" \
    --config.multihost.enabled=True --config.multihost.coordinator="127.0.0.1:$port" \
    --config.multihost.num_processes="$n" --config.multihost.process_id="$i" --config.train.progress=False "$@" \
    > "$workdir.process$i.log" 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
echo "logs: $workdir.process*.log"
exit $status
