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
