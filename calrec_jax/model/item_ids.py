"""Learned item identities beside the item text (model.item_id_offsets): the item tower's vector of catalog item g
becomes normalize(v_T(text) + offsets[g]) with a trained table offsets [I, E] that starts at zero.

The text half still carries what items share (words, brands, categories) and is all a new item has: its row stays
zero, so an item training never saw as a target is ranked by its text alone. The table is the params entry
'item_offsets', indexed by the encoder's global item ids (data/examples.py: categories in config order)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from calrec_jax.model.pooling import l2_normalize

Array = jax.Array
PARAM = "item_offsets"


def with_offsets(vectors: Array, table: Array, ids: Array) -> Array:
  """normalize(vectors + table[ids]): vectors [N, E] L2-normalised text vectors, table [I, E], ids [N] global item
  ids; an id outside [0, I) (padding, or an item the table does not hold) adds nothing."""
  ids = jnp.asarray(ids)
  inside = (ids >= 0) & (ids < table.shape[0])
  rows = jnp.take(table, jnp.clip(ids, 0, table.shape[0] - 1), axis=0) * inside[:, None]   # [N, E]
  return l2_normalize(vectors.astype(jnp.float32) + rows.astype(jnp.float32))


def apply_to_catalog(vectors: np.ndarray, params, ids: np.ndarray) -> np.ndarray:
  """Host version for evaluation and serving: `vectors` [N, E] of items whose global ids are `ids` [N] (-1: an
  item the trained table does not hold), unchanged when the params hold no table."""
  table = params.get(PARAM) if hasattr(params, "get") else None
  if table is None:
    return vectors
  return np.asarray(with_offsets(jnp.asarray(vectors), jnp.asarray(table), jnp.asarray(ids, jnp.int32)))


def carried_table(source, rows: int, dim: int, log) -> np.ndarray:
  """The table a run starts with from a source's params: the source's own when its shape is [rows, dim], else
  zeros (the source holds none, or was trained on another catalog: a stage 2 on one category of stage 1's
  mixture starts its identities afresh)."""
  table = source.get(PARAM) if hasattr(source, "get") else None
  if table is not None and tuple(np.shape(table)) == (rows, dim):
    return np.asarray(table, np.float32)
  if table is not None:
    log.info("item_offsets: the source's table is %s, this catalog needs [%d, %d]; starting from zeros",
             list(np.shape(table)), rows, dim)
  return np.zeros((rows, dim), np.float32)
