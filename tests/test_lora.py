"""LoRA: a fresh adapter is the base model, training moves only the adapters, the export is the merged model,
and checkpoints hold only what trains."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from calrec_jax.adapters.lora import LoraConfig, PROJECTIONS, init_adapters, merge, trainable_to_params


def tiny_two_tower(projection_dim=0):
  from calrec_jax.model.config import preset
  from calrec_jax.model.variables import init_boxed as _init_variables, example_batch
  from calrec_jax.model.two_tower import TwoTower
  import flax.linen as nn
  model = TwoTower(preset("tiny", vocab_size=96), projection_dim)
  shapes = example_batch(2, 16, 5, 6)
  params = nn.meta.unbox(_init_variables(model, jax.random.PRNGKey(0), shapes))
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(3, 96, size=(2, 16)), jnp.int32)
  return model, params, tokens


def hidden(model, params, tokens):
  pos = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  from calrec_jax.model.decoder import Decoder
  h, _ = Decoder(model.cfg).apply({"params": params["decoder"]}, tokens, pos, tokens > 0)
  return np.asarray(h)


def test_zero_initialised_adapters_equal_the_base_model():
  model, params, tokens = tiny_two_tower()
  lc = LoraConfig(rank=4, alpha=8.0)
  adapters = init_adapters(params["decoder"], lc)
  assert len(adapters) == len(PROJECTIONS) * model.cfg.n_layers
  merged = trainable_to_params(params["decoder"], {"lora": adapters}, lc)
  for a, b in zip(jax.tree_util.tree_leaves(merged["decoder"]), jax.tree_util.tree_leaves(params["decoder"])):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(hidden(model, merged, tokens), hidden(model, params, tokens))


def test_merge_is_w_plus_scaled_ab_on_each_projection_layout():
  model, params, _ = tiny_two_tower()
  lc = LoraConfig(rank=3, alpha=6.0, targets=("q_proj", "o_proj", "down_proj"))
  rng = np.random.default_rng(1)
  adapters = {k: {"a": jnp.asarray(rng.normal(size=v["a"].shape), jnp.float32),
                  "b": jnp.asarray(rng.normal(size=v["b"].shape), jnp.float32)}
              for k, v in init_adapters(params["decoder"], lc).items()}
  merged = merge(params["decoder"], adapters, lc)
  q = params["decoder"]["layers_1"]["attn"]["q_proj"]  # [D, N, H]: one input axis
  ad = adapters["layers_1/attn/q_proj"]
  np.testing.assert_allclose(merged["layers_1"]["attn"]["q_proj"],
                             q + 2.0 * (np.asarray(ad["a"]) @ np.asarray(ad["b"])).reshape(q.shape), rtol=1e-5)
  o = params["decoder"]["layers_0"]["attn"]["o_proj"]  # [N, H, D]: two input axes
  ad = adapters["layers_0/attn/o_proj"]
  assert ad["a"].shape == (o.shape[0] * o.shape[1], 3) and ad["b"].shape == (3, o.shape[2])
  np.testing.assert_allclose(merged["layers_0"]["attn"]["o_proj"],
                             o + 2.0 * (np.asarray(ad["a"]) @ np.asarray(ad["b"])).reshape(o.shape), rtol=1e-5)
  np.testing.assert_array_equal(merged["layers_0"]["mlp"]["up_proj"], params["decoder"]["layers_0"]["mlp"]["up_proj"])


@pytest.mark.slow
def test_lora_training_moves_only_adapters_and_exports_the_merged_model(tmp_path):
  from calrec_jax.errors import ConfigError
  from calrec_jax.train.checkpoint import load_params
  from calrec_jax.train.loop import train
  from tests.test_train import smoke_config
  full_dir, lora_dir = str(tmp_path / "full"), str(tmp_path / "lora")
  train(smoke_config(2, 2), full_dir)  # the base weights (a finished full run)
  c = smoke_config(4, 2)
  c.model.lora_rank, c.model.lora_alpha = 4, 8.0
  c.ckpt.init_from = full_dir
  c.optim.learning_rate = 1e-2
  train(c, lora_dir)
  base = load_params(os.path.join(full_dir, "export", "params"))
  exported = load_params(os.path.join(lora_dir, "export", "params"))
  # the newest checkpoint holds the trainable tree only: adapters, no decoder weights
  import orbax.checkpoint as ocp
  mgr = ocp.CheckpointManager(os.path.join(lora_dir, "checkpoints"), item_names=("state", "data_iter"))
  state = mgr.restore(4, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  assert set(state["params"]) == {"lora"}
  n_ckpt = sum(x.size for x in jax.tree_util.tree_leaves(state["params"]))
  n_model = sum(x.size for x in jax.tree_util.tree_leaves(base))
  assert n_ckpt < 0.2 * n_model
  assert any(np.abs(np.asarray(v["b"])).max() > 0 for v in state["params"]["lora"].values())  # adapters trained
  # the export is base + scale * A @ B (numpy reference), everything else the base weights unchanged
  for layer in range(2):
    for name in ("q_proj", "down_proj"):
      sub = "attn" if name == "q_proj" else "mlp"
      w = np.asarray(base["decoder"][f"layers_{layer}"][sub][name])
      ad = state["params"]["lora"][f"layers_{layer}/{sub}/{name}"]
      want = w + 2.0 * (np.asarray(ad["a"]) @ np.asarray(ad["b"])).reshape(w.shape)
      np.testing.assert_allclose(exported["decoder"][f"layers_{layer}"][sub][name], want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(exported["decoder"]["embedding"], base["decoder"]["embedding"])
  # evaluating a checkpoint step folds its adapters into the run's base weights: the final step is the export
  from calrec_jax.runner import merged_lora_checkpoint
  from calrec_jax.model.run_parts import build
  merged = merged_lora_checkpoint(state["params"], lora_dir, build(c, lora_dir))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), merged, exported)
  c.model.lora_targets = "q_proj,nope"
  from calrec_jax.config_check import validate_config
  with pytest.raises(ConfigError, match="nope"):
    validate_config(c)


def test_lora_layers_adapts_only_the_top_blocks_and_the_gradient_stops_there():
  model, params, tokens = tiny_two_tower()
  n = model.cfg.n_layers
  lc = LoraConfig(rank=2, alpha=4.0, layers=1)
  adapters = init_adapters(params["decoder"], lc)
  assert adapters and all(k.startswith(f"layers_{n - 1}/") for k in adapters)
  adapters = jax.tree_util.tree_map(lambda x: x + 0.01, adapters)  # non-zero B: the adapters change the output

  def loss(ad):
    return _hidden_sum(model, trainable_to_params(params["decoder"], {"lora": ad}, lc), tokens)
  grads = jax.grad(loss)(adapters)
  assert set(grads) == set(adapters) and all(float(jnp.abs(g["a"]).sum()) > 0 for g in grads.values())
  from calrec_jax.errors import ConfigError
  import ml_collections
  bad = ml_collections.ConfigDict({"lora_rank": 2, "lora_alpha": 4.0, "lora_targets": "q_proj", "lora_layers": -1})
  with pytest.raises(ConfigError, match="model.lora_layers"):
    LoraConfig.from_config(bad)


def _hidden_sum(model, params, tokens):
  from calrec_jax.model.decoder import Decoder
  pos = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  h, _ = Decoder(model.cfg).apply({"params": params["decoder"]}, tokens, pos, tokens > 0)
  return h.sum()
