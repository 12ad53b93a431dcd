"""Periodic validation inside training: loss terms and dense-retrieval metrics on a fixed user subset."""
from __future__ import annotations

import jax
import numpy as np
from absl import logging

from calrec_jax.data.examples import catalog_vocabulary
from calrec_jax.data.iterators import eval_batches, eval_examples
from calrec_jax.data.sources import split_names
from calrec_jax.eval.evaluate import (eval_category_index, evaluate_dense, item_embeddings, ranked_records,
                                      user_embeddings)
from calrec_jax.eval.metrics import ranking_metrics
from calrec_jax.model import item_ids
from calrec_jax.train.objective import loss_config
from calrec_jax.train.step import calrec_loss


_LOSS_FNS: dict = {}  # (id(model), LossConfig) -> (model, jitted validation loss)


def validation_metrics(config, parts, params, item_tower=None) -> dict[str, float]:
  """The validation function the runner gives the training loop: loss terms and dense-retrieval metrics.
  item_tower: params -> v_T [I, E] of every item of every category in the encoder's global order, where the loop
  has a cheaper item tower than the plain one (the frozen-layer cache's); without it, and for the sampled
  validation (eval.valid_items, which encodes its sample only), the plain tower."""
  cat = eval_category_index(config, parts.categories)
  rows = eval_examples(parts.encoder, cat, "valid", config.eval.valid_users, config.seed)
  vocab = catalog_vocabulary(parts.encoder) if config.loss.lm_vocab == "catalog" else ()
  lc = loss_config(config.loss, vocab)
  key = (id(parts.model), lc)
  if key not in _LOSS_FNS or _LOSS_FNS[key][0] is not parts.model:  # compiled once, not at every validation
    _LOSS_FNS[key] = (parts.model, jax.jit(lambda p, b: calrec_loss(parts.model, p, b, lc)[1]))
  fn = _LOSS_FNS[key][1]
  sums, n = {}, 0.0
  bs = config.data.batch_size
  for batch, users in eval_batches(parts.encoder, cat, rows, bs):
    m = jax.device_get(fn(params, batch))
    w = float(len(users))
    for k, v in m.items():
      if k not in ("tokens", "examples"):
        sums[k] = sums.get(k, 0.0) + float(v) * w
    n += w
  out = {f"valid/{k}": v / n for k, v in sums.items()}
  if config.eval.valid_items:
    dense, prefix = sampled_dense_metrics(config, parts, params, rows, cat), "valid/dense_sampled_"
  else:
    item_emb = None if item_tower is None else catalog_vectors(parts, params, cat, item_tower(params))
    dense, prefix = evaluate_dense(config, parts, params, rows, cat, item_emb)[0], "valid/dense_"
  # '@' is not valid in TensorBoard tags: one name in metrics.jsonl and TensorBoard alike
  out.update({f"{prefix}{k.replace('@', '_at_')}": v for k, v in dense.items() if k in ("recall@10", "ndcg@10", "mrr")})
  return out


def catalog_vectors(parts, params, cat: int, every_item: np.ndarray) -> np.ndarray:
  """Category `cat`'s rows of `every_item` (v_T [I_all, E], global item order) with the learned item tables
  applied, as item_embeddings gives them ([I, E] or [I, E + 1])."""
  ids = parts.encoder.global_item_ids(cat)                                                  # [I]
  return item_ids.apply_to_catalog(np.asarray(every_item, np.float32)[ids], params, ids)


def validation_items(config, num_items: int, targets) -> np.ndarray:
  """The sorted item indices sampled validation ranks: eval.valid_items items drawn once from the catalog (the same
  at every validation of a run) and every validation target."""
  drawn = np.random.default_rng([config.seed, 17]).choice(num_items, min(config.eval.valid_items, num_items),
                                                          replace=False)
  return np.union1d(drawn, np.asarray(list(targets), np.int64))


def sampled_dense_metrics(config, parts, params, rows, cat: int) -> dict[str, float]:
  """Dense retrieval metrics against `validation_items` instead of the whole catalog (history items excluded as
  configured): the item tower runs over the sample only, so a validation costs the same at any catalog size."""
  num_items = len(parts.categories[cat].catalog)
  sample = validation_items(config, num_items, (t for _, _, t in rows))
  if not _SAID_SAMPLED.get(id(parts)):
    _SAID_SAMPLED[id(parts)] = True
    logging.info("validation ranks %d of the %d items (eval.valid_items=%d drawn once + the validation targets): "
                 "its metrics are sampled (valid/dense_sampled_*) and read higher than whole-catalog ones",
                 len(sample), num_items, config.eval.valid_items)
  position = np.full(num_items, -1, np.int64)
  position[sample] = np.arange(len(sample))
  local = [(u, [int(position[i]) for i in h if position[i] >= 0], int(position[t])) for u, h, t in rows]
  scores = (user_embeddings(config, parts, params, rows, cat)                                   # [U, S]
            @ item_embeddings(parts, params, cat, config.eval.item_batch_size, items=sample).T)
  ks = [int(k) for k in split_names(config.eval.ks)]
  ranks, _ = ranked_records(config, parts.categories[cat], local, scores, ks)
  return ranking_metrics(ranks, ks)


_SAID_SAMPLED: dict[int, bool] = {}
