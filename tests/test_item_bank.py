"""Whole-catalog contrastive losses (loss.negatives='catalog'): the bank loss equals a directly computed softmax over
every catalog item, the bank equals the item tower on each item, sharded equals one device, and training with it
runs, checkpoints the bank and resumes exactly."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from calrec_jax.train import objective
from calrec_jax.train import step as step_lib
from calrec_jax.train.item_bank import ItemBank, catalog_rows
from calrec_jax.model.pooling import l2_normalize
from calrec_jax.train.losses import bank_info_nce
from calrec_jax.model.two_tower import TwoTower

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _case(seed=0, n=12, items=40, e=16):
  rng = np.random.default_rng(seed)
  q = l2_normalize(jnp.asarray(rng.normal(size=(n, e)), jnp.float32))
  k = l2_normalize(jnp.asarray(rng.normal(size=(n, e)), jnp.float32))
  bank = l2_normalize(jnp.asarray(rng.normal(size=(items, e)), jnp.float32))
  ids = rng.integers(0, items, size=n)
  ids[3] = ids[1]                      # a repeated target: one item, one column
  valid = np.ones(n, bool)
  valid[-2:] = False                   # padding rows
  ids[-1] = -1
  return q, k, bank, jnp.asarray(ids, jnp.int32), jnp.asarray(valid)


def reference_loss(q, k, bank, ids, valid, temperature):
  """Per row: cross-entropy over ALL items scored by their bank vectors, where a batch target's vector is its
  fresh key (that of its first occurrence) shifted to the bank's value: the bank's values, the key's gradient."""
  ids, valid = np.asarray(ids), np.asarray(valid)
  keys = jax.lax.stop_gradient(bank)
  for j in range(len(ids)):
    if valid[j] and not any(valid[m] and ids[m] == ids[j] for m in range(j)):
      keys = keys.at[ids[j]].set(k[j] + jax.lax.stop_gradient(bank[ids[j]] - k[j]))
  logp = jax.nn.log_softmax(q @ keys.T / temperature, axis=-1)     # [N, I]
  rows = [-logp[r, ids[r]] for r in range(len(ids)) if valid[r]]
  return sum(rows) / len(rows)


def test_an_up_to_date_bank_gives_the_full_catalog_softmax():
  """With the bank equal to the current item vectors (keys are those rows), loss and gradients are those of the
  plain softmax over every item's current vector."""
  q, _, bank, ids, valid = _case(4)
  safe = jnp.maximum(ids, 0)
  t = 0.1

  def plain(q, bank):
    logp = jax.nn.log_softmax(q @ bank.T / t, axis=-1)
    nll = -jnp.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
    return (nll * valid).sum() / valid.sum()

  def ours(q, bank):
    return bank_info_nce(q, bank[safe], ids, valid, bank, t)[0]
  np.testing.assert_allclose(ours(q, bank), plain(q, bank), rtol=1e-6)
  gq_ours, gb_ours = jax.grad(ours, argnums=(0, 1))(q, bank)  # bank's gradient: only through the keys
  in_batch = np.zeros(bank.shape[0], bool)
  in_batch[np.asarray(ids)[np.asarray(valid)]] = True
  gq_plain, gb_plain = jax.grad(plain, argnums=(0, 1))(q, bank)
  np.testing.assert_allclose(gq_ours, gq_plain, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(gb_ours)[in_batch], np.asarray(gb_plain)[in_batch], rtol=1e-5, atol=1e-7)
  assert float(jnp.abs(np.asarray(gb_ours)[~in_batch]).sum()) == 0.0


def test_bank_loss_and_gradients_equal_full_catalog_softmax():
  q, k, bank, ids, valid = _case()
  t = 0.07
  ours = jax.value_and_grad(lambda q, k: bank_info_nce(q, k, ids, valid, bank, t)[0], argnums=(0, 1))(q, k)
  ref = jax.value_and_grad(lambda q, k: reference_loss(q, k, bank, ids, valid, t), argnums=(0, 1))(q, k)
  np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5)
  for a, b in zip(ours[1], ref[1]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert float(jnp.abs(ours[1][1][3]).sum()) == 0.0  # a repeated target's second key gets no gradient
  assert float(jnp.abs(ours[1][1][-1]).sum()) == 0.0  # padding neither


def test_bank_accuracy_counts_the_target_ranked_first():
  q, _, bank, _, valid = _case(1)
  ids = jnp.arange(q.shape[0], dtype=jnp.int32) * 3  # distinct targets
  k = q
  bank = bank.at[ids].set(q)  # each row's target vector is its query: it scores 1/t, every other item less
  _, acc = bank_info_nce(q, k, ids, valid, bank, 0.05)
  assert float(acc) == 1.0
  _, acc = bank_info_nce(q, k, ids, valid, bank.at[ids].set(-q), 0.05)  # the target now scores lowest
  assert float(acc) == 0.0


@pytest.fixture(scope="module")
def tiny(tiny_model):
  return tiny_model


def test_bank_is_the_item_tower_of_every_item_and_the_loss_its_full_softmax(tiny):
  cats, enc, model, params = tiny
  bank = ItemBank(model, enc, batch_size=16).encode(params)
  rows = catalog_rows(enc)
  assert bank.shape == (sum(len(c.catalog) for c in cats), model.cfg.d_model) == (len(rows), bank.shape[1])
  for i in (0, 7, len(rows) - 1):  # one item alone, unpadded
    ids = jnp.asarray([rows[i]], jnp.int32)
    one = model.apply({"params": params}, ids, jnp.arange(ids.shape[1])[None], jnp.ones_like(ids, bool),
                      jnp.ones_like(ids, bool).at[0, 0].set(False).at[0, -1].set(False),
                      method=TwoTower.item_embedding)
    np.testing.assert_allclose(bank[i], one[0], rtol=1e-4, atol=1e-5)
  seqs = cats[1].sequences
  batch = enc.collate([enc.encode(1, s[:2], s[2]) for s in seqs[:6]])
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  _, m = step_lib.calrec_loss(model, params, batch, objective.LossConfig(), bank)
  out = model.apply({"params": params}, batch)
  logp = jax.nn.log_softmax(out["v_u"] @ bank.T / 0.05, axis=-1)  # every item of both categories
  ref = -np.mean([logp[r, int(batch["target_id"][r])] for r in range(6)])
  np.testing.assert_allclose(m["loss_ut"], ref, rtol=1e-4)


SHARDED = textwrap.dedent("""
  import os, sys
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  sys.path.insert(0, sys.argv[1])
  import jax, jax.numpy as jnp, numpy as np
  from jax.sharding import NamedSharding, PartitionSpec as P
  from tests.test_item_bank import _case
  from calrec_jax.train.losses import bank_info_nce
  from calrec_jax.model.sharding import make_mesh
  q, k, bank, ids, valid = _case(3, n=16, items=64)
  f = jax.value_and_grad(lambda q, k: bank_info_nce(q, k, ids, valid, bank, 0.05)[0], argnums=(0, 1))
  one = jax.jit(f)(q, k)
  mesh = make_mesh(-1, 1, 1)
  row = NamedSharding(mesh, P(("data", "fsdp")))
  q8, k8 = jax.device_put(q, row), jax.device_put(k, row)
  assert len(q8.sharding.device_set) == 8
  eight = jax.jit(f)(q8, k8)
  np.testing.assert_allclose(eight[0], one[0], rtol=1e-6)
  for a, b in zip(eight[1], one[1]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  print("OK")
""")


def test_bank_loss_sharded_over_8_devices_equals_one_device():
  out = subprocess.run([sys.executable, "-c", SHARDED, ROOT], capture_output=True, text=True, cwd=ROOT)
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


def test_sampled_keys_pass_their_gradient_through_the_bank_and_leave_the_loss_unchanged():
  """Mixed negative sampling: fresh vectors of sampled items are straight-through keys like the targets' (bank
  value, fresh gradient); a sampled item that is also a target keeps the target's key; -1 samples nothing."""
  q, k, bank, ids, valid = _case(5)
  t = 0.07
  rng = np.random.default_rng(9)
  s_ids = np.asarray([7, int(ids[0]), 7, -1, 21], np.int32)   # a repeat, a batch target, an empty slot
  s_key = l2_normalize(jnp.asarray(rng.normal(size=(len(s_ids), q.shape[1])), jnp.float32))

  def ours(q, k, s_key):
    return bank_info_nce(q, k, ids, valid, bank, t, sampled_key=s_key, sampled_ids=jnp.asarray(s_ids))[0]

  def reference(q, k, s_key):
    keys = jax.lax.stop_gradient(bank)
    np_ids, np_valid = np.asarray(ids), np.asarray(valid)
    seen = set()
    for j in range(len(np_ids)):
      if np_valid[j] and np_ids[j] not in seen:
        seen.add(int(np_ids[j]))
        keys = keys.at[np_ids[j]].set(k[j] + jax.lax.stop_gradient(bank[np_ids[j]] - k[j]))
    for j, g in enumerate(s_ids):
      if g >= 0 and int(g) not in seen:
        seen.add(int(g))
        keys = keys.at[g].set(s_key[j] + jax.lax.stop_gradient(bank[g] - s_key[j]))
    logp = jax.nn.log_softmax(q @ keys.T / t, axis=-1)
    rows = [-logp[r, np_ids[r]] for r in range(len(np_ids)) if np_valid[r]]
    return sum(rows) / len(rows)

  got = jax.value_and_grad(ours, argnums=(0, 1, 2))(q, k, s_key)
  want = jax.value_and_grad(reference, argnums=(0, 1, 2))(q, k, s_key)
  plain = bank_info_nce(q, k, ids, valid, bank, t)[0]
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  np.testing.assert_allclose(got[0], plain, rtol=1e-6)  # the value is the bank loss's
  for a, b in zip(got[1], want[1]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  g_sampled = np.abs(np.asarray(got[1][2])).sum(1)
  assert g_sampled[0] > 0 and g_sampled[4] > 0          # sampled items outside the batch get a gradient
  assert g_sampled[1] == 0 and g_sampled[2] == 0 and g_sampled[3] == 0  # target, repeat, empty slot: none


def test_sampled_negatives_are_drawn_from_the_step_alone_and_never_excluded_items(tiny):
  """loss.sampled_negatives: each step's items depend on (seed, step) only (a resumed run draws the same), are
  distinct, never a cold-start item, and their rows are the item tower's inputs the bank encodes; processes split
  the same draw."""
  from calrec_jax.train.item_bank import SampledNegatives
  _, enc, _, _ = tiny
  rows = catalog_rows(enc)
  excluded = tuple(range(0, len(rows), 3))
  s = SampledNegatives(enc, 16, seed=5, excluded=excluded)
  a, b = s.arrays(7), SampledNegatives(enc, 16, seed=5, excluded=excluded).arrays(7)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(s.ids(7), s.ids(8)) and not np.array_equal(s.ids(7), SampledNegatives(enc, 16, 6).ids(7))
  drawn = np.concatenate([s.ids(t) for t in range(20)])
  assert not set(drawn.tolist()) & set(excluded) and all(len(set(s.ids(t))) == 16 for t in range(20))
  for r, i in enumerate(a["negative_id"]):
    n = len(rows[i])
    assert a["negative_tokens"][r, :n].tolist() == rows[i] and a["negative_mask"][r].sum() == n
    assert a["negative_text_mask"][r].tolist() == [0 < j < n - 1 for j in range(a["negative_tokens"].shape[1])]
  halves = [SampledNegatives(enc, 16, 5, excluded, p, 2).arrays(7)["negative_id"] for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate(halves), a["negative_id"])
  with pytest.raises(ValueError, match="loss.sampled_negatives=1000 is more than"):
    SampledNegatives(enc, 1000, 5)


def test_the_step_encodes_sampled_negatives_fresh_and_keeps_the_loss_value(tiny):
  """With sampled negatives in the batch the contrastive losses keep their values (the keys are the bank's) while
  the gradient changes: the sampled items' fresh vectors pass it into the params."""
  from calrec_jax.train.item_bank import SampledNegatives
  cats, enc, model, params = tiny
  bank = ItemBank(model, enc, batch_size=16).encode(params)
  seqs = cats[1].sequences
  batch = {k: jnp.asarray(v) for k, v in enc.collate([enc.encode(1, s[:2], s[2]) for s in seqs[:4]]).items()}
  with_neg = {**batch, **{k: jnp.asarray(v) for k, v in SampledNegatives(enc, 8, 0).arrays(0).items()}}
  lc = objective.LossConfig()
  f = lambda p, b: step_lib.calrec_loss(model, p, b, lc, bank)  # noqa: E731
  (l0, m0), g0 = jax.value_and_grad(f, has_aux=True)(params, batch)
  (l1, m1), g1 = jax.value_and_grad(f, has_aux=True)(params, with_neg)
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  for k in ("loss_ut", "loss_tt", "loss_nig"):
    np.testing.assert_allclose(m1[k], m0[k], rtol=1e-5)
  assert int(m1["tokens"]) == int(m0["tokens"]) + int(with_neg["negative_mask"].sum())  # tok_s counts their rows
  diff = sum(float(jnp.abs(a - b).sum()) for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)))
  assert diff > 1e-3
  key, ids = step_lib.sampled_negatives(model, params, with_neg)
  np.testing.assert_allclose(key, bank[np.asarray(ids)], rtol=1e-4, atol=1e-5)  # fresh = the item tower's vectors
  with pytest.raises(ValueError, match="not available with gradient accumulation"):  # never dropped silently
    step_lib.accumulated_loss_grads(model, params, with_neg, lc, 2, bank=bank)


@pytest.mark.parametrize("override, message", [
    ({"loss.negatives": "batch"}, "loss.sampled_negatives=4 adds catalog items"),
    ({"optim.grad_accum": 2}, "loss.sampled_negatives=4 is not available with optim.grad_accum=2"),
    ({"model.cache_frozen_layers": True}, "loss.sampled_negatives=4 encodes token rows"),
    ({"loss.sampled_negatives": -1}, "loss.sampled_negatives=-1 must be >= 0")])
def test_sampled_negatives_config_errors_name_the_keys(override, message):
  from calrec_jax.config_check import validate_config
  from calrec_jax.errors import ConfigError
  from configs import base
  c = base.get_config()
  c.loss.negatives, c.loss.sampled_negatives = "catalog", 4
  for key, value in override.items():
    section, name = key.split(".")
    c[section][name] = value
  with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
    validate_config(c)
