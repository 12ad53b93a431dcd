"""The item bank: v_T of every catalog item, the negatives of whole-catalog contrastive losses (loss.negatives).

The bank is part of the train state (state['bank'], float32 [I, E], replicated; I = items of all the run's
categories, in the encoder's global item order), so a resumed run has the bank the uninterrupted one had. It is
refreshed from the current params every `loss.bank_refresh_steps` steps (and at step 0) by the item tower, in
fixed-size batches of items of similar length (two compiled shapes).
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
    toks = np.full((self.batch_size, t), self.pad, np.int32)
    mask = np.zeros((self.batch_size, t), bool)
    tmask = np.zeros((self.batch_size, t), bool)
    for r, i in enumerate(ids):
      seq = self.rows[i]
      toks[r, :len(seq)], mask[r, :len(seq)], tmask[r, 1:len(seq) - 1] = seq, True, True
    pos = np.broadcast_to(np.arange(t, dtype=np.int32), (self.batch_size, t))
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
