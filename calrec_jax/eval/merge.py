"""Quasi-round-robin merge of the ranked lists of N generations into one top-K list (calrec-method.md §5)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def order_generations(texts: Sequence[str], best_scores: Sequence[float]) -> list[int]:
  """Indices of distinct generations: most frequent first, then best BM25 score, then first occurrence."""
  first, count, best = {}, {}, {}
  for i, (t, s) in enumerate(zip(texts, best_scores)):
    if t not in first:
      first[t], count[t], best[t] = i, 0, s
    count[t] += 1
    best[t] = max(best[t], s)
  distinct = sorted(first, key=lambda t: (-count[t], -best[t], first[t]))
  return [first[t] for t in distinct]


def quasi_round_robin(ranked: Sequence[Sequence[int]], order: Sequence[int], k: int,
                      exclude: set[int] | frozenset = frozenset()) -> list[int]:
  """Rank 1 of each list in `order`, then rank 2 of each, ...; skip taken or excluded items; stop at k."""
  out, taken = [], set(exclude)
  depth = max((len(ranked[i]) for i in order), default=0)
  for r in range(depth):
    for i in order:
      if r < len(ranked[i]):
        item = int(ranked[i][r])
        if item not in taken:
          taken.add(item)
          out.append(item)
          if len(out) == k:
            return out
  return out


def merge_generations(texts: Sequence[str], ranked: np.ndarray, scores: np.ndarray, k: int,
                      exclude: set[int] | frozenset = frozenset()) -> list[int]:
  """texts: N generations; ranked/scores: [N, depth] BM25 results of each.

  Empty generations, and documents a generation shares no term with (score 0), are not retrieved.
  """
  hits = [[int(d) for d, s in zip(r, sc) if s > 0] for r, sc in zip(ranked, scores)]
  keep = [i for i, t in enumerate(texts) if t.strip() and hits[i]]
  if not keep:
    return []
  sub = order_generations([texts[i] for i in keep], [float(scores[i][0]) for i in keep])
  return quasi_round_robin(hits, [keep[j] for j in sub], k, exclude)
