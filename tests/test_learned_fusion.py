"""The learned fusion: it starts from (and can stay) one signal's ranking, it uses what a weight vector cannot (each
user's own evidence), its fit is deterministic and independent of how users are chunked, bagging averages exactly,
damaged stored parameters are one clear error, and a learned choice travels from an evaluation to the export and
the recommend API."""
import json
import shutil

import numpy as np
import pytest

from calrec_jax.errors import DataError
from calrec_jax.eval import fusion, fusion_methods, learned_fusion


def _signals(rng, users, items, names=("a", "b")):
  return {n: fusion.standardise(rng.normal(size=(users, items))) for n in names}


def test_a_zero_network_with_a_one_hot_linear_part_ranks_as_that_signal_alone():
  rng = np.random.default_rng(0)
  sig = _signals(rng, 30, 25, ("a", "b", "c"))
  params = {k: np.zeros_like(v) for k, v in learned_fusion.init_params([0.0, 1.0, 0.0], seed=0).items()}
  params["lin"][1] = 1.0
  got = learned_fusion.scores(params, sig, ["a", "b", "c"], np.full(30, 4))
  np.testing.assert_array_equal(got, sig["b"])
  targets = rng.integers(0, 25, size=30)
  np.testing.assert_array_equal(fusion.target_ranks(got, targets, None, 10),
                                fusion.target_ranks(sig["b"], targets, None, 10))


def _gated(rng, users, items):
  """Users with a short history bought signal a's top item, users with a long one signal b's: one weight vector
  cannot follow both, a fusion that sees the history length can."""
  sig = _signals(rng, users, items)
  lengths = np.where(np.arange(users) % 2 == 0, 1, 40)
  targets = np.where(lengths == 1, sig["a"].argmax(1), sig["b"].argmax(1))
  return sig, targets, lengths


def test_the_learned_fusion_follows_each_users_evidence_where_one_weight_vector_cannot():
  rng = np.random.default_rng(1)
  sig, targets, lengths = _gated(rng, 400, 30)
  held_sig, held_targets, held_lengths = _gated(rng, 400, 30)
  ndcg = {}
  for method in ("weights", "learned"):
    choice = fusion_methods.fit(method, sig, targets, None, lengths)
    ranks = fusion.target_ranks(fusion_methods.apply(choice, held_sig, held_lengths), held_targets, None, 20)
    ndcg[method] = float(np.mean([1 / np.log2(r + 1) if 0 < r <= 10 else 0.0 for r in ranks]))
  assert ndcg["learned"] > ndcg["weights"] + 0.1, ndcg


def test_the_fit_is_deterministic_and_does_not_depend_on_the_chunking(monkeypatch):
  rng = np.random.default_rng(2)
  sig, targets, lengths = _gated(rng, 50, 20)
  excluded = fusion.exclusion_mask([rng.choice(20, size=3, replace=False).tolist() for _ in range(50)], 20)
  whole = learned_fusion.fit(sig, targets, excluded, lengths, [1.0, 0.5], seed=3, steps=5)
  again = learned_fusion.fit(sig, targets, excluded, lengths, [1.0, 0.5], seed=3, steps=5)
  for k in whole:
    np.testing.assert_array_equal(whole[k], again[k])
  per_user = 20 * learned_fusion.num_features(2) * 4
  monkeypatch.setattr(learned_fusion, "FEATURE_BYTES", 7 * per_user)  # 8 chunks, the last one padded
  monkeypatch.setattr(learned_fusion, "FEATURE_CACHE_BYTES", 0)       # features rebuilt every step
  chunked = learned_fusion.fit(sig, targets, excluded, lengths, [1.0, 0.5], seed=3, steps=5)
  for k in whole:
    np.testing.assert_allclose(chunked[k], whole[k], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(learned_fusion.scores(chunked, sig, ["a", "b"], lengths),
                             learned_fusion.scores(whole, sig, ["a", "b"], lengths), rtol=1e-4, atol=1e-5)


def test_a_bagged_network_scores_the_mean_of_its_members():
  rng = np.random.default_rng(4)
  sig = _signals(rng, 12, 15)
  fits = [{k: v + rng.normal(size=v.shape).astype(np.float32) * 0.1 for k, v in
           learned_fusion.init_params([1.0, 0.3], seed=s).items()} for s in range(3)]
  lengths = rng.integers(1, 20, size=12)
  mean = np.mean([learned_fusion.scores(f, sig, ["a", "b"], lengths) for f in fits], 0)
  np.testing.assert_allclose(learned_fusion.scores(learned_fusion.bagged(fits), sig, ["a", "b"], lengths), mean,
                             rtol=1e-5, atol=1e-5)


def test_stored_choices_are_checked():
  rng = np.random.default_rng(5)
  sig, targets, lengths = _gated(rng, 40, 10)
  choice = json.loads(json.dumps(fusion_methods.fit("learned", sig, targets, None, lengths)))  # as stored
  assert fusion_methods.check(choice, "x.json") is choice
  np.testing.assert_allclose(fusion_methods.apply(choice, sig, lengths),
                             fusion_methods.apply(fusion_methods.fit("learned", sig, targets, None, lengths), sig,
                                                  lengths), rtol=1e-5, atol=1e-5)
  for damage, message in [(lambda c: c["params"]["w1"].pop(), "'w1' has shape"),
                          (lambda c: c["params"].pop("lin"), "lack a numeric 'lin'"),
                          (lambda c: c["params"]["b1"].__setitem__(0, float("nan")), "finite"),
                          (lambda c: c.__setitem__("signals", []), "names no signals"),
                          (lambda c: c.__setitem__("method", "boosted"), "unknown fusion method 'boosted'")]:
    bad = json.loads(json.dumps(choice))
    damage(bad)
    with pytest.raises(DataError, match=message) as e:
      fusion_methods.check(bad, "x.json")
    assert "x.json" in str(e.value)
  with pytest.raises(DataError, match="weights are missing"):
    fusion_methods.check({"weights": {"dense": "high"}}, "x.json")


def test_a_learned_choice_goes_from_the_evaluation_to_the_export_and_the_recommend_api(tmp_path):
  from test_recommend import train_and_evaluate
  from test_train import smoke_config
  from calrec_jax.eval.recommender import Recommender
  c = smoke_config(2, 2)
  c.eval.fusion_method = "learned"
  wd = train_and_evaluate(c, str(tmp_path / "run"), "dense,bm25_history,popularity")
  saved = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
  choice = saved["fused_choice"]
  assert choice["method"] == "learned" and choice["signals"] == ["dense", "bm25_history", "popularity"]
  assert "learned fusion (chosen on" in (tmp_path / "run" / "eval" / "metrics.md").read_text()
  serving = json.loads((tmp_path / "run" / "export" / "serving.json").read_text())
  assert serving["fusion"] == choice and "fusion_weights" not in serving
  shutil.copytree(tmp_path / "run" / "export", tmp_path / "served")
  base, served = Recommender.load(wd), Recommender.load(str(tmp_path / "served"))
  assert base.fusion == served.fusion == choice
  data = base.parts.categories[base.category]
  histories = [[data.catalog.item_ids[i] for i in data.sequences[u][:-1]] for u in range(6)]
  fused = base.recommend(histories, k=8, ranker="fused")
  assert served.recommend(histories, k=8, ranker="fused") == fused
  # given weights replace the stored learned choice
  weighted = Recommender.load(str(tmp_path / "served"), fusion_weights={"dense": 1.0})
  assert weighted.fusion["method"] == "weights"
  assert [[x["id"] for x in r["items"]] for r in weighted.recommend(histories, k=8, ranker="fused")] == [
      [x["id"] for x in r["items"]] for r in served.recommend(histories, k=8, ranker="dense")]
  # a damaged stored choice is one line naming the file
  serving["fusion"]["params"]["w2"] = [1.0]
  (tmp_path / "served" / "serving.json").write_text(json.dumps(serving))
  with pytest.raises(DataError, match="serving.json"):
    Recommender.load(str(tmp_path / "served"))
