"""The decoder's blocks' params stored stacked: `layers_0`, `layers_1`, ... as one tree with a leading layer axis.

The model, weight import/export, LoRA and exported params use the per-layer layout. A train state of a model
with scanned blocks keeps them stacked instead (`STACKED`, leaves [L, ...]): the scan reads them as stored, the
gradient comes out of the scan stacked, and the optimizer updates a few stacked arrays instead of one per layer
and weight, which XLA compiles as a few kernels instead of hundreds (the scanned Gemma-3-270M step: about half
the compile time). The loss unstacks them by slicing, which XLA folds into the scan's own stacking.
"""
from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

STACKED = "stacked_layers"
_LAYER_KEY = re.compile(r"layers_(\d+)")


def _layer_keys(tree: dict) -> list[str]:
  """The per-layer keys of a decoder params dict, in layer order (empty for any other dict)."""
  keys = [k for k in tree if isinstance(k, str) and _LAYER_KEY.fullmatch(k)]
  keys.sort(key=lambda k: int(k[len("layers_"):]))
  if keys and keys != [f"layers_{i}" for i in range(len(keys))]:
    raise ValueError(f"decoder params hold layers {keys}, not layers_0..layers_{len(keys) - 1}")
  return keys


def _is_box(x) -> bool:
  return isinstance(x, nn.Partitioned)


def _stack_leaves(*leaves):
  """One stacked leaf [L, ...] from L per-layer leaves: host numpy stays numpy; a logically partitioned box
  gets an unsharded leading axis; abstract or device arrays are stacked with jnp."""
  if _is_box(leaves[0]):
    return leaves[0].replace(value=_stack_leaves(*[x.value for x in leaves]), names=(None, *leaves[0].names))
  if all(isinstance(x, np.ndarray) for x in leaves):
    return np.stack(leaves)
  return jnp.stack(leaves)


def _map_decoder(params: Any, fn) -> Any:
  """`params` with `fn` applied to every dict that is a decoder's params (holds `layers_i` or `STACKED`)."""
  if not isinstance(params, dict):
    return params
  if STACKED in params or _layer_keys(params):
    return fn(params)
  return {k: _map_decoder(v, fn) for k, v in params.items()}


def stack_layers(params: Any) -> Any:
  """Per-layer decoder params -> one `STACKED` tree with leaves [L, ...]; everything else unchanged.

  Works on host numpy, device or abstract arrays and on boxed (logically partitioned) params from `init`."""
  def one(decoder: dict) -> dict:
    keys = _layer_keys(decoder)
    if not keys:
      return decoder
    out = {k: v for k, v in decoder.items() if k not in keys}
    out[STACKED] = jax.tree_util.tree_map(_stack_leaves, *[decoder[k] for k in keys], is_leaf=_is_box)
    return out
  return _map_decoder(params, one)


def unstack_layers(params: Any) -> Any:
  """The inverse of `stack_layers` (identity on per-layer params): leaf i of layer `layers_i` is stacked[i]."""
  def one(decoder: dict) -> dict:
    if STACKED not in decoder:
      return decoder
    out = {k: v for k, v in decoder.items() if k != STACKED}
    stacked = decoder[STACKED]
    n = jax.tree_util.tree_leaves(stacked)[0].shape[0]
    for i in range(n):
      out[f"layers_{i}"] = jax.tree_util.tree_map(lambda w, i=i: w[i], stacked)
    return out
  return _map_decoder(params, one)

