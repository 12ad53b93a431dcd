"""The two-tower model's variables: the batches it takes (abstract, for eval_shape and ahead-of-time compilation),
its initialised params, and their abstract shapes and shardings."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from calrec_jax.model import item_ids, sharding as shd
from calrec_jax.model.two_tower import TwoTower


def example_batch(batch_size: int, seq_len: int, target_len: int, item_len: int) -> dict[str, jax.ShapeDtypeStruct]:
  """Abstract batch (for eval_shape and ahead-of-time compilation)."""
  i32, f32, b = jnp.int32, jnp.float32, jnp.bool_
  s = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt)  # noqa: E731
  return {"tokens": s((batch_size, seq_len), i32), "positions": s((batch_size, seq_len), i32),
          "input_mask": s((batch_size, seq_len), b), "history_mask": s((batch_size, seq_len), b),
          "target_mask": s((batch_size, seq_len), b), "lm_positions": s((batch_size, target_len), i32),
          "lm_labels": s((batch_size, target_len), i32), "lm_weights": s((batch_size, target_len), f32),
          "item_tokens": s((batch_size, item_len), i32), "item_positions": s((batch_size, item_len), i32),
          "item_mask": s((batch_size, item_len), b), "item_text_mask": s((batch_size, item_len), b),
          "target_id": s((batch_size,), i32), "example_weight": s((batch_size,), f32)}


def packed_batch(batch_size: int, slots: int, seq_len: int, target_len: int, item_len: int, hidden=None
                 ) -> dict[str, jax.ShapeDtypeStruct]:
  """Abstract packed batch (data/packed.py layout; item_len: the item-tower row), for ahead-of-time compilation;
  with `hidden` (d_model, dtype) of a frozen-layer cache, its joint_hidden [B, T, D] and item_hidden [B, Ti, D]."""
  i32, f32, b = jnp.int32, jnp.float32, jnp.bool_
  s = lambda *shape, dt: jax.ShapeDtypeStruct(shape, dt)  # noqa: E731
  n, k, t, ti = batch_size, slots, seq_len, item_len
  extra = {} if hidden is None else {"joint_hidden": s(n, t, hidden[0], dt=hidden[1]),
                                     "item_hidden": s(n, ti, hidden[0], dt=hidden[1])}
  return {**extra, "tokens": s(n, t, dt=i32), "positions": s(n, t, dt=i32), "input_mask": s(n, t, dt=b),
          "segment_ids": s(n, t, dt=i32), "history_mask": s(n, k, t, dt=b), "target_mask": s(n, k, t, dt=b),
          "lm_positions": s(n, k, target_len, dt=i32), "lm_labels": s(n, k, target_len, dt=i32),
          "lm_weights": s(n, k, target_len, dt=f32), "item_tokens": s(n, ti, dt=i32),
          "item_positions": s(n, ti, dt=i32), "item_mask": s(n, ti, dt=b), "item_segment_ids": s(n, ti, dt=i32),
          "item_text_mask": s(n, k, ti, dt=b), "target_id": s(n, k, dt=i32), "slot_weight": s(n, k, dt=f32),
          "example_weight": s(n, dt=f32)}


def init_boxed(model: TwoTower, rng, batch_shapes):
  """The model's params initialised on zeros shaped like `batch_shapes`, leaves boxed with their logical axes
  (nn.LogicallyPartitioned; eval_shape of this gives the shardings)."""
  dummy = {k: jnp.zeros(v.shape, v.dtype) for k, v in batch_shapes.items()}
  params = model.init(rng, dummy)["params"]
  if model.num_item_ids and model.id_offsets:  # learned item identities (model/item_ids.py), zeros, replicated
    table = jnp.zeros((model.num_item_ids, model.projection_dim or model.cfg.d_model), model.param_dtype)
    params = {**params, item_ids.PARAM: nn.LogicallyPartitioned(table, (None, None))}
  if model.num_item_ids and model.id_bias:  # a learned bias per item (model/item_ids.py), zeros, replicated
    bias = jnp.zeros((model.num_item_ids,), model.param_dtype)
    params = {**params, item_ids.BIAS: nn.LogicallyPartitioned(bias, (None,))}
  return params


def init_params(model: TwoTower, rng, batch_shapes):
  """Freshly initialised params (unboxed arrays) of `model`."""
  return nn.meta.unbox(init_boxed(model, rng, batch_shapes))


def params_shardings(model: TwoTower, mesh: Mesh, batch_shapes, rules=shd.DEFAULT_RULES) -> tuple[Any, Any]:
  """(NamedSharding tree, abstract tree) of the params alone (evaluation, export)."""
  abstract = jax.eval_shape(lambda r: init_boxed(model, r, batch_shapes), jax.random.PRNGKey(0))
  return shd.shardings_from_boxed(abstract, mesh, rules), nn.meta.unbox(abstract)
