"""Logical axis names -> mesh placement, shared by parameters and activations.

Layers name their activations' axes with `constrain(x, names)`. Outside an `activation_sharding(mesh, rules)`
context (single device, tests, export) it returns `x` unchanged; inside it (the jitted train step traces in
one) it pins the activation's sharding with `jax.lax.with_sharding_constraint`.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

Rules = Sequence[tuple[str, Any]]  # (logical name, mesh axis | tuple of mesh axes | None)

# logical name -> mesh axis (or axes). Params: FSDP over 'embed', tensor parallel over heads/mlp/vocab.
DEFAULT_RULES: Rules = (
    ("vocab", "tensor"), ("embed", "fsdp"), ("heads", "tensor"), ("kv_heads", "tensor"), ("head_dim", None),
    ("mlp", "tensor"), ("norm", None),
    ("activation_batch", ("data", "fsdp")), ("activation_length", None), ("activation_embed", None),
    ("activation_heads", "tensor"), ("activation_mlp", "tensor"), ("activation_vocab", "tensor"),
)


_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar("activation_sharding",
                                                                                      default=None)


def logical_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules) -> P:
  """PartitionSpec of one array; a mesh axis is dropped where the dim is not divisible or the axis is used."""
  table = dict(rules)
  used: set[str] = set()
  out = []
  for name, dim in zip(names, shape):
    axes = table.get(name) if name is not None else None
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    keep: list[str] = []
    for ax in axes:
      if ax in used or mesh.shape[ax] == 1:
        continue
      if dim % int(np.prod([mesh.shape[a] for a in keep + [ax]])) == 0:
        keep.append(ax)
    used.update(keep)
    out.append(tuple(keep) if len(keep) > 1 else (keep[0] if keep else None))
  return P(*out)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules) -> Iterator[None]:
  """While tracing inside this context, `constrain` places activations on `mesh` by `rules`."""
  token = _ACTIVE.set((mesh, rules) if mesh.size > 1 else None)
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  active = _ACTIVE.get()
  if active is None:
    return x
  mesh, rules = active
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_spec(names, x.shape, mesh, rules)))
