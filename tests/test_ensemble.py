"""Ensembles of trained runs (eval/ensemble.py, compare ensembles): each member's signal equals its own dense
ranking, catalogs are aligned by item id, weights come from validation only, and the row runs in a comparison."""
import json
import os
import types

import numpy as np
import pytest

from calrec_jax.compare import methods as methods_lib
from calrec_jax.errors import ConfigError, DataError
from calrec_jax.eval import ensemble, fusion


def _config(methods="popularity,dense_a,dense_b,both,both_learned"):
  from configs.compare import synthetic
  c = synthetic.get_config("smoke")
  c.methods = methods
  c.variants.dense_a = "eval.retrieval=dense"
  c.variants.dense_b = "eval.retrieval=dense; loss.w_tt=0"
  c.ensembles.both = c.ensembles.both_learned = "dense_a,dense_b"
  c.ensemble_fusion.both_learned = "learned"
  c.labels.dense_a, c.labels.dense_b, c.labels.both = "A", "B", "A + B ensemble"
  c.labels.both_learned = "A + B ensemble, learned fusion"
  return c


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
  from calrec_jax.compare.run import run_comparison
  work = str(tmp_path_factory.mktemp("ensemble") / "cmp")
  cfg = _config()
  return cfg, work, run_comparison(cfg, work)


def test_the_ensemble_row_fuses_its_members_with_weights_chosen_on_validation(compared):
  cfg, work, paths = compared
  doc = json.load(open(paths["json"]))
  both, a, b = (doc["methods"][m] for m in ("both", "dense_a", "dense_b"))
  assert both["kind"] == "calrec" and list(both["rows"]) == ["A + B ensemble"]
  assert both["rows"]["A + B ensemble"]["users"] == a["rows"]["A · dense"]["users"] == 12
  weights = both["notes"]["fused"]["weights"]
  assert set(weights) == {"dense:dense_a", "dense:dense_b", "bm25_history", "popularity"}
  assert max(weights.values()) == 1.0 and both["notes"]["members"] == ["dense_a", "dense_b"]
  assert both["train_seconds"] == pytest.approx(a["train_seconds"] + b["train_seconds"])
  assert "A + B ensemble" in open(paths["md"]).read()
  learned = doc["methods"]["both_learned"]
  assert list(learned["rows"]) == ["A + B ensemble, learned fusion"]
  assert learned["notes"]["fused"]["method"] == "learned"
  assert learned["notes"]["fused"]["signals"] == list(weights)
  assert learned["rows"]["A + B ensemble, learned fusion"]["users"] == 12


def test_each_member_signal_ranks_exactly_as_the_members_own_dense_row(compared):
  from calrec_jax.eval.recommender import Recommender
  cfg, work, paths = compared
  cats, cat, rows = methods_lib.evaluation_data(cfg.calrec)
  data = cats[cat]
  for member, label in (("dense_a", "A · dense"), ("dense_b", "B · dense")):
    rec = Recommender.load(methods_lib.member_workdir(cfg, member, work))
    signal = ensemble.member_signals({member: rec}, data.catalog.item_ids, [h for _, h, _ in rows])
    excluded = fusion.exclusion_mask([h for _, h, _ in rows], len(data.catalog))
    ranks = fusion.target_ranks(signal[f"dense:{member}"], [t for _, _, t in rows], excluded, 20)
    own = methods_lib.load_result(os.path.join(work, member, "result.json")).ranks[label]
    assert {data.user_ids[u]: int(r) for (u, _, _), r in zip(rows, ranks)} == own


def test_a_member_with_its_catalog_in_another_order_is_aligned_by_item_id():
  ids = ["a", "b", "c", "d"]
  member_ids = ["c", "a", "d", "b"]  # the member's own order

  class Member:  # scores item j of its own catalog by j, for histories in its own indices
    workdir = "m"
    category = 0
    parts = types.SimpleNamespace(categories=[types.SimpleNamespace(catalog=types.SimpleNamespace(
        item_ids=member_ids))])
    seen = []

    def scores(self, histories, ranker):
      self.seen.extend(histories)
      return np.tile(np.arange(4, dtype=np.float32), (len(histories), 1))
  m = Member()
  out = ensemble.dense_scores(m, ids, [[0, 3]])  # items a and d
  assert m.seen == [[1, 2]]  # a and d in the member's order
  np.testing.assert_array_equal(out, [[1, 3, 0, 2]])  # a is the member's item 1, b its 3, c its 0, d its 2
  with pytest.raises(DataError, match="member 'm' was trained on another catalog.*'e'"):
    ensemble.dense_scores(m, ids + ["e"], [[0]])


@pytest.mark.parametrize("name", ["both", "both_learned"])
def test_the_weights_never_read_the_test_rows(compared, name):
  """The fused row's choice (weights, or the learned fusion's parameters) is the same whatever the test rows
  hold."""
  cfg, work, _ = compared
  cats, cat, rows = methods_lib.evaluation_data(cfg.calrec)
  n = len(cats[cat].catalog)
  rng = np.random.default_rng(0)
  other = [(u, rng.choice(n, size=len(h), replace=False).tolist(), int(rng.integers(n))) for u, h, _ in rows]
  results = {m: methods_lib.load_result(os.path.join(work, m, "result.json")) for m in ("dense_a", "dense_b")}
  first = methods_lib.run_ensemble(name, cfg, cats[cat], rows, work, results)
  second = methods_lib.run_ensemble(name, cfg, cats[cat], other, work, results)
  assert first.notes["fused"] == second.notes["fused"]
  assert first.ranks != second.ranks


def test_ensemble_config_errors_name_the_key():
  with pytest.raises(ConfigError, match="ensembles.both: member 'dense_b' is not a CALRec variant listed before"):
    methods_lib.check_methods(_config("popularity,dense_a,both,dense_b"))
  c = _config()
  c.ensembles.both = "dense_a"
  with pytest.raises(ConfigError, match="ensembles.both='dense_a': name at least two"):
    methods_lib.check_methods(c)
  seeded = _config()
  seeded.variants.dense_b += "; seed=1"  # would evaluate other users than the rest of the table
  with pytest.raises(ConfigError, match="variants.dense_b overrides seed.*--config.calrec.seed"):
    methods_lib.check_methods(seeded)
  changed = _config()
  changed.variants.dense_b += "; loss.w_ut=1.0"  # a member trained otherwise: the stored ensemble is stale
  assert methods_lib.method_fingerprint("both", changed) != methods_lib.method_fingerprint("both", _config())
  for key, value, message in [("ninety", "learned", "ensemble_fusion.ninety: no ensemble 'ninety'"),
                              ("both", "boosted", "ensemble_fusion.both='boosted'; choose one of")]:
    bad = _config()
    bad.ensemble_fusion[key] = value
    with pytest.raises(ConfigError, match=message):
      methods_lib.check_methods(bad)


def test_results_stored_before_fusion_methods_existed_still_match():
  """A config without eval.fusion_method (written before it existed) fingerprints every method as the default
  (weights) does, so a resumed comparison re-uses its finished rows; the learned ensemble is another result."""
  old = _config()
  with old.calrec.eval.unlocked():
    del old.calrec.eval["fusion_method"]
  del old["ensemble_fusion"], old.ensembles["both_learned"]
  for name in ("popularity", "dense_a", "both"):
    assert methods_lib.method_fingerprint(name, old) == methods_lib.method_fingerprint(name, _config())
  assert methods_lib.method_fingerprint("both_learned", _config()) != methods_lib.method_fingerprint("both", _config())
