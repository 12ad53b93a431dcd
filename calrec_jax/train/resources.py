"""Before training starts: will the compiled step fit in memory, and the checkpoints on disk? Warn clearly."""
from __future__ import annotations

import ctypes
import gc
import logging
import os
import shutil

import jax

log = logging.getLogger(__name__)


def available_host_memory() -> int | None:
  """MemAvailable of /proc/meminfo in bytes (Linux); None elsewhere."""
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    return None
  return None


def release_host_memory() -> None:
  """Returns freed host memory to the OS (glibc's malloc_trim; a no-op elsewhere).

  A checkpoint save copies the whole train state to host buffers; once the save ends they are free, but glibc
  keeps them in its free lists, where later allocations of other sizes (the next step's temporaries) do not all
  fit, so a long run's RSS would creep up by about one state per save."""
  gc.collect()
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to release this way
    pass


def tree_bytes(tree) -> int:
  return sum(int(x.size) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))


def check_resources(memory_analysis, state, keep: int, workdir: str) -> list[str]:
  """Warnings (also logged) when the step's compiled memory exceeds free host RAM on a CPU backend, or `keep`
  checkpoints of the state plus an export exceed the free disk of `workdir`."""
  warnings = []
  gib = 2 ** 30
  if memory_analysis is not None and jax.devices()[0].platform == "cpu":
    need = (memory_analysis.argument_size_in_bytes + memory_analysis.temp_size_in_bytes
            + memory_analysis.output_size_in_bytes) * jax.local_device_count()
    free = available_host_memory()
    if free is not None and need > 0.9 * free:
      warnings.append(f"the compiled train step needs about {need / gib:.1f} GiB of RAM, {free / gib:.1f} GiB is "
                      "available: the run may be killed by the OOM killer ('signal 9'). Lower data.batch_size, set "
                      "optim.grad_accum, model.remat=True or model.compute_dtype=bfloat16, or free memory")
  state_bytes = tree_bytes(state)
  need_disk = state_bytes * (keep + 1)  # keep-N checkpoints + one being written
  free_disk = shutil.disk_usage(os.path.abspath(workdir)).free
  if need_disk > free_disk:
    warnings.append(f"{keep} checkpoints of {state_bytes / gib:.2f} GiB each (+ one in progress) need about "
                    f"{need_disk / gib:.1f} GiB, {free_disk / gib:.1f} GiB is free under {workdir}: lower "
                    "ckpt.keep or free disk space")
  for w in warnings:
    log.warning("%s", w)
  return warnings
