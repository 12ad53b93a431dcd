"""Full-ranking metrics from the 1-based rank of each user's held-out item (0: not in the top list)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def rank_of(target: int, ranked: Sequence[int]) -> int:
  for r, item in enumerate(ranked, 1):
    if item == target:
      return r
  return 0


def ranking_metrics(ranks: Sequence[int], ks: Sequence[int] = (1, 5, 10, 20)) -> dict[str, float]:
  """Recall@k (= hit rate, one held-out item), NDCG@k, and MRR over the top-max(ks) list."""
  r = np.asarray(ranks, np.float64)
  hit = r > 0
  out = {"users": float(len(r))}
  if not len(r):
    return out
  for k in ks:
    within = hit & (r <= k)
    out[f"recall@{k}"] = float(within.mean())
    if k > 1:
      out[f"ndcg@{k}"] = float(np.where(within, 1.0 / np.log2(np.where(hit, r, 1) + 1), 0.0).mean())
  kmax = max(ks)
  within = hit & (r <= kmax)
  out["mrr"] = float(np.where(within, 1.0 / np.where(hit, r, 1), 0.0).mean())
  return out


def markdown_table(rows: dict[str, dict[str, float]]) -> str:
  """| method | users | recall@1 | ... | for several result rows."""
  keys = [k for k in next(iter(rows.values())) if "@" in k or k == "mrr"]
  head = "| method | users | " + " | ".join(keys) + " |"
  sep = "|---|---:|" + "---:|" * len(keys)
  lines = [head, sep]
  for name, m in rows.items():
    lines.append(f"| {name} | {int(m.get('users', 0))} | " + " | ".join(f"{m.get(k, 0.0):.4f}" for k in keys) + " |")
  return "\n".join(lines)
