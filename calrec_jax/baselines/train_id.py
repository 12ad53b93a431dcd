"""Train an ID-based baseline (SASRec, GRU4Rec) as RecBole does: every training prefix an example, full-softmax
cross-entropy, Adam, one validation per epoch and early stopping on validation NDCG@10 (patience in epochs).

The jitted step runs on the framework's mesh (batch over data x fsdp, params replicated); the state, the best
params and the epoch counters are checkpointed with orbax after every epoch, so a killed run resumes at the
epoch it reached.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from calrec_jax.baselines.id_sequences import IdExamples, full_histories, id_examples
from calrec_jax.baselines.models import build_model, item_scores
from calrec_jax.data.records import CategoryData
from calrec_jax.eval.metrics import ranking_metrics
from calrec_jax.model import sharding as shd
from calrec_jax.progress import bar as progress_bar
from calrec_jax.train.checkpoint import Checkpointer

log = logging.getLogger(__name__)


@dataclasses.dataclass
class IdTrainResult:
  params: dict
  epochs: int              # epochs trained
  best_epoch: int          # epoch whose params are kept (1-based)
  best_valid: float        # its validation NDCG@10
  history: list[dict]      # per epoch: {'epoch', 'loss', 'valid_ndcg@10'}
  train_seconds: float


def ranks_from_scores(scores: np.ndarray, targets: np.ndarray, histories: list[list[int]] | None,
                      kmax: int) -> np.ndarray:
  """1-based rank of each target in its row of scores [U, I] (0 when below kmax); history items excluded when
  `histories` is given. Ties are broken by the lower item index (a stable sort)."""
  scores = np.array(scores, np.float64)
  if histories is not None:
    for r, h in enumerate(histories):
      scores[r, h] = -np.inf
  target_score = scores[np.arange(len(targets)), targets]
  idx = np.arange(scores.shape[1])
  better = (scores > target_score[:, None]) | ((scores == target_score[:, None]) & (idx[None] < targets[:, None]))
  rank = better.sum(1) + 1
  excluded = np.isneginf(target_score)  # a target inside the history cannot be recommended
  return np.where((rank <= kmax) & ~excluded, rank, 0)


class IdModelTrainer:
  """One baseline on one category; `cfg` is its config section, `eval_cfg` the shared `eval` section."""

  def __init__(self, name: str, cfg, data: CategoryData, eval_cfg, mesh=None, seed: int = 0):
    self.name, self.cfg, self.data, self.seed = name, cfg, data, seed
    self.exclude_history = eval_cfg.exclude_history
    self.model = build_model(name, len(data.catalog), cfg)
    self.mesh = mesh or shd.make_mesh()
    self.tx = optax.adam(cfg.learning_rate) if not cfg.weight_decay else optax.adamw(
        cfg.learning_rate, weight_decay=cfg.weight_decay)
    self.train_rows = id_examples(data.sequences, "train", cfg.max_len)
    self.valid_rows = id_examples(data.sequences, "valid", cfg.max_len)
    if not len(self.train_rows):
      from calrec_jax.errors import DataError
      raise DataError(f"category {data.name!r} has no training examples for {name}")
    self._step = self._make_step()
    self._score = jax.jit(lambda p, h, n: item_scores(self.model, p, h, n))

  def _make_step(self):
    model, tx, rep = self.model, self.tx, NamedSharding(self.mesh, P())
    batch_sh = shd.batch_sharding(self.mesh)

    def loss_fn(params, hist, lengths, targets, weights, rng):
      logits = item_scores(model, params, hist, lengths, deterministic=False, rngs={"dropout": rng})  # [B, I]
      nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)  # [B]
      return (nll * weights).sum() / jnp.maximum(weights.sum(), 1.0)

    def step(state, hist, lengths, targets, weights):
      rng = jax.random.fold_in(jax.random.PRNGKey(self.seed), state["step"])
      loss, grads = jax.value_and_grad(loss_fn)(state["params"], hist, lengths, targets, weights, rng)
      updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
      return {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
              "opt_state": opt_state}, loss
    return jax.jit(step, in_shardings=(rep, batch_sh, batch_sh, batch_sh, batch_sh), out_shardings=(rep, rep),
                   donate_argnums=0)

  def init_state(self) -> dict:
    h = jnp.zeros((1, self.cfg.max_len), jnp.int32)
    params = self.model.init(jax.random.PRNGKey(self.seed), h, jnp.ones((1,), jnp.int32))["params"]
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": self.tx.init(params)}

  def scores(self, params, rows: IdExamples, batch: int = 1024) -> np.ndarray:
    """[U, I] scores of every catalog item for each row (dropout off)."""
    out = [np.asarray(self._score(params, rows.histories[s:s + batch], rows.lengths[s:s + batch]))
           for s in range(0, len(rows), batch)]
    return np.concatenate(out)

  def ranks(self, params, rows: IdExamples, split: str, kmax: int) -> np.ndarray:
    hist = full_histories(self.data.sequences, split, rows.users) if self.exclude_history else None
    return ranks_from_scores(self.scores(params, rows), rows.targets, hist, kmax)

  def validate(self, params) -> float:
    return ranking_metrics(self.ranks(params, self.valid_rows, "valid", 10), (10,))["ndcg@10"]

  def _epoch(self, state, epoch: int):
    """One pass over the training prefixes in a fresh order; the last batch is padded with zero weights."""
    rows, bs = self.train_rows, self.cfg.batch_size
    order = np.random.default_rng([self.seed, epoch]).permutation(len(rows))
    losses = []
    for s in range(0, len(order), bs):
      idx = order[s:s + bs]
      pad = bs - len(idx)
      take = np.concatenate([idx, np.zeros(pad, np.int64)])
      weights = np.concatenate([np.ones(len(idx), np.float32), np.zeros(pad, np.float32)])
      state, loss = self._step(state, rows.histories[take], rows.lengths[take], rows.targets[take], weights)
      losses.append(float(loss))
    return state, float(np.mean(losses))

  def train(self, workdir: str, progress: bool = True) -> IdTrainResult:
    """Train until validation NDCG@10 has not improved for `patience` epochs (or `max_epochs`)."""
    cfg = self.cfg
    ckptr = Checkpointer(os.path.join(workdir, "checkpoints"), keep=1, async_save=False)
    state = self.init_state()
    abstract = jax.eval_shape(lambda: {**state, "best_params": state["params"]})
    restored = ckptr.restore_latest(abstract)
    if restored is not None:
      _, full, meta = restored
      best_params = full.pop("best_params")
      state = full
      log.info("%s: resumed after epoch %d", self.name, meta["epoch"])
    else:
      best_params = state["params"]
      meta = {"epoch": 0, "best_valid": -1.0, "best_epoch": 0, "bad_epochs": 0, "history": [], "seconds": 0.0}
    bar = progress_bar(total=cfg.max_epochs, initial=meta["epoch"], desc=self.name, unit="epoch",
                       disable=not progress)
    t0 = time.time() - meta["seconds"]
    while meta["epoch"] < cfg.max_epochs and meta["bad_epochs"] <= cfg.patience:
      epoch = meta["epoch"] + 1
      state, loss = self._epoch(state, epoch)
      ndcg = self.validate(state["params"])
      meta["history"].append({"epoch": epoch, "loss": loss, "valid_ndcg@10": ndcg})
      if ndcg > meta["best_valid"]:
        meta.update(best_valid=ndcg, best_epoch=epoch, bad_epochs=0)
        best_params = jax.tree_util.tree_map(jnp.copy, state["params"])
      else:
        meta["bad_epochs"] += 1
      meta["epoch"], meta["seconds"] = epoch, time.time() - t0
      ckptr.save(epoch, {**state, "best_params": best_params}, meta, force=True)
      bar.set_postfix(loss=f"{loss:.3f}", valid_ndcg10=f"{ndcg:.4f}", best=meta["best_epoch"], refresh=False)
      bar.update(1)
    bar.close()
    ckptr.close()
    log.info("%s: %d epochs, best validation NDCG@10 %.4f at epoch %d", self.name, meta["epoch"],
             meta["best_valid"], meta["best_epoch"])
    return IdTrainResult(jax.device_get(best_params), meta["epoch"], meta["best_epoch"], meta["best_valid"],
                         meta["history"], meta["seconds"])
