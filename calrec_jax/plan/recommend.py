"""Which mesh, remat setting and global batch a model needs on a slice: the largest batch that fits, per device."""
from __future__ import annotations

import dataclasses

from calrec_jax.model.config import ModelConfig
from calrec_jax.plan.estimate import ACCELERATORS, StepShape, estimate, step_seconds

HEADROOM = 0.9   # plan for 90% of the device memory (the runtime, the batch pipeline and fragmentation use the rest)
SLICES = {       # name -> (accelerator, chips)
    "TPU v5e-16": ("tpu-v5e", 16), "TPU v5e-64": ("tpu-v5e", 64), "TPU v5p-16 (8 chips)": ("tpu-v5p", 8),
    "TPU v5p-64 (32 chips)": ("tpu-v5p", 32), "8x H100 80GB": ("h100", 8),
}


@dataclasses.dataclass(frozen=True)
class Plan:
  mesh: tuple[int, int, int]
  remat: bool
  global_batch: int
  gib_per_device: float
  step_s: float
  tokens_per_s: float


def meshes(devices: int) -> list[tuple[int, int, int]]:
  """(data, fsdp, tensor) layouts of `devices`: tensor 1..8, the rest split between fsdp and data."""
  out = []
  for tensor in (1, 2, 4, 8):
    if devices % tensor:
      continue
    rest = devices // tensor
    fsdp = 1
    while fsdp <= rest:
      if rest % fsdp == 0:
        out.append((rest // fsdp, fsdp, tensor))
      fsdp *= 2
  return out


def recommend(cfg: ModelConfig, accelerator: str, devices: int, seq_len: int, target_len: int, item_len: int,
              mfu: float = 0.4, max_batch: int = 4096) -> Plan | None:
  """The layout with the highest throughput that fits: largest global batch (a power of two, at least one
  sequence per data-parallel device), bfloat16 compute, unrolled blocks; without remat where both fit."""
  peak, memory = ACCELERATORS[accelerator]
  best = None
  for mesh in meshes(devices):
    for remat in (False, True):
      batch = mesh[0] * mesh[1]
      fitted = None
      while batch <= max_batch:
        shape = StepShape(batch, seq_len, target_len, item_len, mesh, remat=remat, compute_bytes=2)
        est = estimate(cfg, shape)
        if est["total"] > HEADROOM * memory:
          break
        fitted = (shape, est)
        batch *= 2
      if fitted is None:
        continue
      shape, est = fitted
      t = step_seconds(est["flops"], devices, peak, mfu)
      plan = Plan(mesh, remat, shape.global_batch, est["total"] / 2 ** 30, t,
                  shape.global_batch * (seq_len + item_len) / t)
      key = (round(plan.tokens_per_s), plan.global_batch, -mesh[2])  # remat costs FLOPs; then the batch
      if best is None or key > best[0]:
        best = (key, plan)
  return best[1] if best else None
