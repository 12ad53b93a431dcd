"""Learned per-item tables beside the item text, indexed by global item id, both starting at zero:

- identities (model.item_id_offsets): the item tower's vector of catalog item g becomes
  normalize(v_T(text) + offsets[g]) with a trained table offsets [I, E];
- a bias (model.item_bias): item g's score against a user becomes v_U . v_T(g) + bias[g] with a trained [I] vector,
  in the contrastive logits as (q . k + bias[g]) / temperature. Against the whole catalog it learns how often each
  item is bought beyond what its text tells (the items' marginal), inside the model's own score. Evaluation and
  serving carry it as one more coordinate: each item vector gets bias[g] appended, each user vector a 1
  (`apply_to_catalog`, `user_side`), so every v_U @ v_T.T product includes it.

The text half still carries what items share (words, brands, categories) and is all a new item has: its row stays
zero, so an item training never saw as a target is ranked by its text alone. The tables are the params entries
'item_offsets' and 'item_bias', indexed by the encoder's global item ids (data/examples.py: categories in config
order); a run writes which item each row is to <workdir>/item_identities.json, so that a stage started from it
carries the rows of the items both catalogs hold."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from calrec_jax.errors import DataError
from calrec_jax.model.pooling import l2_normalize

Array = jax.Array
PARAM = "item_offsets"
BIAS = "item_bias"
TABLES = (PARAM, BIAS)  # the per-item params entries, [I, E] and [I]
LAYOUT_FILE = "item_identities.json"


def with_offsets(vectors: Array, table: Array, ids: Array) -> Array:
  """normalize(vectors + table[ids]): vectors [N, E] L2-normalised text vectors, table [I, E], ids [N] global item
  ids; an id outside [0, I) (padding, or an item the table does not hold) adds nothing."""
  return l2_normalize(vectors.astype(jnp.float32) + rows_of(table, ids).astype(jnp.float32))   # [N, E]


def rows_of(table: Array, ids: Array) -> Array:
  """table[ids] ([N, ...] from [I, ...] and ids [N]); an id outside [0, I) (padding, or an item the table does
  not hold) gives zeros."""
  ids = jnp.asarray(ids)
  inside = (ids >= 0) & (ids < table.shape[0])
  rows = jnp.take(table, jnp.clip(ids, 0, table.shape[0] - 1), axis=0)
  return rows * inside.reshape(inside.shape + (1,) * (rows.ndim - 1)).astype(rows.dtype)


def apply_to_catalog(vectors: np.ndarray, params, ids: np.ndarray) -> np.ndarray:
  """Host version for evaluation and serving: `vectors` [N, E] of items whose global ids are `ids` [N] (-1: an
  item the trained tables do not hold) with their offsets added ([N, E]) and their bias appended ([N, E + 1]),
  unchanged when the params hold neither table."""
  table, bias = params.get(PARAM), params.get(BIAS)
  ids = jnp.asarray(ids, jnp.int32)
  if table is not None:
    vectors = np.asarray(with_offsets(jnp.asarray(vectors), jnp.asarray(table), ids))
  if bias is not None:
    column = np.asarray(rows_of(jnp.asarray(bias, jnp.float32), ids), np.float32)[:, None]    # [N, 1]
    vectors = np.concatenate([np.asarray(vectors, np.float32), column], axis=1)
  return vectors


def user_side(vectors: np.ndarray, params) -> np.ndarray:
  """User vectors [U, E] as `apply_to_catalog`'s item vectors expect them: a 1 appended ([U, E + 1]) when the
  params hold an item bias, so that v_U @ v_T.T adds each item's bias; unchanged otherwise."""
  if params.get(BIAS) is None:
    return vectors
  return np.concatenate([np.asarray(vectors, np.float32), np.ones((len(vectors), 1), np.float32)], axis=1)


def catalog_layout(categories) -> list[dict]:
  """The table's rows in order: [{'name': category, 'item_ids': [...]}] for the run's categories."""
  return [{"name": c.name, "item_ids": [str(i) for i in c.catalog.item_ids]} for c in categories]


def write_layout(folder: str, categories) -> None:
  """<folder>/item_identities.json: which item each row of the table is (read by a stage started from this run)."""
  from calrec_jax.paths import write_atomically
  write_atomically(os.path.join(folder, LAYOUT_FILE), json.dumps({"categories": catalog_layout(categories)}))


def read_layout(folder: str) -> list[dict] | None:
  """The layout a run wrote (`write_layout`), None when it wrote none; a damaged file is a DataError naming it."""
  path = os.path.join(folder, LAYOUT_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      cats = json.load(f)["categories"]
    return [{"name": str(c["name"]), "item_ids": [str(i) for i in c["item_ids"]]} for c in cats]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise DataError(f"unreadable ({type(e).__name__}: {e}); delete it to start the item identities from zeros, "
                    "or train the source run again", path) from None


def carried_table(source, shape: tuple[int, ...], log, source_layout: list[dict] | None = None,
                  target_layout: list[dict] | None = None, name: str = PARAM) -> np.ndarray:
  """The table `name` a run starts with from a source's params, `shape` [rows, ...]. With both layouts, each
  item's row is carried over by (category, item id) (a stage 2 on one category of stage 1's mixture keeps that
  category's rows) and the rest start at zero; without them, the source's table when its shape is `shape`, else
  zeros (the source holds none, or was trained on another catalog)."""
  table = source.get(name)
  rows = shape[0]
  out = np.zeros(shape, np.float32)
  if table is None:
    return out
  table = np.asarray(table, np.float32)
  if source_layout is not None and target_layout is not None and table.shape[1:] == tuple(shape[1:]):
    where = {(c["name"], i): r for r, (c, i) in enumerate((c, i) for c in source_layout for i in c["item_ids"])}
    if len(where) == sum(len(c["item_ids"]) for c in source_layout) == table.shape[0]:
      mine = [(c["name"], i) for c in target_layout for i in c["item_ids"]]
      hits = [(r, where[key]) for r, key in enumerate(mine) if key in where]
      if hits:
        to, fro = np.asarray(hits).T
        out[to] = table[fro]
      log.info("%s: carried %d of %d items' rows over from the source run (the rest start at zero)", name,
               len(hits), rows)
      return out
  if table.shape == tuple(shape):
    return table
  log.info("%s: the source's table is %s, this catalog needs %s; starting from zeros", name, list(table.shape),
           list(shape))
  return out
