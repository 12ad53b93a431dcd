"""Periodic validation inside training: loss terms and dense-retrieval metrics on a fixed user subset."""
from __future__ import annotations

import jax

from calrec_jax.data.examples import catalog_vocabulary
from calrec_jax.data.iterators import eval_batches, eval_examples
from calrec_jax.eval.evaluate import eval_category_index, evaluate_dense
from calrec_jax.train.objective import loss_config
from calrec_jax.train.step import calrec_loss


_LOSS_FNS: dict = {}  # (id(model), LossConfig) -> (model, jitted validation loss)


def validation_metrics(config, parts, params) -> dict[str, float]:
  """The validation function the runner gives the training loop: loss terms and dense-retrieval metrics."""
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
  dense, _ = evaluate_dense(config, parts, params, rows, cat)
  # '@' is not valid in TensorBoard tags: one name in metrics.jsonl and TensorBoard alike
  out.update({f"valid/dense_{k.replace('@', '_at_')}": v for k, v in dense.items()
              if k in ("recall@10", "ndcg@10", "mrr")})
  return out
