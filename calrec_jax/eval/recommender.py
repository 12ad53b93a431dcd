"""Recommendations from a trained run for any histories: the Python API behind `python -m calrec_jax.recommend`.

  from calrec_jax.eval.recommender import Recommender
  rec = Recommender.load("workdirs/stage2")
  rec.recommend([["B00004Z6N6", "Title: Nitrile gloves ..."]], k=10, ranker="dense")
  # -> [{"items": [{"id": ..., "text": ..., "score": ...}, ...], "ranker": "dense", "unknown": [], "ambiguous": []}]

A history names items by catalog id or by text (an item's rendered text, or its title; case and surrounding
spaces ignored); a name that matches no item, or several, is reported on that user's result and left out.
Rankers: `dense` (v_U . v_T), `beam` (catalog-constrained beams), `bm25` (BM25 over the texts of the last
items, no model), `fused` (the fused ranking an evaluation fitted on validation, weights or learned:
`<workdir>/eval/metrics.json`'s `fused_choice` or the export's serving.json, or weights given). History items are
never recommended unless `exclude_history=False`.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import logging
import os
from typing import Iterable, Sequence

import numpy as np

from calrec_jax.errors import CalrecError, ConfigError, DataError
from calrec_jax.paths import write_atomically

RANKERS = ("dense", "beam", "bm25", "fused")
log = logging.getLogger(__name__)

RECOMMEND_BEAMS = 20  # beams of the `beam` ranker for a run whose evaluation used none (eval.beams=0)


@dataclasses.dataclass
class Recommender:
  config: object          # the run's config (ml_collections.ConfigDict)
  parts: object           # model.run_parts.RunParts
  params: dict
  category: int
  fusion: dict | None = None  # the fused ranking's choice (eval/fusion_methods.py), checked
  _item_emb: np.ndarray | None = None
  _names: dict | None = None

  workdir: str = ""
  popularity: np.ndarray | None = None  # training interactions per item (an export's); None: from the data
  table_ids: np.ndarray | None = None   # each catalog item's row in the learned item identities (-1: none);
  #                                       None: the run's own global ids (model/item_ids.py)

  @classmethod
  def load(cls, workdir: str, config=None, fusion_weights: dict | None = None, catalog: str | None = None
           ) -> "Recommender":
    """A trained workdir (its export, or newest checkpoint), with the config it recorded (config.json) unless
    `config` is given, or a run's export folder on its own (data/serving.py); the catalog is its evaluation
    category's, or `catalog` (a catalog JSONL file or a prepared category folder), which may hold items training
    never saw (see `with_catalog`)."""
    import ml_collections
    from calrec_jax.data.serving import is_export
    from calrec_jax.eval.evaluate import eval_category_index
    from calrec_jax.train.checkpoint import params_from_workdir
    from calrec_jax.model.run_parts import build, load_run_config
    if not os.path.isdir(workdir):
      raise CalrecError(f"{workdir}: no such workdir; give the folder of a trained run")
    if is_export(workdir):
      rec = cls.from_export(workdir, fusion_weights)
      return rec.with_catalog(catalog) if catalog else rec
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
    fusion = _given_weights(fusion_weights) or _evaluated_fusion(workdir)
    rec = cls(config, parts, params, eval_category_index(config, parts.categories), fusion, workdir=workdir)
    return rec.with_catalog(catalog) if catalog else rec

  @classmethod
  def from_export(cls, folder: str, fusion_weights: dict | None = None) -> "Recommender":
    """A run's export folder alone (params, tokenizer, model config and the serving files): no data folder or
    training workdir is read. Item embeddings are cached in <folder>/item_embeddings/ when it is writable."""
    import ml_collections
    from calrec_jax.data.serving import read_serving_files
    from calrec_jax.model.params_io import load_params
    from calrec_jax.model.run_parts import build
    from calrec_jax.eval.fusion_methods import check
    recorded, category, attributes, counts, stored, item_id_row = read_serving_files(folder)
    stored = check(stored, os.path.join(folder, "serving.json")) if stored is not None else None
    config = ml_collections.ConfigDict(recorded)
    with config.unlocked():  # the export's own tokenizer and weights, not the run's sources
      config.model.pretrained, config.ckpt.init_from, config.tokenizer.path = "", "", ""
      config.data.attributes, config.data.min_attribute_coverage = ",".join(attributes), 0.0
    parts = build(config, folder, [category])
    params = load_params(os.path.join(folder, "params"))
    return cls(config, parts, params, 0, _given_weights(fusion_weights) or stored, workdir=folder,
               popularity=counts, table_ids=item_id_row + np.arange(len(category.catalog)))

  def with_catalog(self, path: str) -> "Recommender":
    """This model over another catalog (`{"id": ..., "title": ..., ...}` per line, RecBole's `<name>.item`
    feature file, or a prepared category's folder): items training never saw are encoded by the item tower, indexed by BM25 and the beams' trie, and
    count as new for popularity (training counts are kept for the items it knows, by id). Item texts render the
    same attributes as in training. Item embeddings are cached in <workdir>/item_embeddings/ by a fingerprint of
    the params and the rendered texts, so a second call does not encode them again."""
    from calrec_jax.data.examples import ExampleEncoder
    from calrec_jax.data.prepared_folder import load_category
    from calrec_jax.data.records import CategoryData
    if os.path.isdir(path):
      catalog = load_category(path).catalog
    elif path.endswith(".item"):  # RecBole's item feature file
      from calrec_jax.data.recbole import load_item_file
      catalog = load_item_file(path)
    else:
      from calrec_jax.data.records import read_catalog
      catalog = read_catalog(path)
    trained = self.parts.categories[self.category]
    new_index = {item_id: i for i, item_id in enumerate(catalog.item_ids)}
    sequences = [[new_index[trained.catalog.item_ids[i]] for i in seq if trained.catalog.item_ids[i] in new_index]
                 for seq in trained.sequences]  # training interactions of the items both catalogs hold
    popularity = None
    if self.popularity is not None:  # an export's counts, carried over by item id (a new item: 0)
      popularity = np.zeros(len(catalog))
      for i, item_id in enumerate(trained.catalog.item_ids):
        if item_id in new_index:
          popularity[new_index[item_id]] = self.popularity[i]
    data = CategoryData(trained.name, catalog, list(trained.user_ids), sequences, {})
    spec = dataclasses.replace(self.parts.encoder.spec, attributes=self.parts.encoder.attributes[self.category],
                               min_attribute_coverage=0.0)
    try:
      encoder = ExampleEncoder(self.parts.tokenizer, [data], spec)
    except DataError as e:  # e.g. no item with a text: name the catalog given
      raise DataError(f"--catalog={path}: {e}") from None
    parts = dataclasses.replace(self.parts, categories=[data], encoder=encoder)
    trained_rows = dict(zip(trained.catalog.item_ids, self._table_ids()))  # item id -> its row in the identities
    new = sum(1 for item_id in catalog.item_ids if item_id not in trained_rows)
    log.info("catalog %s: %d items, %d of them not in training", path, len(catalog), new)
    table_ids = np.asarray([trained_rows.get(item_id, -1) for item_id in catalog.item_ids], np.int64)  # new: -1
    return dataclasses.replace(self, parts=parts, category=0, _item_emb=None, _names=None, popularity=popularity,
                               table_ids=table_ids)

  def _table_ids(self) -> np.ndarray:
    """Each catalog item's row in the learned item identities (model/item_ids.py); -1: none (a new item)."""
    if self.table_ids is not None:
      return self.table_ids
    return self.parts.encoder.global_item_ids(self.category)

  def item_embeddings(self) -> np.ndarray:
    """v_T of every catalog item [I, E], from the cache when this model already encoded these texts."""
    from calrec_jax.eval import evaluate as ev
    if self._item_emb is not None:
      return self._item_emb
    texts = ev.item_texts(self.parts, self.category)
    path = None
    if self.workdir:
      digest = hashlib.sha256()
      export = os.path.join(self.workdir, "export", "params")
      export = export if os.path.exists(export) else os.path.join(self.workdir, "params")  # an export folder
      stamp = os.path.getmtime(export) if os.path.exists(export) else 0.0
      digest.update(json.dumps([os.path.abspath(self.workdir), stamp, texts,
                                self._table_ids().tolist()]).encode("utf-8"))
      path = os.path.join(self.workdir, "item_embeddings", digest.hexdigest()[:20] + ".npy")
      if os.path.exists(path):
        try:
          emb = np.load(path)
          if emb.shape[0] == len(texts):
            self._item_emb = emb
            return emb
        except (OSError, ValueError):
          log.warning("%s is unreadable; encoding the items again", path)
    emb = ev.item_embeddings(self.parts, self.params, self.category, table_ids=self._table_ids())
    if path:
      try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, emb)
        write_atomically(path, buf.getvalue())
      except OSError as e:
        log.warning("item embeddings not cached (%s)", e)
    self._item_emb = emb
    return emb

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
    from calrec_jax.eval import fusion_methods
    from calrec_jax.eval.fusion import standardise
    from calrec_jax.eval.signals import model_free_signals
    c = self._ranking_config()
    rows = [(0, list(h), h[-1]) for h in histories]
    n_items = len(self.parts.categories[self.category].catalog)

    def dense():
      return ev.user_embeddings(c, self.parts, self.params, rows, self.category) @ self.item_embeddings().T

    def beam():
      items, scores = ev.beam_rankings(c, self.parts, self.params, rows, self.category, progress=False)
      out = np.full((len(rows), n_items), -np.inf, np.float32)
      for u, (its, sc) in enumerate(zip(items, scores)):
        ok = its >= 0
        out[u, its[ok]] = sc[ok]
      return out

    def model_free(name):
      return model_free_signals([name], ev.item_texts(self.parts, self.category),
                                self.parts.categories[self.category].sequences, histories, c.eval,
                                self.popularity)[name]
    if ranker == "dense":
      return dense()
    if ranker == "beam":
      return beam()
    if ranker == "bm25":
      return model_free("bm25_history")
    if not self.fusion:
      raise ConfigError("ranker 'fused' needs a fused ranking fitted on validation: evaluate the run with "
                        "--config.eval.fusion=dense,bm25_history,popularity first (it is read from "
                        "<workdir>/eval/metrics.json), or pass fusion weights")
    signals = {}
    for name in fusion_methods.signal_names(self.fusion):
      if name == "dense":
        signals[name] = standardise(dense())
      elif name == "beam":
        items, scores = ev.beam_rankings(c, self.parts, self.params, rows, self.category, progress=False)
        signals[name] = standardise(ev.beam_signal(items, scores, n_items))
      elif name == "generation":  # sampled generations + BM25, as the evaluation ranked them
        _, records = ev.evaluate_bm25(c, self.parts, self.params, rows, self.category, progress=False)
        signals[name] = standardise(ev.generation_signal(records, n_items))
      else:
        signals[name] = standardise(model_free(name))
    return fusion_methods.apply(self.fusion, signals, [len(h) for h in histories])

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
    """The run's config, with configs/base.py's eval defaults for keys an older run did not record, and
    RECOMMEND_BEAMS beams where the run's evaluation used none."""
    from configs.base import get_config
    c = copy.deepcopy(self.config)
    defaults = get_config().eval
    with c.unlocked():
      for key, value in defaults.items():
        if key not in c.eval:
          c.eval[key] = value
      if int(c.eval.beams) < 1:
        c.eval.beams = RECOMMEND_BEAMS
    return c


def _key(name: str) -> str:
  return " ".join(name.split()).casefold()


def _given_weights(weights: dict | None) -> dict | None:
  """Fusion weights given by the caller ({signal: weight}) as a choice of the weights method."""
  from calrec_jax.eval.fusion_methods import check
  if weights is None:
    return None
  return check({"method": "weights", "weights": {str(n): float(w) for n, w in weights.items()}}, "fusion_weights")


def _evaluated_fusion(workdir: str) -> dict | None:
  """The fused row's choice of the workdir's evaluation (<workdir>/eval/metrics.json), if it made one; a damaged
  one is a DataError naming the file."""
  from calrec_jax.eval.fusion_methods import check
  path = os.path.join(workdir, "eval", "metrics.json")
  try:
    with open(path, encoding="utf-8") as f:
      choice = json.load(f).get("fused_choice")
  except (OSError, ValueError, AttributeError):
    return None
  return check(choice, path) if choice else None
