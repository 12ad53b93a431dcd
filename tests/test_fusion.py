"""The fused ranking: exact ranks against a plain sort, weights that find a combination no single signal has, the
test split never read while choosing, and the row end to end through the evaluation."""
import json

import numpy as np
import pytest

from calrec_jax.errors import ConfigError
from calrec_jax.eval import fusion
from calrec_jax.eval.metrics import rank_of


def test_target_ranks_equal_a_plain_sort_with_ties_and_exclusions():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 5, size=(40, 30)).astype(np.float32)  # many ties
  targets = rng.integers(0, 30, size=40)
  histories = [rng.choice(30, size=rng.integers(0, 6), replace=False).tolist() for _ in range(40)]
  excluded = fusion.exclusion_mask(histories, 30)
  got = fusion.target_ranks(scores, targets, excluded, depth=10)
  tops = fusion.top_items(scores, excluded, 10)
  for u in range(40):
    plain = [i for i in sorted(range(30), key=lambda i: (-scores[u, i], i)) if i not in histories[u]][:10]
    assert tops[u].tolist() == plain
    assert got[u] == rank_of(int(targets[u]), plain)


def test_choose_weights_finds_a_mix_no_single_signal_has():
  """The target is the argmax of a + 0.5 b: a alone or b alone ranks it lower than the mix does."""
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(300, 50)), rng.normal(size=(300, 50))
  targets = np.argmax(a + 0.5 * b, axis=1)
  noise = rng.normal(size=(300, 50))
  signals = {"a": fusion.standardise(a), "b": fusion.standardise(b), "noise": fusion.standardise(noise)}
  choice = fusion.choose_weights(signals, targets, None, "ndcg@10")
  assert choice.weights["a"] == 1.0 and 0.3 <= choice.weights["b"] <= 0.7 and choice.weights["noise"] <= 0.1
  assert choice.valid_metric > max(choice.single.values()) + 0.2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  from calrec_jax.train.loop import train
  from test_train import smoke_config
  wd = str(tmp_path_factory.mktemp("fusion") / "run")
  train(smoke_config(2, 2), wd)
  return wd


def test_the_generation_signal_keeps_the_merged_list_order_and_leaves_the_rest_at_zero():
  from calrec_jax.eval.evaluate import generation_signal
  records = [{"top": [4, 0, 7]}, {"top": []}, {"top": [2]}]
  s = generation_signal(records, 8)
  assert s.shape == (3, 8) and s[1].sum() == 0.0 and s[2, 2] == 1.0
  assert list(np.argsort(-s[0], kind="stable")[:3]) == [4, 0, 7] and s[0, [1, 2, 3, 5, 6]].sum() == 0.0
  ranks = fusion.target_ranks(fusion.standardise(s), np.asarray([7, 3, 2]), None, 20)
  assert ranks.tolist() == [3, 4, 1]  # an unretrieved target ties with every other unretrieved item (index order)


@pytest.mark.parametrize("method", ["weights", "learned"])
def test_weights_come_from_validation_only(trained, method):
  """Changing every test row (targets and histories) leaves the chosen weights (or the learned fusion's
  parameters) unchanged: the test split is never read while choosing; the test rows are ranked with them."""
  from calrec_jax.eval.evaluate import evaluate_fused
  from calrec_jax.data.iterators import eval_examples
  from calrec_jax.train.checkpoint import params_from_workdir
  from calrec_jax.model.run_parts import build
  from test_train import smoke_config
  c = smoke_config(2, 2)
  c.eval.fusion, c.eval.max_users, c.eval.fusion_method = "dense,bm25_history,popularity", 0, method
  parts = build(c, trained)
  params = params_from_workdir(trained)
  test = eval_examples(parts.encoder, 0, "test")
  valid = eval_examples(parts.encoder, 0, "valid")
  n = len(parts.categories[0].catalog)
  metrics, records, info = evaluate_fused(c, parts, params, test, valid, 0)
  rng = np.random.default_rng(0)
  other = [(u, rng.choice(n, size=len(h), replace=False).tolist(), int(rng.integers(n))) for u, h, _ in test]
  _, other_records, other_info = evaluate_fused(c, parts, params, other, valid, 0)
  assert info == other_info and info["method"] == method
  assert info["signals"] == ["dense", "bm25_history", "popularity"]
  assert info["valid_users"] == len(valid) and metrics["users"] == len(test)
  assert [r["target"] for r in records] == [t for _, _, t in test]
  assert [r["top"] for r in records] != [r["top"] for r in other_records]
  assert max((info.get("weights") or info["start"]).values()) == 1.0


def test_the_fused_row_end_to_end_and_its_config_errors(trained, tmp_path):
  from calrec_jax.config_check import validate_config
  from calrec_jax.runner import evaluate_workdir
  from test_train import smoke_config
  c = smoke_config(2, 2)
  c.eval.retrieval, c.eval.max_users, c.eval.split, c.eval.beams = "bm25", 10, "test", 24
  c.eval.num_samples, c.eval.max_new_tokens = 2, 12
  c.eval.fusion = "dense,popularity,beam,bm25_history,generation"
  evaluate_workdir(c, trained, out_dir=str(tmp_path / "eval"))
  saved = json.load(open(tmp_path / "eval" / "metrics.json"))
  assert saved["fused"]["users"] == saved["dense"]["users"] == saved["beam"]["users"] == saved["bm25"]["users"] == 10
  assert list(saved["fused_choice"]["weights"]) == ["dense", "popularity", "beam", "bm25_history", "generation"]
  table = (tmp_path / "eval" / "metrics.md").read_text()
  assert "CALRec (fused)" in table and "CALRec (beam)" in table and "fused weights (chosen on" in table
  ranked = [json.loads(x) for x in open(tmp_path / "eval" / "rankings_fused.jsonl")]
  assert len(ranked) == 10 and all(len(r["top"]) == 20 for r in ranked)
  beams = [json.loads(x) for x in open(tmp_path / "eval" / "rankings_beam.jsonl")]
  assert all(r["scores"] == sorted(r["scores"], reverse=True) and len(set(r["top"])) == len(r["top"]) for r in beams)
  assert all(len(r["top"]) >= 10 for r in beams)  # 24 beams, history items left out
  for key, value, message in [("fusion", "dense,clicks", "unknown signal 'clicks'"),
                              ("fusion", "dense,dense", "names a signal twice"),
                              ("fusion_metric", "ndcg@7", "eval.fusion_metric='ndcg@7'"),
                              ("split", "valid", "reports the test split only"),
                              ("fusion", "dense,beam", "eval.beams is 0"),
                              ("fusion_method", "boosted", "eval.fusion_method='boosted'; choose one of")]:
    bad = smoke_config(2, 2)
    bad.eval.fusion = "dense,popularity"
    bad.eval[key] = value
    with pytest.raises(ConfigError, match=message):
      validate_config(bad)
