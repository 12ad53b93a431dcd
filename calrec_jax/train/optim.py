"""Optimizers (AdamW, Adafactor) with warmup + decay schedules and gradient clipping."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from calrec_jax.errors import ConfigError
from calrec_jax.model import item_ids


def schedule(cfg, num_steps: int, peak: float | None = None) -> optax.Schedule:
  """Linear warmup to `peak` (default optim.learning_rate), then optim.schedule's decay."""
  peak = cfg.learning_rate if peak is None else peak
  warmup = min(cfg.warmup_steps, max(num_steps - 1, 0))
  if cfg.schedule == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, peak, max(warmup, 1)),
                                 optax.constant_schedule(peak)], [max(warmup, 1)])
  if cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, max(warmup, 1),
                                              max(num_steps, max(warmup, 1) + 1),  # a 1-step run too
                                              peak * cfg.final_lr_fraction)
  if cfg.schedule == "linear":
    return optax.join_schedules([
        optax.linear_schedule(0.0, peak, max(warmup, 1)),
        optax.linear_schedule(peak, peak * cfg.final_lr_fraction,
                              max(num_steps - warmup, 1))], [max(warmup, 1)])
  raise ConfigError(f"optim.schedule={cfg.schedule!r}; choose 'cosine', 'linear' or 'constant'")


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """optax.clip_by_global_norm's rule (scale by max_norm / norm when the norm exceeds it) as one scalar factor per
  step, so the clipped gradient is a multiply XLA fuses into the optimizer update instead of a per-element divide
  it writes out (a gradient-sized temporary). The state (empty) is optax's, so checkpoints are interchangeable.

  The train step passes the norm it has already computed as the extra argument `grad_norm` (the transformation
  is first in the chain, so that is the norm of what it receives); without it the norm is computed here."""

  def update(updates, state, params=None, *, grad_norm=None, **extra_args):
    del params, extra_args
    norm = optax.global_norm(updates) if grad_norm is None else grad_norm
    scale = jnp.where(norm < max_norm, 1.0, max_norm / norm)
    return jax.tree_util.tree_map(lambda t: t * scale.astype(t.dtype), updates), state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update)


def _decay_mask(params):
  """Weight decay on matrices only (not norms)."""
  return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


class TableSgdState(NamedTuple):
  inner: optax.OptState       # the run's optimizer's state (its moments of the tables are kept and unused)
  count: jax.Array            # int32 [] steps taken, for the tables' schedules


def sgd_for_table(inner: optax.GradientTransformation, rates: dict[str, optax.Schedule]
                  ) -> optax.GradientTransformation:
  """`inner` for every param but the per-item tables named in `rates` ({params entry of model/item_ids.TABLES:
  schedule}), each of which moves by -rate(step) x its gradient. (optax.multi_transform would do this with masked
  states, whose placeholder nodes the train state's sharding and checkpoint trees cannot hold.)"""
  inner = optax.with_extra_args_support(inner)

  def init(params):
    return TableSgdState(inner.init(params), jnp.zeros((), jnp.int32))

  def update(updates, state, params=None, **extra_args):
    new, inner_state = inner.update(updates, state.inner, params, **extra_args)
    for name, r in rates.items():
      if name in updates:
        g = updates[name]
        new = dict(new, **{name: (-r(state.count) * g).astype(g.dtype)})
    return new, TableSgdState(inner_state, optax.safe_int32_increment(state.count))

  return optax.GradientTransformationExtraArgs(init, update)


def freeze_table_rows(trained: np.ndarray) -> optax.GradientTransformation:
  """Zero the per-item tables' updates (params entries model/item_ids.TABLES) in the rows where `trained` [I]
  is False: those rows keep their starting values (zeros, or a source run's rows), whatever the optimizer
  before it (moments, weight decay) would have done. Last in the chain; stateless."""
  keep = jnp.asarray(np.asarray(trained, bool))                                            # [I]

  def update(updates, state, params=None, **extra_args):
    del params, extra_args
    for name in item_ids.TABLES:
      if name in updates:
        u = updates[name]
        rows = keep.reshape(keep.shape + (1,) * (u.ndim - 1))                              # [I, 1...]
        updates = dict(updates, **{name: jnp.where(rows, u, jnp.zeros_like(u))})
    return updates, state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update)


def make_optimizer(cfg, num_steps: int, trained_rows: np.ndarray | None = None,
                   item_bias: bool = False) -> optax.GradientTransformation:
  """The run's optimizer; with optim.item_id_sgd_rate > 0, the item identity table (model.item_id_offsets) takes
  plain SGD steps at that peak rate on the same schedule instead, and with `item_bias` (model.item_bias) the
  item bias always does, at optim.item_bias_rate. Adam scales each parameter's step to its own gradient's size,
  so the small, steady push a rarely bought item gets as a negative of every query becomes full-size steps; SGD
  moves each row in proportion to its gradient, as the full-catalog softmax asks.
  `trained_rows` [I] bool (optim.item_id_min_count): only those rows of the tables move (freeze_table_rows)."""
  opt = _base_optimizer(cfg, schedule(cfg, num_steps))
  rates = {}
  if float(cfg.get("item_id_sgd_rate", 0.0)) > 0:
    rates[item_ids.PARAM] = schedule(cfg, num_steps, float(cfg.item_id_sgd_rate))
  if item_bias:
    rates[item_ids.BIAS] = schedule(cfg, num_steps, float(cfg.item_bias_rate))
  if rates:
    opt = sgd_for_table(opt, rates)
  if trained_rows is not None:
    opt = optax.chain(opt, freeze_table_rows(trained_rows))
  if cfg.grad_clip_norm:
    opt = optax.chain(clip_by_global_norm(cfg.grad_clip_norm), opt)
  return opt


def table_rows_trained(counts: np.ndarray, min_count: int) -> np.ndarray | None:
  """[I] bool: the items whose training interactions `counts` [I] reach optim.item_id_min_count (None when it is
  0: every row trains)."""
  return None if min_count <= 0 else np.asarray(counts) >= min_count


def _base_optimizer(cfg, lr) -> optax.GradientTransformation:
  if cfg.name == "adamw":
    opt = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=_decay_mask)
  elif cfg.name == "adafactor":
    opt = optax.adafactor(lr, weight_decay_rate=cfg.weight_decay or None)
  else:
    raise ConfigError(f"optim.name={cfg.name!r}; choose 'adamw' or 'adafactor'")
  return opt
