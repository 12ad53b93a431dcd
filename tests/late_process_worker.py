"""One of two jax.distributed CPU processes for tests/test_distributed.py: process 1 arrives `delay` seconds late
at a host collective. argv: coordinator process_id delay mode (aligned: calrec_jax.model.host_collectives;
raw: jax.experimental.multihost_utils directly)."""
import sys
import time

import jax
import numpy as np


def main(coordinator: str, process_id: int, delay: float, mode: str) -> None:
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=2, process_id=process_id)
  from calrec_jax.model import host_collectives
  jax.devices()  # the backend (and its process topology) is up before the delay
  if process_id == 1:
    time.sleep(delay)
  value = np.asarray([process_id + 1], np.int64)
  if mode == "aligned":
    every = host_collectives.allgather(value)
  else:
    from jax.experimental import multihost_utils
    every = multihost_utils.process_allgather(value)
  print("RESULT", np.asarray(every).reshape(-1).tolist(), flush=True)


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4])
