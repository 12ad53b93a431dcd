"""One fused ranking: per (user, item), a weighted sum of the signals' per-user standardised scores, the weights
chosen on the validation split only.

A signal is a score matrix [U, I] over the whole catalog (dense v_U . v_T, BM25 over the user's last item
texts, a popularity prior, ...); each user's row is standardised (mean 0, standard deviation 1 over the
catalog) so that weights compare signals of different scales. `choose_weights` sees only validation rows: it
is given their signals and targets and nothing else; `fused_scores` then applies the weights to the test
rows. All work is O(U * I * signals) per evaluated weight vector, vectorised.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from calrec_jax.eval.metrics import ranking_metrics

# the weights tried for each signal; the first signal's weight stays 1 (fused scores are scale-free)
WEIGHT_GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0)


def standardise(scores: np.ndarray) -> np.ndarray:
  """Per-row z-scores of [U, I] scores (float32); a constant row becomes 0."""
  s = np.asarray(scores, np.float32)
  mean = s.mean(axis=1, keepdims=True)
  std = s.std(axis=1, keepdims=True)
  return (s - mean) / np.where(std > 0, std, 1.0)


def fused_scores(signals: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
  """sum_name weights[name] * signals[name] ([U, I] each, already standardised) -> [U, I] float32."""
  names = [n for n, w in weights.items() if w]
  if not names:
    return np.zeros_like(next(iter(signals.values())), np.float32)
  out = weights[names[0]] * signals[names[0]]
  for n in names[1:]:
    out = out + weights[n] * signals[n]
  return out


def exclusion_mask(histories: Sequence[Sequence[int]], num_items: int) -> np.ndarray:
  """[U, I] bool: the items of each user's history (never recommended when eval.exclude_history)."""
  mask = np.zeros((len(histories), num_items), bool)
  for u, h in enumerate(histories):
    mask[u, list(h)] = True
  return mask


def target_ranks(scores: np.ndarray, targets: np.ndarray, excluded: np.ndarray | None, depth: int) -> np.ndarray:
  """1-based rank of each user's target among the non-excluded items, by score then lower item index (the
  order `top_items` lists them in); 0 when it is below `depth` or excluded. scores [U, I], targets [U]."""
  targets = np.asarray(targets, np.int64)
  u = np.arange(len(targets))
  own = scores[u, targets][:, None]                                                      # [U, 1]
  idx = np.arange(scores.shape[1])[None, :]
  ahead = (scores > own) | ((scores == own) & (idx < targets[:, None]))                  # [U, I]
  if excluded is not None:
    ahead &= ~excluded
  rank = ahead.sum(axis=1) + 1
  hidden = excluded[u, targets] if excluded is not None else np.zeros(len(targets), bool)
  return np.where((rank <= depth) & ~hidden, rank, 0)


def top_items(scores: np.ndarray, excluded: np.ndarray | None, k: int) -> np.ndarray:
  """[U, k] item ids by score (ties: lower index first), excluded items left out."""
  s = np.where(excluded, -np.inf, scores) if excluded is not None else scores
  return np.argsort(-s, axis=1, kind="stable")[:, :k]


@dataclasses.dataclass
class Choice:
  weights: dict[str, float]
  valid_metric: float       # the chosen weights' metric on the validation rows
  single: dict[str, float]  # each signal alone, on the validation rows
  users: int


def choose_weights(signals: dict[str, np.ndarray], targets: np.ndarray, excluded: np.ndarray | None,
                   metric: str = "ndcg@10", ks: Sequence[int] = (1, 5, 10, 20), rounds: int = 3,
                   grid: Sequence[float] = WEIGHT_GRID) -> Choice:
  """Weights maximising `metric` on VALIDATION rows (signals standardised, [U, I] each; targets [U]).

  The best single signal anchors at weight 1; coordinate ascent then tries every grid value for each other
  signal in turn, for `rounds` passes, keeping a change only when it is strictly better (deterministic)."""
  depth = max(ks)

  def score(weights):
    return ranking_metrics(target_ranks(fused_scores(signals, weights), targets, excluded, depth), ks)[metric]

  names = list(signals)
  single = {n: score({n: 1.0}) for n in names}
  anchor = max(names, key=lambda n: (single[n], -names.index(n)))
  weights = {n: (1.0 if n == anchor else 0.0) for n in names}
  best = single[anchor]
  for _ in range(rounds):
    changed = False
    for n in names:
      if n == anchor:
        continue
      for w in grid:
        if w == weights[n]:
          continue
        trial = score({**weights, n: w})
        if trial > best:
          best, weights, changed = trial, {**weights, n: w}, True
    if not changed:
      break
  return Choice(weights, best, single, len(targets))
