"""The fused train step on a tiny two-tower model: against a plain reference, bf16 compute, gradient
accumulation, both optimizers, the non-finite guard, and mismatched checkpoints."""
import contextlib
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from calrec_jax.model import variables
from calrec_jax.data.iterators import MixtureIterator
from calrec_jax.model.config import preset
from calrec_jax.model import layers
from calrec_jax.model.decoder import Decoder
from calrec_jax.model.partitioning import logical_spec
from calrec_jax.train import optim
from calrec_jax.model import sharding as shd
from calrec_jax.train import objective
from calrec_jax.train import step as step_lib
from calrec_jax.model.two_tower import TwoTower


@pytest.fixture(scope="module")
def setup(synthetic_parts):
  _, tok, enc = synthetic_parts
  batch = next(MixtureIterator(enc, 8, seed=0))
  batch["target_id"][1] = batch["target_id"][0]  # a duplicate target: must not be a negative
  batch["example_weight"][-1] = 0.0                 # a padding row
  cfg = preset("tiny", vocab_size=512, bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id)
  model = TwoTower(cfg)
  params = jax.jit(lambda r: variables.init_params(
      model, r, {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}))(jax.random.PRNGKey(0))
  return cfg, model, params, {k: jnp.asarray(v) for k, v in batch.items()}


def _plain_project(x, w, n_in=1):
  """x [..., *I] @ w [*I, *O] by einsum, differentiated by JAX itself."""
  letters = "abcdefgh"
  ins, outs = letters[:n_in], letters[n_in:w.ndim]
  return jnp.einsum(f"...{ins},{ins}{outs}->...{outs}", x, w)


def _plain_attend(q, k, v, visible, scale):
  """softmax(where(visible, q k^T * scale, -inf)) v with jax.nn.softmax; q [B, T, K, G, H], k/v [B, S, K, H]."""
  logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32) * scale
  probs = jax.nn.softmax(jnp.where(visible[:, None, None], logits, layers.NEG_INF), axis=-1)
  return jnp.einsum("BKGTS,BSKH->BTKGH", probs.astype(v.dtype), v)


def _plain_rms_norm(x, scale, eps, offset):
  """x / rms(x) * (offset + scale) in float32, differentiated by JAX itself."""
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (y * (offset + scale.astype(jnp.float32))).astype(x.dtype)


@contextlib.contextmanager
def plain_kernels():
  """The decoder with JAX's own autodiff everywhere: einsums instead of `dense`/`project`, jax.nn.softmax instead
  of `attend`'s written-out backward, the RMSNorm formula instead of `rms_norm`'s."""
  saved = layers.dense, layers.project, layers.attend, layers.rms_norm
  layers.dense, layers.project, layers.attend, layers.rms_norm = (_plain_project, _plain_project, _plain_attend,
                                                                  _plain_rms_norm)
  try:
    yield
  finally:
    layers.dense, layers.project, layers.attend, layers.rms_norm = saved


def plain_loss(cfg, params, b, temperature=0.05, w=(1.0, 0.5, 0.5)):
  """The CALRec loss written directly: full-vocabulary logits, explicit masks, no chunking, plain autodiff."""
  with plain_kernels():
    return _plain_loss(cfg, params, b, temperature, w)


def _plain_loss(cfg, params, b, temperature, w):
  dec = Decoder(cfg)
  p = params["decoder"]
  joint, _ = dec.apply({"params": p}, b["tokens"], b["positions"], b["input_mask"])
  item, _ = dec.apply({"params": p}, b["item_tokens"], b["item_positions"], b["item_mask"])
  logits = dec.apply({"params": p}, joint, method=Decoder.logits)  # [B, T, V]
  logp = jax.nn.log_softmax(jnp.take_along_axis(logits, b["lm_positions"][..., None], 1), -1)  # [B, Lt, V]
  nll = -jnp.take_along_axis(logp, b["lm_labels"][..., None], -1)[..., 0]
  lw = b["lm_weights"] * b["example_weight"][:, None]
  nig = (nll * lw).sum() / lw.sum()

  def pool(h, m):
    v = (h * m[..., None]).sum(1) / m.sum(1, keepdims=True).clip(1)
    return v / jnp.linalg.norm(v, axis=-1, keepdims=True).clip(1e-6)
  v_u, v_tu, v_t = pool(joint, b["history_mask"]), pool(joint, b["target_mask"]), pool(item, b["item_text_mask"])
  valid = b["example_weight"] > 0
  n = len(valid)

  def nce(q, k):
    total = 0.0
    for i in range(n):
      if not valid[i]:
        continue
      neg = [j for j in range(n) if valid[j] and (j == i or b["target_id"][j] != b["target_id"][i])]
      s = jnp.stack([q[i] @ k[j] for j in neg]) / temperature
      total = total - (s[neg.index(i)] - jax.nn.logsumexp(s))
    return total / valid.sum()
  return w[0] * nig + w[1] * nce(v_tu, v_t) + w[2] * nce(v_u, v_t)


def test_fused_loss_equals_plain_reference_values_and_grads(setup):
  cfg, model, params, b = setup
  lc = objective.LossConfig(vocab_chunk=100)  # several chunks, the last one partial
  fused = lambda p: step_lib.calrec_loss(model, p, b, lc)[0]  # noqa: E731
  plain = lambda p: plain_loss(cfg, p, b)  # noqa: E731
  np.testing.assert_allclose(fused(params), plain(params), rtol=1e-5)
  g_fused, g_plain = jax.grad(fused)(params), jax.grad(plain)(params)
  for a, c in zip(jax.tree_util.tree_leaves(g_fused), jax.tree_util.tree_leaves(g_plain)):
    np.testing.assert_allclose(a, c, atol=2e-5)
  # the reference really is plain autodiff, and the step really runs the written-out backward passes
  def traced_decoder():  # a new function each time: JAX caches traces by function
    return str(jax.make_jaxpr(lambda p: Decoder(cfg).apply({"params": p["decoder"]}, b["tokens"], b["positions"],
                                                           b["input_mask"])[0].sum())(params))
  assert "custom_vjp" in traced_decoder()
  with plain_kernels():
    assert "custom_vjp" not in traced_decoder()


@pytest.mark.parametrize("kw", [dict(scan_layers=True), dict(attention="xla"),
                                dict(scan_layers=True, attention="xla", remat=True)])
def test_scanned_blocks_and_fused_attention_equal_the_plain_reference(setup, kw):
  """Scanning the blocks (one block per scan step, its sliding-window flag beside its weights) and
  jax.nn.dot_product_attention change how the step is compiled, not what it computes: loss and every gradient
  equal the plain reference's. Global layers get another RoPE base and scaling here, so a layer given the wrong
  kind would show."""
  cfg, _, params, b = setup
  cfg = cfg.replace(rope_theta=1e6, rope_scaling="linear", rope_factor=8.0)
  model = TwoTower(cfg, **kw)
  lc = objective.LossConfig(vocab_chunk=100)
  fast = lambda p: step_lib.calrec_loss(model, p, b, lc)[0]  # noqa: E731
  plain = lambda p: plain_loss(cfg, p, b)  # noqa: E731
  np.testing.assert_allclose(fast(params), plain(params), rtol=1e-5)
  for a, c in zip(jax.tree_util.tree_leaves(jax.grad(fast)(params)), jax.tree_util.tree_leaves(jax.grad(plain)(params))):
    np.testing.assert_allclose(a, c, atol=2e-5)


def test_a_scanned_models_train_state_stores_its_blocks_stacked(setup):
  """state_shardings/init_state put a scanned model's blocks in one stacked tree (leading layer axis, unsharded);
  unstack_layers gives back exactly the per-layer params; a gap in the layer numbering is refused."""
  from calrec_jax.model.layer_stack import STACKED, stack_layers, unstack_layers
  cfg, _, params, b = setup
  shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in b.items()}
  mesh = shd.make_mesh()
  tx = optax.adamw(1e-3)
  plain_sh, _ = step_lib.state_shardings(TwoTower(cfg), tx, mesh, shapes)
  scan_model = TwoTower(cfg, scan_layers=True)
  scan_sh, abstract = step_lib.state_shardings(scan_model, tx, mesh, shapes)
  decoder = abstract["params"]["decoder"]
  assert STACKED in decoder and not any(k.startswith("layers_") for k in decoder)
  per_layer = params["decoder"]["layers_0"]["attn"]["q_proj"].shape
  assert decoder[STACKED]["attn"]["q_proj"].shape == (cfg.n_layers, *per_layer)
  stacked_spec = scan_sh["params"]["decoder"][STACKED]["mlp"]["up_proj"].spec
  assert tuple(stacked_spec) == (None, *plain_sh["params"]["decoder"]["layers_0"]["mlp"]["up_proj"].spec)
  host = jax.device_get(params)
  given = step_lib.init_state(scan_model, tx, mesh, shapes, 0, scan_sh, host)
  back = unstack_layers(jax.device_get(given["params"]))
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(host)
  for x, y in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(host)):
    np.testing.assert_array_equal(x, y)
  assert STACKED not in host["decoder"] and unstack_layers(host)["decoder"] is host["decoder"]  # unchanged
  gap = dict(host["decoder"])
  del gap["layers_0"]
  with pytest.raises(ValueError, match="layers_0"):
    stack_layers({"decoder": gap})


def test_scan_groups_follow_the_local_global_pattern():
  from calrec_jax.model.config import gemma3_layer_types
  from calrec_jax.model.decoder import layer_period
  assert layer_period(preset("gemma3-1b")) == 6      # 26 layers: 4 scanned groups of 5 local + 1 global, 2 after
  assert layer_period(preset("llama-3.2-1b")) == 1   # all global: one block per group
  assert layer_period(preset("tiny", n_layers=5, layer_types=gemma3_layer_types(5, 2))) == 2


def test_bfloat16_compute_keeps_float32_params_and_close_loss(setup):
  cfg, model, params, b = setup
  lc = objective.LossConfig()
  bf = TwoTower(cfg, dtype=jnp.bfloat16)
  l32, m32 = step_lib.calrec_loss(model, params, b, lc)
  l16, m16 = jax.jit(lambda p: step_lib.calrec_loss(bf, p, b, lc))(params)
  assert l16.dtype == jnp.float32  # loss and softmax in float32
  assert abs(float(l16) - float(l32)) < 0.05 * abs(float(l32))
  grads = jax.grad(lambda p: step_lib.calrec_loss(bf, p, b, lc)[0])(params)
  assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(grads))


def state_of(model, params, tx):
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}


def test_gradient_accumulation_equals_the_whole_batch_step(setup):
  """Microbatches change memory, not maths: contrastive negatives still span the whole batch."""
  _, model, params, b = setup
  lc = objective.LossConfig(vocab_chunk=100)
  tx = optax.sgd(1.0)  # update = -gradient, so new params expose the accumulated gradient
  whole, m_whole = jax.jit(step_lib.make_train_step(model, tx, lc))(state_of(model, params, tx), b)
  for grad_accum in (2, 4):
    accum, m_accum = jax.jit(step_lib.make_train_step(model, tx, lc, grad_accum=grad_accum))(
        state_of(model, params, tx), b)
    for k in ("loss", "loss_nig", "loss_tt", "loss_ut", "acc_nig", "acc_tt", "acc_ut", "tokens"):
      np.testing.assert_allclose(float(m_accum[k]), float(m_whole[k]), rtol=1e-5, err_msg=f"{k} N={grad_accum}")
    moved = 0.0
    for p_old, p_whole, p_accum in zip(*(jax.tree_util.tree_leaves(t) for t in (params, whole["params"],
                                                                                 accum["params"]))):
      np.testing.assert_allclose(p_accum - p_old, p_whole - p_old, atol=2e-5)
      moved = max(moved, float(jnp.abs(p_whole - p_old).max()))
    assert moved > 1e-3  # the step did change the params


def test_microbatches_interleave_rows_so_each_device_keeps_its_share():
  batch = {"x": jnp.arange(8)}
  micro = step_lib.split_microbatches(batch, 2)["x"]
  np.testing.assert_array_equal(micro, [[0, 2, 4, 6], [1, 3, 5, 7]])


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_optimizers_lower_the_loss_on_a_fixed_batch(setup, name):
  _, model, params, b = setup
  c = ml_collections.ConfigDict(dict(name=name, learning_rate=3e-3, schedule="cosine", warmup_steps=2,
                                     final_lr_fraction=0.1, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01,
                                     grad_clip_norm=1.0, grad_accum=1))
  tx = optim.make_optimizer(c, 12)
  step = jax.jit(step_lib.make_train_step(model, tx, objective.LossConfig()))
  state = state_of(model, params, tx)
  losses = []
  for _ in range(12):
    state, m = step(state, b)
    losses.append(float(m["loss"]))
  assert losses[-1] < 0.8 * losses[0], losses


def test_non_finite_loss_leaves_params_unchanged(setup):
  _, model, params, b = setup
  tx = optax.adamw(1e-3)
  bad = dict(b, lm_weights=b["lm_weights"].at[0, 0].set(jnp.nan))
  new, m = jax.jit(step_lib.make_train_step(model, tx, objective.LossConfig()))(state_of(model, params, tx), bad)
  assert int(m["skipped"]) == 1
  for a, c in zip(jax.tree_util.tree_leaves(new["params"]), jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("shaped_like_params", [True, False])
def test_guard_skips_a_step_whose_new_optimizer_state_overflows(setup, shaped_like_params):
  """A finite loss, gradient and update whose new optimizer state is not finite (a statistic that overflows, kept
  per parameter like AdamW's moments or as one scalar): the step is skipped and the state comes back unchanged."""
  _, model, params, b = setup

  def init(p):
    return jax.tree_util.tree_map(lambda x: jnp.full_like(x, 3e38), p) if shaped_like_params else jnp.float32(3e38)

  def update(u, s, p=None):
    return u, jax.tree_util.tree_map(lambda x: x * 10.0, s)  # 3e38 * 10 = inf; the update passes unchanged

  tx = optax.chain(optax.adamw(1e-3), optax.GradientTransformation(init, update))
  state = state_of(model, params, tx)
  new, m = jax.jit(step_lib.make_train_step(model, tx, objective.LossConfig()))(state, b)
  assert int(m["skipped"]) == 1 and np.isfinite(float(m["loss"]))
  for x, y in zip(jax.tree_util.tree_leaves(new["params"]) + jax.tree_util.tree_leaves(new["opt_state"]),
                  jax.tree_util.tree_leaves(state["params"]) + jax.tree_util.tree_leaves(state["opt_state"])):
    np.testing.assert_array_equal(x, y)


def test_grouped_reductions_equal_per_array_ones():
  """global_norm and all_finite reduce same-shaped arrays together; one bad element anywhere still counts."""
  rng = np.random.default_rng(0)
  tree = {f"layer_{i}": {"w": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32),
                         "scale": jnp.asarray(rng.normal(size=(6,)), jnp.float32)} for i in range(3)}
  tree["embedding"] = jnp.asarray(rng.normal(size=(5, 6)), jnp.float32)
  np.testing.assert_allclose(step_lib.global_norm(tree), optax.global_norm(tree), rtol=1e-6)
  moments = jax.tree_util.tree_map(jnp.abs, tree)
  state = (optax.ScaleByAdamState(jnp.int32(1), tree, moments), jnp.float32(0.5))
  assert bool(step_lib.all_finite(tree, state))
  for bad in (jnp.inf, -jnp.inf, jnp.nan):
    broken = dict(tree, layer_1=dict(tree["layer_1"], w=tree["layer_1"]["w"].at[2, 3].set(bad)))
    assert not bool(step_lib.all_finite(broken, state))  # in the update
    assert not bool(step_lib.all_finite(tree, (optax.ScaleByAdamState(jnp.int32(1), tree, broken), 0.5)))  # a moment
    assert not bool(step_lib.all_finite(tree, (state[0], jnp.float32(bad))))  # a state leaf of its own


def test_clip_by_global_norm_equals_optax():
  tree = {"a": jnp.arange(6.0).reshape(2, 3) - 2.0, "b": jnp.asarray([0.5, -4.0])}
  for max_norm in (0.3, 100.0):  # clipped and untouched
    ours, ours_state = optim.clip_by_global_norm(max_norm).update(tree, optim.clip_by_global_norm(max_norm).init(tree))
    ref, ref_state = optax.clip_by_global_norm(max_norm).update(tree, optax.clip_by_global_norm(max_norm).init(tree))
    # the train step hands over the norm it computed; inside a chain, as the step calls it
    chained = optax.chain(optim.clip_by_global_norm(max_norm), optax.identity())
    given, _ = chained.update(tree, chained.init(tree), grad_norm=optax.global_norm(tree))
    for a, g, r in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(given), jax.tree_util.tree_leaves(ref)):
      np.testing.assert_allclose(a, r, rtol=1e-6)
      np.testing.assert_allclose(g, r, rtol=1e-6)
    assert jax.tree_util.tree_structure(ours_state) == jax.tree_util.tree_structure(ref_state)


def test_update_writes_the_state_in_place():
  """The compiled step's temporaries stay near one gradient (plus the tied embedding's second gradient): the
  guarded AdamW update keeps no second copy of params and moments (a whole-state select needed 4x the params)."""
  from calrec_jax.plan.estimate import StepShape, compile_train_step, param_tree
  cfg = preset("tiny", vocab_size=32768)  # the embedding dominates, so the update's buffers dominate the step
  n = sum(x.size for x in jax.tree_util.tree_leaves(param_tree(cfg)))
  tx = optax.chain(optim.clip_by_global_norm(1.0), optax.adamw(1e-3))
  mem = compile_train_step(cfg, StepShape(1, 32, 8, 10, (1, 1, 1)), tx)[0].memory_analysis()
  assert mem.argument_size_in_bytes < 3.01 * 4 * n  # params + two moments + the batch
  assert mem.temp_size_in_bytes < 2.5 * 4 * n, mem.temp_size_in_bytes / (4 * n)


def test_params_of_another_model_are_named_in_the_error(setup, tmp_path):
  from calrec_jax.errors import CheckpointError
  from calrec_jax.train.checkpoint import check_params, load_params, save_params
  cfg, model, params, b = setup
  _, abstract = variables.params_shardings(model, shd.make_mesh(), {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
                                                                  for k, v in b.items()})
  check_params(params, abstract, "ok")  # the matching tree passes
  other = TwoTower(preset("tiny", vocab_size=600))
  _, other_abstract = variables.params_shardings(other, shd.make_mesh(), {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
                                                                         for k, v in b.items()})
  save_params(str(tmp_path / "p"), jax.device_get(params))
  with pytest.raises(CheckpointError, match=r"embedding.*\(512, 64\).*\(600, 64\)"):
    check_params(load_params(str(tmp_path / "p")), other_abstract, str(tmp_path / "p"))
  with pytest.raises(CheckpointError, match="missing"):
    check_params({"decoder": {k: v for k, v in params["decoder"].items() if k != "final_norm"}}, abstract, "x")
  with pytest.raises(CheckpointError, match="no params checkpoint"):
    load_params(str(tmp_path / "absent"))


def test_logical_spec_drops_axes_that_do_not_divide_or_repeat():
  mesh = SimpleNamespace(shape={"data": 2, "fsdp": 4, "tensor": 2})
  rules = shd.DEFAULT_RULES
  assert logical_spec(("activation_batch", None), (16, 3), mesh, rules) == P(("data", "fsdp"), None)
  assert logical_spec(("activation_batch",), (6,), mesh, rules) == P("data")  # 6 rows: fsdp=4 does not divide
  assert logical_spec(("embed", "heads", "head_dim"), (64, 3, 16), mesh, rules) == P("fsdp", None, None)
  assert logical_spec(("vocab", "embed"), (512, 64), mesh, rules) == P("tensor", "fsdp")
