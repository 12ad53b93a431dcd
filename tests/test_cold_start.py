"""The cold-start split (data.cold_start_items): new items never reach training, evaluation ranks only the users
whose held-out item is new, the item bank never uses a new item as a negative, and the comparison reports it."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from calrec_jax.data import synthetic
from calrec_jax.data.cold_start import apply_cold_start, cold_start_split, pick_new_items
from calrec_jax.data.iterators import eval_rows
from calrec_jax.data.records import split_examples
from calrec_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def office():
  return synthetic.make_dataset(["Office"])[0]


def test_new_items_never_reach_a_training_example_and_the_held_out_items_stay(office):
  new = pick_new_items(len(office.catalog), 0.3, seed=0)
  assert len(new) == round(0.3 * len(office.catalog)) and new == pick_new_items(len(office.catalog), 0.3, seed=0)
  assert new != pick_new_items(len(office.catalog), 0.3, seed=1)
  cold = cold_start_split(office, new)
  assert cold.new_items == new
  for u, t in split_examples(cold.sequences, "train"):
    assert cold.sequences[u][t] not in new and not set(cold.sequences[u][:t]) & new
  kept = dict(zip(cold.user_ids, cold.sequences))
  for user, seq in zip(office.user_ids, office.sequences):
    if user in kept:
      assert kept[user][-2:] == seq[-2:]                                # validation and test items unchanged
      assert kept[user][:-2] == [i for i in seq[:-2] if i not in new]  # the old items, in their order
    else:  # dropped: nothing old left to learn from
      assert all(i in new for i in seq[:-2])
  assert cold.skipped["cold_start_users_without_old_items"] == len(office.user_ids) - len(cold.user_ids)


def test_evaluation_ranks_only_users_whose_held_out_item_is_new(office):
  cold = cold_start_split(office, pick_new_items(len(office.catalog), 0.3, seed=0))
  for split in ("valid", "test"):
    rows = eval_rows(cold.sequences, split, new_items=cold.new_items)
    everyone = eval_rows(cold.sequences, split)
    assert 0 < len(rows) < len(everyone)
    assert all(target in cold.new_items for _, _, target in rows)
    assert len(rows) == sum(target in cold.new_items for _, _, target in everyone)
  subset = eval_rows(cold.sequences, "test", max_users=5, seed=0, new_items=cold.new_items)
  assert len(subset) == 5 and all(t in cold.new_items for _, _, t in subset)


def test_only_the_evaluated_category_is_split_and_bad_fractions_are_refused():
  cats = synthetic.make_dataset(["Garden", "Office"])
  cfg = ml_collections.ConfigDict({"cold_start_items": 0.2, "cold_start_seed": 3, "eval_category": "Office"})
  garden, office = apply_cold_start(cats, cfg)
  assert not garden.new_items and garden.sequences == cats[0].sequences
  assert office.new_items == pick_new_items(len(cats[1].catalog), 0.2, 3)
  cfg.cold_start_items = 0.0
  assert apply_cold_start(cats, cfg) == cats
  for bad in (1.0, -0.1):
    with pytest.raises(ConfigError, match="data.cold_start_items"):
      pick_new_items(10, bad, 0)


def test_bank_loss_with_excluded_items_equals_the_softmax_over_the_training_catalog():
  """Excluded items are no negatives: the loss and gradients equal those of a bank without their rows."""
  from calrec_jax.model.pooling import l2_normalize
  from calrec_jax.train.losses import bank_info_nce
  rng = np.random.default_rng(0)
  n, items, e, t = 6, 20, 8, 0.1
  q = l2_normalize(jnp.asarray(rng.normal(size=(n, e)), jnp.float32))
  bank = l2_normalize(jnp.asarray(rng.normal(size=(items, e)), jnp.float32))
  excluded = (2, 7, 11, 19)
  keep = np.asarray([i for i in range(items) if i not in excluded])
  ids = jnp.asarray(keep[rng.integers(0, len(keep), size=n)], jnp.int32)
  valid = jnp.ones(n, bool)
  remap = jnp.asarray(np.searchsorted(keep, np.asarray(ids)), jnp.int32)

  def ours(q, k):
    return bank_info_nce(q, k, ids, valid, bank, t, excluded)[0]

  def reference(q, k):  # the training catalog's bank only, targets renumbered into it
    return bank_info_nce(q, k, remap, valid, bank[keep], t)[0]
  k = bank[ids]
  np.testing.assert_allclose(ours(q, k), reference(q, k), rtol=1e-6)
  for a, b in zip(jax.grad(ours, argnums=(0, 1))(q, k), jax.grad(reference, argnums=(0, 1))(q, k)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert float(ours(q, k)) < float(bank_info_nce(q, k, ids, valid, bank, t)[0])  # fewer negatives, lower loss


@pytest.mark.slow
def test_the_comparison_on_a_cold_start_split(tmp_path):
  """The command a user runs with data.cold_start_items: every method on the users whose held-out item is new,
  CALRec trained with whole-catalog negatives on the training catalog, the table saying which split it is."""
  work = tmp_path / "cmp"
  cmd = [sys.executable, "-m", "calrec_jax.compare", "--config=configs/compare/synthetic.py:smoke",
         f"--workdir={work}", "--config.methods=popularity,bm25_history,sasrec,calrec",
         "--config.calrec.data.cold_start_items=0.3", "--config.calrec.eval.max_users=0",
         "--config.variants.calrec=loss.negatives=catalog; loss.bank_refresh_steps=2; eval.retrieval=dense"]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  office = synthetic.make_dataset(["Office"])[0]
  cold = cold_start_split(office, pick_new_items(len(office.catalog), 0.3, 0))
  users = len(eval_rows(cold.sequences, "test", new_items=cold.new_items))
  md = (work / "comparison.md").read_text()
  assert f"Cold-start split: {len(cold.new_items)} of the {len(office.catalog)} items are new" in md
  assert f"the {users} evaluated users are those whose held-out item is new" in md
  doc = json.loads((work / "comparison.json").read_text())
  assert {r["users"] for m in doc["methods"].values() for r in m["rows"].values()} == {float(users)}
  ranked = [json.loads(line) for line in open(work / "calrec" / "eval" / "rankings_dense.jsonl")]
  assert len(ranked) == users and all(r["target"] in cold.new_items for r in ranked)
  assert json.load(open(work / "calrec" / "config.json"))["data"]["cold_start_items"] == 0.3


def test_results_stored_before_the_split_existed_still_match_and_a_cold_start_one_does_not():
  from calrec_jax.compare import methods as methods_lib
  from configs.compare import synthetic as compare_synthetic
  cfg = compare_synthetic.get_config("smoke")
  now = {m: methods_lib.method_fingerprint(m, cfg) for m in ("sasrec", "calrec")}
  older = compare_synthetic.get_config("smoke")
  with older.calrec.data.unlocked():
    del older.calrec.data["cold_start_items"], older.calrec.data["cold_start_seed"]
  assert {m: methods_lib.method_fingerprint(m, older) for m in now} == now
  cfg.calrec.data.cold_start_items = 0.2
  assert all(methods_lib.method_fingerprint(m, cfg) != f for m, f in now.items())
