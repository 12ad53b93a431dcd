"""Paired significance over users: is method A's per-user metric different from method B's on the same users?"""
from __future__ import annotations

import math

import numpy as np


def per_user_metric(ranks: np.ndarray, metric: str) -> np.ndarray:
  """Per-user value of 'ndcg@K' or 'recall@K' from 1-based ranks (0: not retrieved)."""
  name, k = metric.split("@")
  k = int(k)
  r = np.asarray(ranks, np.float64)
  hit = (r > 0) & (r <= k)
  if name == "recall":
    return hit.astype(np.float64)
  if name == "ndcg":
    return np.where(hit, 1.0 / np.log2(np.where(hit, r, 1.0) + 1.0), 0.0)
  raise ValueError(f"unknown metric {metric!r}; use 'ndcg@K' or 'recall@K'")


def paired_tests(a: np.ndarray, b: np.ndarray, num_bootstrap: int = 10_000, seed: int = 0) -> dict[str, float]:
  """Two-sided paired t-test and paired bootstrap on per-user values a, b (same users, same order).

  Returns the mean difference (a - b), its bootstrap 95% interval, and both p-values. Identical inputs give
  p = 1 (no evidence of a difference).
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1 or not len(a):
    raise ValueError(f"paired tests need two equal-length non-empty vectors, got {a.shape} and {b.shape}")
  d = a - b
  n, mean = len(d), float(d.mean())
  sd = float(d.std(ddof=1)) if n > 1 else 0.0
  if sd == 0.0:
    p_t = 1.0 if mean == 0.0 else 0.0
  else:
    from scipy import stats
    p_t = float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), df=n - 1))
  rng = np.random.default_rng(seed)
  boot = np.empty(num_bootstrap)
  for i in range(0, num_bootstrap, 1000):  # chunks keep memory at 1000 x users
    m = min(1000, num_bootstrap - i)
    boot[i:i + m] = d[rng.integers(0, n, size=(m, n))].mean(1)
  if mean == 0.0 and sd == 0.0:
    p_boot = 1.0
  else:  # two-sided: how often the resampled mean difference lands on the other side of zero, (count+1)/(B+1)
    other_side = min(int((boot <= 0).sum()), int((boot >= 0).sum()))
    p_boot = float(min(1.0, 2 * (other_side + 1) / (num_bootstrap + 1)))
  lo, hi = np.percentile(boot, [2.5, 97.5])
  return {"users": n, "mean_diff": mean, "ci95_low": float(lo), "ci95_high": float(hi), "p_ttest": p_t,
          "p_bootstrap": p_boot}


def compare_rankings(ranks_a: dict[str, int], ranks_b: dict[str, int], metrics=("ndcg@10", "recall@10"),
                     num_bootstrap: int = 10_000, seed: int = 0) -> dict[str, dict[str, float]]:
  """Paired tests of two methods' per-user ranks ({user id: rank}), on the users both evaluated."""
  users = sorted(set(ranks_a) & set(ranks_b))
  if not users:
    raise ValueError("the two methods share no evaluated user")
  ra = np.asarray([ranks_a[u] for u in users])
  rb = np.asarray([ranks_b[u] for u in users])
  return {m: paired_tests(per_user_metric(ra, m), per_user_metric(rb, m), num_bootstrap, seed) for m in metrics}
