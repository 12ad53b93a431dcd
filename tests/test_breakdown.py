"""The comparison's breakdown: metrics of every row on groups of the same users (target popularity, history length)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from calrec_jax.compare.breakdown import Group, group_metrics, quantile_groups

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quantile_groups_are_about_equal_never_split_a_value_and_cover_every_user_once():
  values = {f"u{i}": v for i, v in enumerate([0, 0, 0, 1, 1, 2, 3, 3, 5, 8, 8, 8])}
  groups = quantile_groups(values, 3)
  assert [u for g in groups for u in g.users] and sorted(u for g in groups for u in g.users) == sorted(values)
  assert all(g.low <= g.high for g in groups)
  assert all(a.high < b.low for a, b in zip(groups, groups[1:]))  # increasing, a value in one group only
  for g in groups:
    assert all(g.low <= values[u] <= g.high for u in g.users)
  assert [(g.low, g.high, len(g.users)) for g in groups] == [(0, 1, 5), (2, 5, 4), (8, 8, 3)]  # cut at the 1/3, 2/3 quantiles (1, 5)
  assert len(quantile_groups({"a": 4, "b": 4, "c": 4}, 3)) == 1  # one value: one group, not three empty ones
  with pytest.raises(ValueError):
    quantile_groups(values, 0)


def test_group_metrics_equal_the_metrics_computed_by_hand_on_each_groups_users():
  ranks = {"a": 1, "b": 3, "c": 0, "d": 12, "e": 10}
  groups = [Group(0, 1, ["a", "c"]), Group(2, 9, ["b", "d", "e"])]
  got = group_metrics(ranks, groups)
  assert got[0] == pytest.approx({"recall@10": 0.5, "ndcg@10": 0.5})
  assert got[1] == pytest.approx({"recall@10": 2 / 3, "ndcg@10": (1 / np.log2(4) + 1 / np.log2(11)) / 3})
  with pytest.raises(KeyError):
    group_metrics({"a": 1}, groups)


def test_breakdown_cli_splits_a_finished_comparison_and_names_a_result_of_other_users(tmp_path):
  work = tmp_path / "cmp"
  flags = ["--config=configs/compare/synthetic.py:smoke", f"--workdir={work}",
           "--config.methods=popularity,bm25_history", "--config.calrec.eval.max_users=60"]
  out = subprocess.run([sys.executable, "-m", "calrec_jax.compare", *flags], cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  out = subprocess.run([sys.executable, "-m", "calrec_jax.compare.breakdown", *flags], cwd=ROOT, capture_output=True,
                       text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  assert str(work / "breakdown.png") in out.stdout and (work / "breakdown.png").stat().st_size > 0
  doc = json.loads((work / "breakdown.json").read_text())
  stored = {name: json.loads((work / name / "result.json").read_text())["ranks"] for name in ("popularity",
                                                                                                 "bm25_history")}
  ranks = {label: r for d in stored.values() for label, r in d.items()}
  assert doc["users"] == 60
  for factor in ("target_count", "history_length"):
    f = doc["factors"][factor]
    assert sum(g["users"] for g in f["groups"]) == 60
    assert set(f["rows"]) == set(ranks)
    for label, per_group in f["rows"].items():
      # the groups' users weighted by size give back the row's overall recall@10
      overall = np.mean([0 < r <= 10 for r in ranks[label].values()])
      assert sum(m["recall@10"] * g["users"] for m, g in zip(per_group, f["groups"])) / 60 == pytest.approx(overall)
  assert "ndcg@10 by times training saw the held-out item" in (work / "breakdown.md").read_text()
  # a comparison run on other users than the config's: one line naming the stored result
  bad = subprocess.run([sys.executable, "-m", "calrec_jax.compare.breakdown", *flags[:-1],
                        "--config.calrec.eval.max_users=80"], cwd=ROOT, capture_output=True, text=True)
  assert bad.returncode == 1
  assert "result.json has no rank for the evaluation user" in bad.stderr and "Traceback" not in bad.stderr
