"""Host-level collectives between the processes of a multi-host run, each preceded by a coordination barrier.

JAX's host collectives (`multihost_utils`) run over Gloo on CPU, whose peers give up after a short timeout and
abort the process; on a busy machine one process can reach a collective much later than another (it was
descheduled while loading data or compiling). Every collective here first waits at a barrier of the
coordination service, which waits as long as `BARRIER_TIMEOUT_S`, so the collective itself starts with all
processes present. With one process every function is a local no-op.
"""
from __future__ import annotations

import itertools

import jax
import numpy as np

BARRIER_TIMEOUT_S = 1800  # how long a process waits for the others at a barrier
_barrier_ids = itertools.count()


def align_processes(name: str) -> None:
  """Blocks until every process reached this call (the n-th call of each process meets the others' n-th)."""
  if jax.process_count() == 1:
    return
  from jax._src import distributed
  client = distributed.global_state.client
  barrier = f"calrec_jax/{next(_barrier_ids)}/{name}"
  if client is None:  # a platform that joins processes without jax.distributed (collectives never time out)
    return
  client.wait_at_barrier(barrier, BARRIER_TIMEOUT_S * 1000)


def allgather(tree, tiled: bool = False):
  """`multihost_utils.process_allgather` once every process is present."""
  from jax.experimental import multihost_utils
  align_processes("allgather")
  return multihost_utils.process_allgather(tree, tiled=tiled)


def broadcast_from_zero(tree):
  """Process 0's `tree` on every process (`multihost_utils.broadcast_one_to_all`) once every process is present."""
  from jax.experimental import multihost_utils
  align_processes("broadcast")
  return multihost_utils.broadcast_one_to_all(tree)


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is true on any."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(allgather(np.int32(flag))))


def sync(name: str) -> None:
  """Every process waits here until all arrived (a barrier; nothing is exchanged)."""
  align_processes(name)


def use_coordination_barriers_in_orbax() -> None:
  """Orbax's own barriers (checkpoint directories, saves) through the coordination service too, instead of a
  Gloo collective (orbax's `--experimental_orbax_use_distributed_barrier`)."""
  from absl import flags
  try:
    flags.FLAGS["experimental_orbax_use_distributed_barrier"].value = True
  except KeyError:  # an orbax without the option keeps its collective barriers
    pass
