"""The fused CALRec train step and sharded state creation (eval_shape -> shardings -> jitted init)."""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from calrec_jax.model.layer_stack import stack_layers, unstack_layers
from calrec_jax.model.partitioning import activation_sharding, constrain
from calrec_jax.model import sharding as shd
from calrec_jax.model import item_ids
from calrec_jax.train.objective import EMBEDDINGS, EmbeddingInputs, LossConfig, Objective, TokenInputs
from calrec_jax.model.two_tower import TwoTower
from calrec_jax.model.variables import init_boxed

State = dict[str, Any]  # {'step': int32 [], 'params': tree, 'opt_state': tree[, 'bank': float32 [I, E]]}
# A model with scanned blocks keeps them stacked in the train state (model/layer_stack.py): state['params'] is
# then the stacked tree, and the model's per-layer params are unstack_layers(state['params']).


def is_packed(batch: dict) -> bool:
  """Packed units (data/packed.py: per-slot masks [B, K, T]) rather than per-prefix examples ([B, T])."""
  return batch["history_mask"].ndim == 3


def tower_outputs(model: TwoTower, params, batch: dict[str, jax.Array]) -> tuple[dict, dict]:
  """(model outputs, the per-row fields the losses read). A packed batch's slots become rows: [B, K, ...] ->
  [B * K, ...], each slot an example of its own (weight slot_weight)."""
  if not is_packed(batch):
    return model.apply({"params": params}, batch), batch
  out = model.apply({"params": params}, batch, method=TwoTower.packed)
  n = batch["slot_weight"].size
  rows = {"lm_labels": batch["lm_labels"].reshape(n, -1), "lm_weights": batch["lm_weights"].reshape(n, -1),
          "example_weight": batch["slot_weight"].reshape(n), "target_id": batch["target_id"].reshape(n)}
  lm = out["lm_hidden"]
  out = {k: v.reshape(n, -1) for k, v in out.items() if k != "lm_hidden"}
  out["lm_hidden"] = lm.reshape(n, lm.shape[2], lm.shape[3])                            # [N, Lt, D]
  return out, rows


def _tokens(batch: dict[str, jax.Array]) -> jax.Array:
  """The tokens the step's towers ran on: joint rows, item rows and sampled negatives' rows."""
  sampled = batch["negative_mask"].sum() if "negative_mask" in batch else 0
  return batch["input_mask"].sum() + batch["item_mask"].sum() + sampled


def token_inputs(model: TwoTower, params, out: dict, rows: dict, denominator: jax.Array | None = None
                 ) -> TokenInputs:
  """The token terms' inputs from the towers' outputs and the rows' fields (tower_outputs)."""
  w_out = model.apply({"params": params}, method=TwoTower.output_embedding)
  weights = rows["lm_weights"] * rows["example_weight"][:, None]                        # [R, Lt]
  return TokenInputs(out["lm_hidden"], rows["lm_labels"], weights, w_out, model.cfg.final_logit_softcap,
                     denominator)


def _lm_weight_total(batch: dict[str, jax.Array]) -> jax.Array:
  """The whole batch's LM weight sum (per-prefix or packed), the token terms' denominator under accumulation."""
  row_weight = batch["slot_weight"][..., None] if is_packed(batch) else batch["example_weight"][:, None]
  return (batch["lm_weights"] * row_weight).sum()


def sampled_negatives(model: TwoTower, params, batch: dict[str, jax.Array]) -> tuple[jax.Array | None, ...]:
  """(fresh item-tower vectors [M, E], global ids [M]) of the batch's sampled catalog items
  (loss.sampled_negatives, train/item_bank.py SampledNegatives), or (None, None) when it carries none."""
  if "negative_tokens" not in batch:
    return None, None
  key = model.apply({"params": params}, batch["negative_tokens"], batch["negative_positions"],
                    batch["negative_mask"], batch["negative_text_mask"], method=TwoTower.item_embedding)
  return key, batch["negative_id"]


def calrec_loss(model: TwoTower, params, batch: dict[str, jax.Array], lc: LossConfig, bank: jax.Array | None = None
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Fused loss of one batch (per-prefix or packed) and its metrics; `bank`: whole-catalog negatives."""
  objective = Objective(lc)
  out, rows = tower_outputs(model, params, batch)
  tok, tok_metrics = objective.token_loss(token_inputs(model, params, out, rows))
  emb, emb_metrics = objective.embedding_loss(EmbeddingInputs({k: out[k] for k in EMBEDDINGS}, rows["target_id"],
                                                              rows["example_weight"] > 0, bank,
                                                              params.get(item_ids.PARAM),
                                                              *sampled_negatives(model, params, batch),
                                                              params.get(item_ids.BIAS)))
  loss = tok + emb
  return loss, {"loss": loss, **tok_metrics, **emb_metrics, "tokens": _tokens(batch),
                "examples": rows["example_weight"].sum()}


def split_microbatches(batch: dict[str, jax.Array], n: int) -> dict[str, jax.Array]:
  """[B, ...] -> [n, B/n, ...]; microbatch a holds rows a, a+n, a+2n, ... so that every device keeps an
  equal share of every microbatch when the batch dim is sharded in contiguous blocks."""
  return jax.tree_util.tree_map(lambda x: x.reshape(-1, n, *x.shape[1:]).swapaxes(0, 1), batch)


def accumulated_loss_grads(model: TwoTower, params, batch: dict[str, jax.Array], lc: LossConfig, n: int,
                           to_params: Callable[[Any], Any] = lambda p: p, bank: jax.Array | None = None
                           ) -> tuple[Any, dict[str, jax.Array]]:
  """Gradient of the whole-batch loss computed `n` microbatches at a time (gradient caching).

  The contrastive terms still see the WHOLE batch as negatives: a first pass (no gradient) embeds every
  microbatch; the InfoNCE losses and their gradients with respect to the [B, E] embeddings are computed once;
  a second pass backpropagates, per microbatch, its LM loss plus <embeddings, cached embedding gradients>.
  The result equals the single-pass gradient (the model is deterministic) for one extra forward pass, with
  activation memory of one microbatch. `params` are the trainable params; `to_params` maps them to the model's
  params tree (identity, or LoRA adapters merged into frozen weights).
  """
  if "negative_tokens" in batch:
    raise ValueError("sampled negatives (loss.sampled_negatives) are not available with gradient accumulation; "
                     "set optim.grad_accum=1 or loss.sampled_negatives=0")
  micro = jax.tree_util.tree_map(lambda x: constrain(x, (None, "activation_batch") + (None,) * (x.ndim - 2)),
                                 split_microbatches(batch, n))  # [n, B/n, ...]

  full = to_params(params)
  objective = Objective(lc)

  def embed(carry, mb):
    out, rows = tower_outputs(model, full, mb)
    return carry, ({k: out[k] for k in EMBEDDINGS}, rows["target_id"], rows["example_weight"])  # [R/n, ...]
  _, (embs, target_ids, row_weights) = jax.lax.scan(embed, None, micro)  # [n, R/n, ...] (R rows: examples or slots)
  flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731  [n, R/n, ...] -> [R, ...] in microbatch order
  valid = flat(row_weights) > 0
  tables = {n: full[n] for n in item_ids.TABLES if n in full}  # learned per-item tables ([I, E], [I])
  (emb, emb_metrics), (d_embs, d_tables) = jax.value_and_grad(
      lambda e, t: objective.embedding_loss(EmbeddingInputs({k: flat(v) for k, v in e.items()}, flat(target_ids),
                                                            valid, bank, t.get(item_ids.PARAM),
                                                            item_bias=t.get(item_ids.BIAS))),
      argnums=(0, 1), has_aux=True)(embs, tables)
  lm_total = _lm_weight_total(batch)

  def surrogate(t, mb, d_emb):
    p = to_params(t)
    out, rows = tower_outputs(model, p, mb)
    tok, tok_metrics = objective.token_loss(token_inputs(model, p, out, rows, lm_total))  # this microbatch's share
    dot = sum((out[k] * d_emb[k]).sum() for k in d_emb)
    for name, d_table in d_tables.items():  # a table's gradient, an n-th per microbatch (tables pass through)
      dot = dot + (p[name] * d_table).sum() / n
    return tok + dot, (tok, tok_metrics)

  def body(acc, xs):
    mb, d_emb = xs
    (_, aux), g = jax.value_and_grad(surrogate, has_aux=True)(params, mb, d_emb)
    return jax.tree_util.tree_map(jnp.add, acc, (g, aux)), None

  zeros = (jax.tree_util.tree_map(jnp.zeros_like, params),
           (jnp.zeros(()), {k: jnp.zeros(()) for k in objective.metric_names("token")}))
  (grads, (tok, tok_metrics)), _ = jax.lax.scan(body, zeros, (micro, d_embs))
  loss = tok + emb
  return grads, {"loss": loss, **tok_metrics, **emb_metrics, "tokens": _tokens(batch),
                 "examples": row_weights.sum()}


def _by_shape(columns: list[list[jax.Array]]) -> list[list[list[jax.Array]]]:
  """Groups aligned lists of arrays (one list per tree, same structure) by their first list's shape and dtype."""
  groups: dict[tuple, list[list[jax.Array]]] = {}
  for row in zip(*columns):
    groups.setdefault((row[0].shape, row[0].dtype), []).append(list(row))
  return list(groups.values())


def global_norm(tree) -> jax.Array:
  """optax.global_norm with one reduction per distinct shape: the squares of same-shaped arrays are added
  elementwise first. XLA:CPU compiles a kernel per reduction, and a model's layers repeat a few shapes (236
  arrays, 8 shapes in Gemma-3-270M), so this cuts the step's compile time, not its work."""
  leaves = jax.tree_util.tree_leaves(tree)
  sums = [jnp.sum(functools.reduce(jnp.add, [jnp.square(x.astype(jnp.float32)) for (x,) in group]))
          for group in _by_shape([leaves])]
  return jnp.sqrt(functools.reduce(jnp.add, sums, jnp.float32(0.0)))


def all_finite(updates, opt_state) -> jax.Array:
  """Whether every element of the update and of the optimizer state is finite, with one reduction per distinct
  parameter shape.

  The state's subtrees shaped like the update (AdamW's moments) join each parameter's update elementwise, and
  parameters of the same shape join each other, so XLA computes the update and moments of a layer stack's
  same-shaped weights and their shared producers in one pass that writes nothing but the reduction; other
  state leaves (counts, factored moments) are checked alone. (Not sum(x * 0): XLA's CPU code reassociates
  (x * c) * 0 into x * (c * 0) and misses an overflow of x * c.)
  """
  leaves, treedef = jax.tree_util.tree_flatten(updates)
  columns = [leaves]
  rest = []
  like_updates = lambda x: jax.tree_util.tree_structure(x) == treedef  # noqa: E731
  for sub in jax.tree_util.tree_leaves(opt_state, is_leaf=like_updates):
    if like_updates(sub) and all(x.shape == u.shape for x, u in zip(jax.tree_util.tree_leaves(sub), leaves)):
      columns.append(jax.tree_util.tree_leaves(sub))
    else:
      rest += [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(sub)]
  ok = [jnp.all(functools.reduce(jnp.logical_and, [jnp.isfinite(x) for row in group for x in row]))
        for group in _by_shape(columns)]
  return functools.reduce(jnp.logical_and, ok + rest, jnp.bool_(True))


def guarded_update(tx: optax.GradientTransformation, grads, opt_state, params, loss: jax.Array,
                   grad_norm: jax.Array) -> tuple[jax.Array, Any, Any]:
  """(finite, params, opt_state): the optimizer step, applied only when the loss, the gradient, the update and the
  new optimizer state are all finite (a finite gradient can still give a non-finite update: a NaN learning rate,
  an overflowing moment); otherwise params and opt_state come back unchanged.

  The update is computed twice: first only reduced to its finiteness (`all_finite`), then, behind an optimization
  barrier that keeps XLA from merging the two, inside a `lax.cond` that runs only when it is finite, so each
  leaf's new moments and params can be written in place into the donated state. Selecting between whole new and
  old states instead keeps the update, both new moments and copies of the old ones alive at once (about 3x the
  params of temporaries). `grad_norm` (the gradient's global norm) reaches the optimizer as the extra argument
  of the same name, which `optim.clip_by_global_norm` uses instead of reducing the whole gradient again in each
  of the two updates.
  """
  tx = optax.with_extra_args_support(tx)
  probe_updates, probe_state = tx.update(grads, opt_state, params, grad_norm=grad_norm)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(probe_updates, probe_state)
  finite, grads, opt_state, params, grad_norm = jax.lax.optimization_barrier(
      (finite, grads, opt_state, params, grad_norm))

  def apply(ops):
    g, s, p, norm = ops
    u, s = tx.update(g, s, p, grad_norm=norm)
    return optax.apply_updates(p, u), s

  new_params, new_opt_state = jax.lax.cond(finite, apply, lambda ops: (ops[2], ops[1]),
                                           (grads, opt_state, params, grad_norm))
  return finite, new_params, new_opt_state


def make_train_step(model: TwoTower, tx: optax.GradientTransformation, lc: LossConfig, grad_accum: int = 1,
                    to_params: Callable[[Any, Any], Any] | None = None
                    ) -> Callable[..., tuple[State, dict]]:
  """Pure `train_step(state, batch[, frozen]) -> (state, metrics)`; a non-finite loss or gradient leaves params
  unchanged.

  With grad_accum > 1 the batch is processed in microbatches and the gradient is still that of the whole
  batch (see `accumulated_loss_grads`). With `to_params(trainable, frozen)` (LoRA), `state['params']` is the
  trainable tree and the model runs on to_params(trainable, frozen); only the trainable tree gets gradients.
  Stacked blocks (scanned models) are unstacked inside the loss, so their gradient and update stay stacked.
  """
  to_params = to_params or (lambda p, frozen: p)

  def train_step(state: State, batch: dict[str, jax.Array], frozen=None) -> tuple[State, dict]:
    params, bank = state["params"], state.get("bank")
    full = lambda p: unstack_layers(to_params(p, frozen))  # noqa: E731
    if grad_accum == 1:
      (_, metrics), grads = jax.value_and_grad(lambda p: calrec_loss(model, full(p), batch, lc, bank),
                                               has_aux=True)(params)
    else:
      grads, metrics = accumulated_loss_grads(model, params, batch, lc, grad_accum, full, bank)
    grad_norm = global_norm(grads)
    finite, new_params, opt_state = guarded_update(tx, grads, state["opt_state"], params, metrics["loss"], grad_norm)
    new_state = {"step": state["step"] + 1, "params": new_params, "opt_state": opt_state}
    if bank is not None:
      new_state["bank"] = bank
    metrics = dict(metrics, grad_norm=grad_norm, skipped=(~finite).astype(jnp.int32))
    return new_state, metrics

  return train_step


def state_params(model: TwoTower, params):
  """The model's per-layer params in the train state's layout: blocks stacked when the model scans them."""
  return stack_layers(params) if model.scan_layers else params


def state_shardings(model: TwoTower, tx, mesh: Mesh, batch_shapes, rules=shd.DEFAULT_RULES) -> tuple[Any, State]:
  """(NamedSharding tree of the train state, abstract unboxed state) without allocating anything."""
  def boxed_state(rng):
    params = state_params(model, init_boxed(model, rng, batch_shapes))
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
  abstract = jax.eval_shape(boxed_state, jax.random.PRNGKey(0))
  shardings = shd.shardings_from_boxed(abstract, mesh, rules)
  return shardings, nn.meta.unbox(abstract)


def init_state(model: TwoTower, tx, mesh: Mesh, batch_shapes, seed: int, state_sharding,
               params: Any | None = None) -> State:
  """Sharded init: every array is created directly with its sharding (jit out_shardings).

  With `params` given (pretrained or stage-1 weights, per-layer), the optimizer state is initialised for them and
  the step count starts at 0.
  """
  if params is None:
    def fresh(rng):
      p = state_params(model, nn.meta.unbox(init_boxed(model, rng, batch_shapes)))
      return {"step": jnp.zeros((), jnp.int32), "params": p, "opt_state": tx.init(p)}
    return jax.jit(fresh, out_shardings=state_sharding)(jax.random.PRNGKey(seed))
  params = jax.device_put(state_params(model, params), state_sharding["params"])

  def with_params(p):
    return {"step": jnp.zeros((), jnp.int32), "params": p, "opt_state": tx.init(p)}
  return jax.jit(with_params, out_shardings=state_sharding, donate_argnums=0)(params)


def jit_train_step(step_fn, mesh: Mesh, state_sharding, rules=shd.DEFAULT_RULES, frozen_sharding=None
                   ) -> Callable:
  """Jit with state/batch shardings, the state donated; activations are placed by `rules` while tracing.
  With `frozen_sharding` the step takes the frozen weights (LoRA) as a third argument, not donated."""
  batch_sh = shd.batch_sharding(mesh)
  out_sh = (state_sharding, NamedSharding(mesh, P()))
  if frozen_sharding is not None:
    def traced_frozen(state, batch, frozen):
      with activation_sharding(mesh, rules):
        return step_fn(state, batch, frozen)
    return jax.jit(traced_frozen, in_shardings=(state_sharding, batch_sh, frozen_sharding), out_shardings=out_sh,
                   donate_argnums=0)

  def traced(state, batch):
    with activation_sharding(mesh, rules):
      return step_fn(state, batch)
  return jax.jit(traced, in_shardings=(state_sharding, batch_sh), out_shardings=out_sh, donate_argnums=0)
