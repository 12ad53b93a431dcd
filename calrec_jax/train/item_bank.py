"""The item bank: v_T of every catalog item, the negatives of whole-catalog contrastive losses (loss.negatives).

The bank is part of the train state (state['bank'], float32 [I, E], replicated; I = items of all the run's
categories, in the encoder's global item order), so a resumed run has the bank the uninterrupted one had. It is
refreshed from the current params every `loss.bank_refresh_steps` steps (and at step 0) by the item tower, in
fixed-size batches of items of similar length (two compiled shapes).

`SampledNegatives` (loss.sampled_negatives, mixed negative sampling, Yang et al., WWW 2020) adds M catalog items
drawn uniformly per step to the batch; the step encodes them fresh, so that items outside the batch get a gradient
as negatives too, not only the batch's targets.
"""
from __future__ import annotations

import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from calrec_jax.data.examples import ExampleEncoder
from calrec_jax.model.two_tower import TwoTower

log = logging.getLogger(__name__)


def catalog_rows(encoder: ExampleEncoder) -> list[list[int]]:
  """Item-tower input ids ([BOS] item tokens EOS) of every item of every category, in global item order."""
  tok = encoder.tok
  return [[tok.bos_id] + encoder.item_tokens(c, i) + [tok.eos_id]
          for c, cat in enumerate(encoder.categories) for i in range(len(cat.catalog))]


def item_tower_rows(rows: list[list[int]], ids, n: int, t: int, pad: int) -> tuple[np.ndarray, ...]:
  """The item tower's inputs for the items `ids` of `rows` (catalog_rows), padded to [n, t]: tokens, positions,
  input mask and text mask (the item's tokens without BOS and EOS: what v_T averages)."""
  toks = np.full((n, t), pad, np.int32)
  mask, tmask = np.zeros((n, t), bool), np.zeros((n, t), bool)
  for r, i in enumerate(ids):
    seq = rows[i]
    toks[r, :len(seq)], mask[r, :len(seq)], tmask[r, 1:len(seq) - 1] = seq, True, True
  pos = np.broadcast_to(np.arange(t, dtype=np.int32), (n, t)).copy()
  return toks, pos, mask, tmask


class ItemBank:
  """Encodes the catalog with the item tower: `encode(params) -> [I, E]` float32 (jax array, replicated)."""

  def __init__(self, model: TwoTower, encoder: ExampleEncoder, batch_size: int = 64, hidden=None):
    """hidden: a frozen-layer cache (train/layer_cache.py) for `model.cached_layers` blocks: refreshes then run
    only the blocks above them."""
    self.model, self.batch_size, self.hidden = model, batch_size, hidden
    self.rows = catalog_rows(encoder)
    self.pad = encoder.tok.pad_id
    li = encoder.spec.item_len
    self.lengths = (max(8, li // 2), li)
    lens = np.asarray([len(r) for r in self.rows])
    order = np.argsort(lens, kind="stable")  # items of similar length share a batch
    self.batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    method = TwoTower.item_embedding if hidden is None else TwoTower.item_embedding_from_hidden
    self._fn = jax.jit(lambda p, t, pos, m, tm: model.apply({"params": p}, t, pos, m, tm, method=method))

  def __len__(self) -> int:
    return len(self.rows)

  def _arrays(self, ids: np.ndarray):
    t = next(n for n in self.lengths if n >= max(len(self.rows[i]) for i in ids))
    toks, pos, mask, tmask = item_tower_rows(self.rows, ids, self.batch_size, t, self.pad)
    if self.hidden is not None:  # the cached lower-block states instead of the tokens: [batch, t, D]
      states = np.zeros((self.batch_size, t, self.hidden.d_model), self.hidden.dtype)
      for r, i in enumerate(ids):
        states[r, :len(self.rows[i])] = self.hidden.catalog_item(int(i))
      return states, pos, mask, tmask
    return toks, pos, mask, tmask

  def encode(self, params) -> jax.Array:
    """v_T [I, E] of every item under `params` (the model's per-layer params)."""
    t0 = time.time()
    parts, index = [], []
    for ids in self.batches:
      parts.append(self._fn(params, *self._arrays(ids))[:len(ids)])
      index.append(ids)
    emb = jnp.concatenate(parts)                                       # [I, E] in length order
    inverse = np.empty(len(self.rows), np.int64)
    inverse[np.concatenate(index)] = np.arange(len(self.rows))
    out = jnp.take(emb, jnp.asarray(inverse), axis=0).block_until_ready()  # [I, E] in item order
    log.info("item bank: encoded %d items in %.1fs", len(self.rows), time.time() - t0)
    return out


NEGATIVE_KEYS = ("negative_tokens", "negative_positions", "negative_mask", "negative_text_mask", "negative_id")


class SampledNegatives:
  """M catalog items per step, uniform without replacement over the items that may be negatives, drawn from
  (seed, step) alone, so a resumed run samples what the uninterrupted one did. `arrays(step)` gives this
  process's share of them as batch fields ([M / processes, Li] item-tower rows and their global ids [M / P])."""

  def __init__(self, encoder: ExampleEncoder, count: int, seed: int, excluded=(), process_index: int = 0,
               process_count: int = 1):
    self.rows = catalog_rows(encoder)
    self.count, self.seed, self.item_len, self.pad = count, seed, encoder.spec.item_len, encoder.tok.pad_id
    self.candidates = np.setdiff1d(np.arange(len(self.rows)), np.asarray(excluded, np.int64))  # [I']
    if count > len(self.candidates):
      raise ValueError(f"loss.sampled_negatives={count} is more than the {len(self.candidates)} catalog items "
                       "that can be negatives; lower it")
    per = count // process_count
    self.share = slice(process_index * per, (process_index + 1) * per)

  def ids(self, step: int) -> np.ndarray:
    """[M] global item ids of this step's sampled negatives (every process draws the same)."""
    rng = np.random.default_rng((self.seed, 0x5A3E, step))
    return self.candidates[rng.choice(len(self.candidates), self.count, replace=False)].astype(np.int32)

  def arrays(self, step: int) -> dict[str, np.ndarray]:
    ids = self.ids(step)[self.share]
    return dict(zip(NEGATIVE_KEYS, (*item_tower_rows(self.rows, ids, len(ids), self.item_len, self.pad), ids)))

  def shapes(self) -> dict[str, jax.ShapeDtypeStruct]:
    """The abstract global fields (ahead-of-time compilation)."""
    return {k: jax.ShapeDtypeStruct((self.count,) + v.shape[1:], v.dtype) for k, v in self.arrays(0).items()}
