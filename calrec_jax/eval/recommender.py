"""Recommendations from a trained run for any histories: the Python API behind `python -m calrec_jax.recommend`.

  from calrec_jax.eval.recommender import Recommender
  rec = Recommender.load("workdirs/stage2")
  rec.recommend([["B00004Z6N6", "Title: Nitrile gloves ..."]], k=10, ranker="dense")
  # -> [{"items": [{"id": ..., "text": ..., "score": ...}, ...], "ranker": "dense", "unknown": [], "ambiguous": []}]

A history names items by catalog id or by text (an item's rendered text, or its title; case and surrounding
spaces ignored); a name that matches no item, or several, is reported on that user's result and left out.
Rankers: `dense` (v_U . v_T), `beam` (catalog-constrained beams), `bm25` (BM25 over the texts of the last
items, no model), `fused` (the weights an evaluation chose on validation: `<workdir>/eval/metrics.json`'s
`fused_choice`, or given). History items are never recommended unless `exclude_history=False`.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from typing import Iterable, Sequence

import numpy as np

from calrec_jax.errors import CalrecError, ConfigError

RANKERS = ("dense", "beam", "bm25", "fused")


@dataclasses.dataclass
class Recommender:
  config: object          # the run's config (ml_collections.ConfigDict)
  parts: object           # train.setup.RunParts
  params: dict
  category: int
  fusion_weights: dict | None = None
  _item_emb: np.ndarray | None = None
  _names: dict | None = None

  @classmethod
  def load(cls, workdir: str, config=None, fusion_weights: dict | None = None) -> "Recommender":
    """A trained workdir (its export, or newest checkpoint), with the config it recorded (config.json) unless
    `config` is given; the catalog is its evaluation category's."""
    import ml_collections
    from calrec_jax.eval.evaluate import eval_category_index
    from calrec_jax.train.checkpoint import params_from_workdir
    from calrec_jax.train.setup import build, load_run_config
    if not os.path.isdir(workdir):
      raise CalrecError(f"{workdir}: no such workdir; give the folder of a trained run")
    if config is None:
      recorded = load_run_config(workdir)
      if not recorded:
        raise CalrecError(f"{workdir}/config.json is missing or unreadable; pass the run's config "
                          "(--config=... on the command line)")
      config = ml_collections.ConfigDict(recorded)
    params = params_from_workdir(workdir)
    parts = build(config, workdir)
    if "lora" in params:
      raise CalrecError(f"{workdir}: holds LoRA adapters but no export/ (a finished run writes one); let the run "
                        "finish, or evaluate a checkpoint with python -m calrec_jax.evaluate --step=N")
    if fusion_weights is None:
      fusion_weights = _evaluated_fusion_weights(workdir)
    return cls(config, parts, params, eval_category_index(config, parts.categories), fusion_weights)

  # ------------------------------------------------------------------------------------------- naming items
  def resolve(self, names: Sequence[str]) -> tuple[list[int], list[str], list[str]]:
    """(item indices, names that match no item, names that match several) of one history, in order."""
    if self._names is None:
      catalog = self.parts.categories[self.category].catalog
      index: dict[str, set[int]] = {}
      for i, item_id in enumerate(catalog.item_ids):
        index.setdefault(_key(item_id), set()).add(i)
      for i in range(len(catalog)):
        for text in {self.parts.encoder.item_text(self.category, i), catalog.attributes[i].get("title", "")}:
          if text:
            index.setdefault(_key(text), set()).add(i)
      self._names = index
    items, unknown, ambiguous = [], [], []
    for name in names:
      hits = self._names.get(_key(str(name)), set())
      if len(hits) == 1:
        items.append(next(iter(hits)))
      elif hits:
        ambiguous.append(str(name))
      else:
        unknown.append(str(name))
    return items, unknown, ambiguous

  # ------------------------------------------------------------------------------------------- ranking
  def scores(self, histories: Sequence[Sequence[int]], ranker: str) -> np.ndarray:
    """[U, I] scores of every catalog item for each (non-empty) history of item indices."""
    from calrec_jax.eval import evaluate as ev
    from calrec_jax.eval.fusion import fused_scores, standardise
    from calrec_jax.eval.signals import model_free_signals
    c = self._ranking_config()
    rows = [(0, list(h), h[-1]) for h in histories]
    n_items = len(self.parts.categories[self.category].catalog)

    def dense():
      if self._item_emb is None:
        self._item_emb = ev.item_embeddings(self.parts, self.params, self.category)
      return ev.user_embeddings(c, self.parts, self.params, rows, self.category) @ self._item_emb.T

    def beam():
      items, scores = ev.beam_rankings(c, self.parts, self.params, rows, self.category, progress=False)
      out = np.full((len(rows), n_items), -np.inf, np.float32)
      for u, (its, sc) in enumerate(zip(items, scores)):
        ok = its >= 0
        out[u, its[ok]] = sc[ok]
      return out

    def model_free(name):
      return model_free_signals([name], ev.item_texts(self.parts, self.category),
                                self.parts.categories[self.category].sequences, histories, c.eval)[name]
    if ranker == "dense":
      return dense()
    if ranker == "beam":
      return beam()
    if ranker == "bm25":
      return model_free("bm25_history")
    weights = self.fusion_weights
    if not weights:
      raise ConfigError("ranker 'fused' needs fusion weights chosen on validation: evaluate the run with "
                        "--config.eval.fusion=dense,bm25_history,popularity first (they are read from "
                        "<workdir>/eval/metrics.json), or pass fusion weights")
    signals = {}
    for name in weights:
      if name == "dense":
        signals[name] = standardise(dense())
      elif name == "beam":
        items, scores = ev.beam_rankings(c, self.parts, self.params, rows, self.category, progress=False)
        signals[name] = standardise(ev.beam_signal(items, scores, n_items))
      else:
        signals[name] = standardise(model_free(name))
    return fused_scores(signals, weights)

  def recommend(self, histories: Iterable[Sequence[str]], k: int = 10, ranker: str = "dense",
                exclude_history: bool = True) -> list[dict]:
    """For each history (item ids or texts), the top `k` items as {'id', 'text', 'score'}, best first."""
    if ranker not in RANKERS:
      raise ConfigError(f"ranker={ranker!r}; choose one of {RANKERS}")
    if k < 1:
      raise ConfigError(f"k={k} must be >= 1")
    resolved = [self.resolve(h) for h in histories]
    known = [i for i, (items, _, _) in enumerate(resolved) if items]
    out = [{"items": [], "ranker": ranker, "unknown": u, "ambiguous": a} for _, u, a in resolved]
    if not known:
      return out
    scores = self.scores([resolved[i][0] for i in known], ranker)
    catalog = self.parts.categories[self.category].catalog
    for row, i in enumerate(known):
      s = scores[row].astype(np.float64)
      if exclude_history:
        s[resolved[i][0]] = -np.inf
      top = [int(j) for j in np.argsort(-s, kind="stable")[:k] if np.isfinite(s[j])]
      out[i]["items"] = [{"id": catalog.item_ids[j], "text": self.parts.encoder.item_text(self.category, j),
                          "score": float(s[j])} for j in top]
    return out

  def _ranking_config(self):
    c = copy.deepcopy(self.config)
    defaults = {"beams": 20, "beam_length_penalty": 0.0, "sub_vocabulary": True, "fusion_history_items": 3,
                "bm25_k1": 1.5, "bm25_b": 0.75, "bm25_epsilon": 0.25, "batch_size": 16}
    with c.unlocked():
      for key, value in defaults.items():
        if key not in c.eval:
          c.eval[key] = value
      c.eval.beams = max(int(c.eval.beams), 1)
    return c


def _key(name: str) -> str:
  return " ".join(name.split()).casefold()


def _evaluated_fusion_weights(workdir: str) -> dict | None:
  """The fused row's weights of the workdir's evaluation (<workdir>/eval/metrics.json), if it made one."""
  path = os.path.join(workdir, "eval", "metrics.json")
  try:
    with open(path, encoding="utf-8") as f:
      choice = json.load(f).get("fused_choice") or {}
  except (OSError, ValueError, AttributeError):
    return None
  weights = choice.get("weights")
  return {str(n): float(w) for n, w in weights.items()} if isinstance(weights, dict) else None
