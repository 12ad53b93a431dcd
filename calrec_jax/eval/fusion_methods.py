"""How a fused row turns its signals into one ranking, looked up by `eval.fusion_method`; both fit on the
validation split only and apply the result to other rows.

  weights   one weight per signal, coordinate ascent on the validation metric (eval/fusion.py)
  learned   a small network over the signals, their ranks and each user's confidence (eval/learned_fusion.py)

A fit returns a *choice*, a JSON-able dict that evaluations store (metrics.json's `fused_choice`), exports carry
(serving.json's `fusion`) and `apply` ranks with:
  {"method", "signals": [names, in order], "valid_users", "valid_<metric>" (the fit's own validation metric),
   "valid_<metric>_alone": {signal: metric alone}, "weights": {signal: weight} (weights) | "params" (learned)}
A choice stored before `method` existed holds weights only and reads as the weights method.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from calrec_jax.errors import DataError
from calrec_jax.eval import fusion, learned_fusion


@dataclasses.dataclass(frozen=True)
class FusionMethod:
  fit: Callable    # (signals, targets, excluded, history_lengths, metric, ks, seed, single) -> (own keys, metric)
  scores: Callable  # (choice, signals, history_lengths) -> [U, I]
  check: Callable   # (choice, where) -> None, or a DataError naming `where`
  label: str        # how a table names the row: "fused" or "learned fusion"


def _fit_weights(signals, targets, excluded, history_lengths, metric, ks, seed, single):
  c = fusion.choose_weights(signals, targets, excluded, metric, ks)
  return {"weights": c.weights}, c.valid_metric


def _check_weights(choice, where):
  w = choice.get("weights")
  if not isinstance(w, dict) or not w or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in w.values()):
    raise DataError("the fused choice's weights are missing or not finite numbers; evaluate the run again", where)


def _fit_learned(signals, targets, excluded, history_lengths, metric, ks, seed, single):
  best = max(signals, key=lambda n: (single[n], -list(signals).index(n)))  # as the weights method anchors
  start = {n: float(n == best) for n in signals}
  params = learned_fusion.bagged([
      learned_fusion.fit(signals, targets, excluded, history_lengths, [start[n] for n in signals], seed + i)
      for i in range(learned_fusion.BAG)])
  fitted = learned_fusion.scores(params, signals, list(signals), history_lengths)
  return {"params": learned_fusion.params_to_json(params), "start": start}, \
      _metric(fitted, targets, excluded, metric, ks)


def _check_learned(choice, where):
  if not isinstance(choice.get("signals"), list) or not choice["signals"]:
    raise DataError("the learned fusion's choice names no signals; evaluate the run again", where)
  learned_fusion.params_from_json(choice.get("params"), len(choice["signals"]), where)


METHODS: dict[str, FusionMethod] = {
    "weights": FusionMethod(
        _fit_weights, lambda choice, signals, h: fusion.fused_scores(signals, choice["weights"]), _check_weights,
        "fused"),
    "learned": FusionMethod(
        _fit_learned,
        lambda choice, signals, h: learned_fusion.scores(
            learned_fusion.params_from_json(choice["params"], len(choice["signals"]), "fused choice"), signals,
            choice["signals"], h),
        _check_learned, "learned fusion"),
}


def _metric(scores, targets, excluded, metric, ks) -> float:
  from calrec_jax.eval.metrics import ranking_metrics
  return ranking_metrics(fusion.target_ranks(scores, targets, excluded, max(ks)), ks)[metric]


def fit(method: str, signals: dict[str, np.ndarray], targets: Sequence[int], excluded: np.ndarray | None,
        history_lengths: Sequence[int], metric: str = "ndcg@10", ks: Sequence[int] = (1, 5, 10, 20), seed: int = 0
        ) -> dict:
  """The choice of `method` fitted on VALIDATION rows: signals {name: standardised [U, I]}, targets [U],
  excluded [U, I] bool or None, history_lengths [U] (items in each user's history)."""
  targets = np.asarray(targets, np.int64)
  history_lengths = np.asarray(history_lengths, np.float32)
  single = {n: _metric(signals[n], targets, excluded, metric, ks) for n in signals}
  own, valid_metric = METHODS[method].fit(signals, targets, excluded, history_lengths, metric, ks, seed, single)
  return {"method": method, "signals": list(signals), **own, "valid_users": int(len(targets)),
          f"valid_{metric}": float(valid_metric), f"valid_{metric}_alone": single}


def method_of(choice: dict) -> str:
  return str(choice.get("method", "weights"))


def signal_names(choice: dict) -> list[str]:
  """The signals a choice ranks with, in its order."""
  return list(choice.get("signals") or choice.get("weights") or [])


def check(choice, where: str) -> dict:
  """A stored choice, checked (known method, its fields well formed); a damaged one is a DataError naming `where`."""
  if not isinstance(choice, dict):
    raise DataError("the fused choice is not a mapping; evaluate the run again", where)
  method = method_of(choice)
  if method not in METHODS:
    raise DataError(f"unknown fusion method {method!r} (this version has {sorted(METHODS)}); evaluate the run "
                    "again with this version", where)
  METHODS[method].check(choice, where)
  return choice


def apply(choice: dict, signals: dict[str, np.ndarray], history_lengths: Sequence[int]) -> np.ndarray:
  """[U, I] fused scores of other rows (standardised signals, the choice's names) with a fitted choice."""
  return METHODS[method_of(choice)].scores(choice, signals, np.asarray(history_lengths, np.float32))


def describe(choice: dict, metric: str) -> str:
  """One line for a table's notes: how the choice was fitted and what it holds."""
  head = "%s (chosen on %d validation users, %s %.4f)" % (
      "fused weights" if method_of(choice) == "weights" else "learned fusion", choice["valid_users"], metric,
      choice[f"valid_{metric}"])
  if method_of(choice) == "weights":
    return head + ": " + ", ".join(f"{k}={v:g}" for k, v in choice["weights"].items())
  return head + f": signals {', '.join(choice['signals'])}, starting from the weights " + ", ".join(
      f"{k}={v:g}" for k, v in choice["start"].items())


def row_label(choice: dict) -> str:
  """'fused (dense + bm25_history + popularity)' or 'learned fusion (...)'."""
  return f"{METHODS[method_of(choice)].label} ({' + '.join(signal_names(choice))})"
