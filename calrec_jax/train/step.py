"""The fused CALRec train step and sharded state creation (eval_shape -> shardings -> jitted init)."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from calrec_jax.train import sharding as shd
from calrec_jax.train.losses import chunked_lm_loss, info_nce
from calrec_jax.train.two_tower import TwoTower

State = dict[str, Any]  # {'step': int32 [], 'params': tree, 'opt_state': tree}


@dataclasses.dataclass(frozen=True)
class LossConfig:
  w_nig: float = 1.0
  w_tt: float = 0.5
  w_ut: float = 0.5
  temperature: float = 0.05
  symmetric: bool = False
  vocab_chunk: int = 16_384


def calrec_loss(model: TwoTower, params, batch: dict[str, jax.Array], lc: LossConfig
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Fused loss of one (micro)batch and its metrics."""
  out = model.apply({"params": params}, batch)
  w_out = model.apply({"params": params}, method=TwoTower.output_embedding)
  valid = batch["example_weight"] > 0
  lm_w = batch["lm_weights"] * batch["example_weight"][:, None]
  nig, nig_acc = chunked_lm_loss(out["lm_hidden"], w_out, batch["lm_labels"], lm_w, lc.vocab_chunk,
                                 model.cfg.final_logit_softcap)
  tt, tt_acc = info_nce(out["v_t_given_u"], out["v_t"], batch["target_id"], valid, lc.temperature, lc.symmetric)
  ut, ut_acc = info_nce(out["v_u"], out["v_t"], batch["target_id"], valid, lc.temperature, lc.symmetric)
  loss = lc.w_nig * nig + lc.w_tt * tt + lc.w_ut * ut
  metrics = {"loss": loss, "loss_nig": nig, "loss_tt": tt, "loss_ut": ut, "acc_nig": nig_acc,
             "acc_tt": tt_acc, "acc_ut": ut_acc, "tokens": batch["input_mask"].sum() + batch["item_mask"].sum()}
  return loss, metrics


def make_train_step(model: TwoTower, tx: optax.GradientTransformation, lc: LossConfig, grad_accum: int = 1
                    ) -> Callable[[State, dict], tuple[State, dict]]:
  """Pure `train_step(state, batch) -> (state, metrics)`; a non-finite loss or gradient leaves params unchanged."""

  def grads_of(params, batch):
    (_, metrics), grads = jax.value_and_grad(lambda p: calrec_loss(model, p, batch, lc), has_aux=True)(params)
    return grads, metrics

  def train_step(state: State, batch: dict[str, jax.Array]) -> tuple[State, dict]:
    params = state["params"]
    if grad_accum == 1:
      grads, metrics = grads_of(params, batch)
    else:  # microbatches [A, B/A, ...]; contrastive negatives come from each microbatch
      micro = jax.tree_util.tree_map(lambda x: x.reshape(grad_accum, -1, *x.shape[1:]), batch)

      def body(acc, mb):
        g, m = grads_of(params, mb)
        return jax.tree_util.tree_map(jnp.add, acc, (g, m)), None
      zeros = jax.tree_util.tree_map(jnp.zeros_like, jax.eval_shape(grads_of, params,
                                                                    jax.tree_util.tree_map(lambda x: x[0], micro)))
      (grads, metrics), _ = jax.lax.scan(body, zeros, micro)
      grads = jax.tree_util.tree_map(lambda g: g / grad_accum, grads)
      metrics = {k: (v if k == "tokens" else v / grad_accum) for k, v in metrics.items()}
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
    new_state = {"step": state["step"] + 1, "params": keep(new_params, params),
                 "opt_state": keep(opt_state, state["opt_state"])}
    metrics = dict(metrics, grad_norm=grad_norm, skipped=(~finite).astype(jnp.int32))
    return new_state, metrics

  return train_step


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


def _init_variables(model: TwoTower, rng, batch_shapes):
  dummy = {k: jnp.zeros(v.shape, v.dtype) for k, v in batch_shapes.items()}
  return model.init(rng, dummy)["params"]


def state_shardings(model: TwoTower, tx, mesh: Mesh, batch_shapes, rules=shd.DEFAULT_RULES) -> tuple[Any, State]:
  """(NamedSharding tree of the train state, abstract unboxed state) without allocating anything."""
  def boxed_state(rng):
    params = _init_variables(model, rng, batch_shapes)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
  abstract = jax.eval_shape(boxed_state, jax.random.PRNGKey(0))
  shardings = shd.shardings_from_boxed(abstract, mesh, rules)
  return shardings, nn.meta.unbox(abstract)


def params_shardings(model: TwoTower, mesh: Mesh, batch_shapes, rules=shd.DEFAULT_RULES) -> tuple[Any, Any]:
  """(NamedSharding tree, abstract tree) of the params alone (evaluation, export)."""
  abstract = jax.eval_shape(lambda r: _init_variables(model, r, batch_shapes), jax.random.PRNGKey(0))
  return shd.shardings_from_boxed(abstract, mesh, rules), nn.meta.unbox(abstract)


def init_state(model: TwoTower, tx, mesh: Mesh, batch_shapes, seed: int, state_sharding,
               params: Any | None = None) -> State:
  """Sharded init: every array is created directly with its sharding (jit out_shardings).

  With `params` given (pretrained or stage-1 weights), the optimizer state is initialised for them and the
  step count starts at 0.
  """
  if params is None:
    def fresh(rng):
      p = nn.meta.unbox(_init_variables(model, rng, batch_shapes))
      return {"step": jnp.zeros((), jnp.int32), "params": p, "opt_state": tx.init(p)}
    return jax.jit(fresh, out_shardings=state_sharding)(jax.random.PRNGKey(seed))
  params = jax.device_put(params, state_sharding["params"])

  def with_params(p):
    return {"step": jnp.zeros((), jnp.int32), "params": p, "opt_state": tx.init(p)}
  return jax.jit(with_params, out_shardings=state_sharding, donate_argnums=0)(params)


def jit_train_step(step_fn, mesh: Mesh, state_sharding) -> Callable:
  batch_sh = shd.batch_sharding(mesh)
  return jax.jit(step_fn, in_shardings=(state_sharding, batch_sh),
                 out_shardings=(state_sharding, NamedSharding(mesh, P())), donate_argnums=0)
