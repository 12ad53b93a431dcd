"""The frozen-layer cache (train/layer_cache.py): the cached path equals the uncached one, and the cache is reused."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from calrec_jax.data.packed import PackedEncoder, PackSpec, training_units
from calrec_jax.errors import CalrecError, ConfigError
from calrec_jax.model.two_tower import TwoTower
from calrec_jax.train import layer_cache, objective
from calrec_jax.train import step as step_lib
from calrec_jax.train.item_bank import ItemBank

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = PackSpec(window=5, context=2, max_len=384, slots=8, item_len=384)


def test_lower_then_upper_equals_the_whole_decoder(tiny_model):
  _, enc, model, params = tiny_model
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 500, size=(2, 40)).astype(np.int32)
  segments = np.repeat(np.asarray([[1] * 15 + [2] * 20 + [0] * 5]), 2, axis=0).astype(np.int32)
  positions = np.concatenate([np.arange(15), np.arange(20), np.zeros(5)])[None].repeat(2, 0).astype(np.int32)
  whole, _ = model.apply({"params": params}, tokens, positions, segments, method=lambda m, *a: m.decoder(*a))
  for k in (0, 1, model.cfg.n_layers):
    split = model.clone(cached_layers=k)
    lower = split.apply({"params": params}, tokens, positions, segments, method=TwoTower.lower_hidden)
    upper = split.apply({"params": params}, lower, positions, segments, k,
                        method=lambda m, *a: m.decoder.upper(*a))
    np.testing.assert_allclose(np.asarray(upper), np.asarray(whole), rtol=1e-5, atol=1e-5, err_msg=f"k={k}")


@pytest.fixture(scope="module")
def cached(tiny_model, tmp_path_factory):
  """(encoder, packer, model that starts at block 1, params, cache built in a temporary directory)."""
  cats, enc, model, params = tiny_model
  packed = PackedEncoder(enc, SPEC)
  top = model.clone(cached_layers=1)
  directory = str(tmp_path_factory.mktemp("cache") / layer_cache.CACHE_DIR)
  return enc, packed, top, params, layer_cache.build(directory, top, params, packed), directory


def _batch(packed, cache, users, cat=0):
  seqs = packed.enc.categories[cat].sequences
  units = [packed.encode_unit(cat, *(int(x) for x in r)) for r in training_units(seqs, SPEC) if r[0] in users]
  rows = packed.pack(units)
  return packed.collate(rows), packed.collate(rows, hidden=cache)


def test_cached_step_losses_and_gradients_equal_the_uncached_step(cached):
  enc, packed, top, params, cache, _ = cached
  plain, with_hidden = _batch(packed, cache, set(range(12)))
  assert with_hidden["joint_hidden"].shape == (*plain["tokens"].shape, top.cfg.d_model)
  assert np.abs(with_hidden["joint_hidden"]).sum() > 0 and np.abs(with_hidden["item_hidden"]).sum() > 0
  bank = jnp.asarray(np.random.default_rng(0).normal(size=(sum(len(c.catalog) for c in enc.categories),
                                                            top.cfg.d_model)), jnp.float32)
  bank = bank / jnp.linalg.norm(bank, axis=-1, keepdims=True)
  lc = objective.LossConfig()
  for b in (None, bank):  # in-batch negatives, then the whole catalog's
    f = jax.jit(jax.value_and_grad(lambda p, x: step_lib.calrec_loss(top, p, x, lc, b), has_aux=True))
    (_, m_plain), g_plain = f(params, {k: jnp.asarray(v) for k, v in plain.items()})
    (_, m_cached), g_cached = f(params, {k: jnp.asarray(v) for k, v in with_hidden.items()})
    for k in ("loss", "loss_nig", "loss_tt", "loss_ut", "acc_nig"):
      np.testing.assert_allclose(m_cached[k], m_plain[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # the trained (top) block's gradients; the cached path never reads the lower block
    top_plain, top_cached = g_plain["decoder"]["layers_1"], g_cached["decoder"]["layers_1"]
    for a, c in zip(jax.tree_util.tree_leaves(top_plain), jax.tree_util.tree_leaves(top_cached)):
      np.testing.assert_allclose(c, a, rtol=1e-3, atol=1e-6)
    assert all(not np.any(x) for x in jax.tree_util.tree_leaves(g_cached["decoder"]["layers_0"]))


def test_item_bank_from_the_cache_equals_the_full_item_tower(cached):
  enc, _, top, params, cache, _ = cached
  full = ItemBank(top.clone(cached_layers=0), enc).encode(params)
  from_cache = ItemBank(top, enc, hidden=cache).encode(params)
  np.testing.assert_allclose(np.asarray(from_cache), np.asarray(full), rtol=1e-4, atol=1e-5)


def test_the_cache_is_reused_for_the_same_weights_and_built_again_for_others(cached, caplog):
  enc, packed, top, params, _, directory = cached
  before = os.path.getmtime(os.path.join(directory, "units.bin"))
  with caplog.at_level("INFO"):
    again = layer_cache.build(directory, top, params, packed)
  assert "reusing" in caplog.text and os.path.getmtime(os.path.join(directory, "units.bin")) == before
  unit = packed.encode_unit(0, *(int(x) for x in training_units(enc.categories[0].sequences, SPEC)[0]))
  assert again.unit(unit).shape == (len(unit["ids"]), top.cfg.d_model)
  other = jax.tree_util.tree_map(lambda x: x, params)
  other["decoder"]["layers_0"] = jax.tree_util.tree_map(lambda x: x * 1.01, params["decoder"]["layers_0"])
  caplog.clear()
  with caplog.at_level("INFO"):
    rebuilt = layer_cache.build(directory, top, other, packed)
  assert "building it again" in caplog.text
  assert not np.allclose(rebuilt.unit(unit), again.unit(unit))
  layer_cache.build(directory, top, params, packed)  # leave the module's cache as the other tests expect


def test_a_damaged_cache_is_built_again_and_an_unwritable_one_is_one_clear_error(tiny_model, tmp_path, caplog):
  _, enc, model, params = tiny_model
  packed, top = PackedEncoder(enc, SPEC), model.clone(cached_layers=1)
  directory = tmp_path / layer_cache.CACHE_DIR
  layer_cache.build(str(directory), top, params, packed)
  with open(directory / "units.bin", "r+b") as f:
    f.truncate(100)  # a disk that filled up, a copy cut short
  with caplog.at_level("WARNING"):
    again = layer_cache.build(str(directory), top, params, packed)
  assert "is damaged" in caplog.text
  unit = packed.encode_unit(0, *(int(x) for x in training_units(enc.categories[0].sequences, SPEC)[0]))
  assert again.unit(unit).shape == (len(unit["ids"]), top.cfg.d_model)
  blocked = tmp_path / "file"
  blocked.write_text("")
  with pytest.raises(CalrecError, match="frozen-layer cache: cannot write .*model.cache_frozen_layers=False"):
    layer_cache.build(str(blocked / layer_cache.CACHE_DIR), top, params, packed)


def test_a_stopped_build_continues_where_it_stopped_and_equals_an_uninterrupted_one(cached, tmp_path, caplog):
  enc, packed, top, params, _, _ = cached
  directory, whole_dir = str(tmp_path / layer_cache.CACHE_DIR), str(tmp_path / "whole")
  whole = layer_cache.build(whole_dir, top, params, packed, rows_per_call=1)  # the same calls, never stopped
  calls = iter(range(1000))
  with pytest.raises(layer_cache.CacheBuildInterrupted, match="run the same command to continue"):
    layer_cache.build(directory, top, params, packed, rows_per_call=1, stop=lambda: next(calls) == 2,
                      commit_every_s=3600.0)  # no timed commit: the stop alone stores the rows
  progress = json.load(open(os.path.join(directory, layer_cache.PROGRESS_FILE)))
  assert progress["units"] == 3 and progress["items"] == 0
  assert not os.path.exists(os.path.join(directory, "meta.json"))  # never taken for a finished cache
  with caplog.at_level("INFO"):
    resumed = layer_cache.build(directory, top, params, packed, rows_per_call=1)
  assert "continuing the build" in caplog.text and "3 unit rows" in caplog.text
  assert not os.path.exists(os.path.join(directory, layer_cache.PROGRESS_FILE))
  for name in ("units.bin", "items.bin"):  # bit-identical to the build that never stopped
    with open(os.path.join(directory, name), "rb") as a, open(os.path.join(whole_dir, name), "rb") as b:
      assert a.read() == b.read(), name
  unit = packed.encode_unit(0, *(int(x) for x in training_units(enc.categories[0].sequences, SPEC)[-1]))
  np.testing.assert_array_equal(resumed.unit(unit), whole.unit(unit))


def test_a_stopped_build_of_other_weights_starts_over(cached, tmp_path, caplog):
  enc, packed, top, params, _, _ = cached
  directory = str(tmp_path / layer_cache.CACHE_DIR)
  with pytest.raises(layer_cache.CacheBuildInterrupted):
    layer_cache.build(directory, top, params, packed, rows_per_call=1, stop=lambda: True)
  other = jax.tree_util.tree_map(lambda x: x, params)
  other["decoder"]["layers_0"] = jax.tree_util.tree_map(lambda x: x * 1.01, params["decoder"]["layers_0"])
  with caplog.at_level("INFO"):
    layer_cache.build(directory, top, other, packed)
  assert "continuing" not in caplog.text


def test_settings_the_cache_cannot_serve_are_one_clear_error():
  base = ml_collections.ConfigDict({"model": {"lora_rank": 8, "lora_layers": 2, "scan_layers": False},
                                    "data": {"packing": "sequence"}})
  assert layer_cache.frozen_block_count(base, 6) == 4
  for change, words in ((("model", "lora_layers", 0), "lora_layers"), (("model", "lora_rank", 0), "lora_rank"),
                        (("data", "packing", "none"), "data.packing"), (("model", "scan_layers", True), "scan_layers")):
    c = ml_collections.ConfigDict(base.to_dict())
    c[change[0]][change[1]] = change[2]
    with pytest.raises(ConfigError, match=words):
      layer_cache.frozen_block_count(c, 6)
  with pytest.raises(ConfigError, match="adapts all 6 blocks"):
    layer_cache.frozen_block_count(ml_collections.ConfigDict({**base.to_dict(), "model": {
        "lora_rank": 8, "lora_layers": 6, "scan_layers": False}}), 6)


@pytest.mark.slow
def test_training_with_the_cache_equals_training_without_it_and_resumes(tmp_path):
  """The recipe's tiny variant (LoRA on the top block, packed, whole-catalog negatives) through the CLI, with and
  without the cache: the same losses; a second start with more steps reuses the cache."""
  def run(workdir, steps, *extra):
    cmd = [sys.executable, "-m", "calrec_jax.main", "--config=configs/recipe.py:tiny", f"--workdir={workdir}",
           "--config.stage=stage2", "--config.data.categories=Office", f"--config.train.num_steps={steps}",
           "--config.train.log_every=1", "--config.train.eval_every=0", "--config.train.progress=False",
           "--config.ckpt.every=2", "--config.loss.bank_refresh_steps=2", "--config.optim.warmup_steps=1", "--config.eval.valid_users=8", *extra]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stderr

  def losses(workdir):
    with open(workdir / "metrics.jsonl", encoding="utf-8") as f:
      rows = [json.loads(line) for line in f]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}

  def validation(workdir):
    with open(workdir / "metrics.jsonl", encoding="utf-8") as f:
      return [r for r in map(json.loads, f) if "valid/dense_mrr" in r][-1]

  run(tmp_path / "plain", 4, "--config.model.cache_frozen_layers=False")
  first = run(tmp_path / "cached", 2, "--config.model.cache_frozen_layers=True")
  assert "frozen-layer cache: blocks 0-2" in first  # the tiny model: 4 blocks, LoRA on the top one
  meta = json.load(open(tmp_path / "cached" / layer_cache.CACHE_DIR / "meta.json"))
  assert meta["blocks"] == 3 and meta["units"] > 0 and meta["items"] > 0
  resumed = run(tmp_path / "cached", 4, "--config.model.cache_frozen_layers=True")
  assert "frozen-layer cache: reusing" in resumed
  plain, cached_run = losses(tmp_path / "plain"), losses(tmp_path / "cached")
  assert sorted(cached_run) == sorted(plain) == [1, 2, 3, 4]
  np.testing.assert_allclose([cached_run[s] for s in plain], [plain[s] for s in plain], rtol=2e-4)
  # the final validation's item tower ran on the cached item states (one bank encoding more than the refreshes:
  # the refresh at step 2 and the validation) and ranks as the plain run's full item tower does
  assert resumed.count("item bank: encoded") == 2, resumed[-3000:]
  dense = {name: [validation(tmp_path / name)[k] for k in ("valid/dense_ndcg_at_10", "valid/dense_recall_at_10",
                                                             "valid/dense_mrr")] for name in ("plain", "cached")}
  assert dense["plain"][2] > 0  # ranks to compare (the mrr of 8 users)
  np.testing.assert_allclose(dense["cached"], dense["plain"], rtol=1e-3, atol=1e-4)


def test_validation_takes_its_categorys_rows_of_the_cached_item_tower_with_the_bias(synthetic_parts):
  """catalog_vectors: the eval category's slice of every item's v_T (global order), its bias appended, as the plain
  item tower's output gets it."""
  from types import SimpleNamespace

  from calrec_jax.eval.validation import catalog_vectors
  from calrec_jax.model import item_ids
  cats, _, enc = synthetic_parts                                             # Garden, then Office
  parts = SimpleNamespace(encoder=enc, categories=cats)
  n0, n1 = len(cats[0].catalog), len(cats[1].catalog)
  every = np.arange((n0 + n1) * 2, dtype=np.float32).reshape(n0 + n1, 2)     # [I_all, E=2]
  bias = {item_ids.BIAS: np.arange(n0 + n1, dtype=np.float32) / 10}
  np.testing.assert_allclose(catalog_vectors(parts, bias, 1, every),
                             np.concatenate([every[n0:], bias[item_ids.BIAS][n0:, None]], axis=1))
  np.testing.assert_allclose(catalog_vectors(parts, {}, 0, every), every[:n0])
