"""The methods of a comparison: what each one trains and how it is evaluated, on the same users and metrics.

Every method returns a MethodResult: result rows (metric dicts) and, per row, each evaluated user's 1-based
rank of the held-out item (0: not in the top list), which the paired significance tests read.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable

from calrec_jax.errors import ConfigError, DataError

log = logging.getLogger(__name__)



@dataclasses.dataclass
class MethodResult:
  kind: str                                   # 'baseline' or 'calrec'
  rows: dict[str, dict[str, float]]           # row label -> metrics
  ranks: dict[str, dict[str, int]]            # row label -> {user id: rank}
  train_seconds: float = 0.0
  eval_seconds: float = 0.0
  notes: dict = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------- config overrides
def parse_overrides(text: str) -> list[tuple[str, str]]:
  """'loss.w_tt=0; eval.retrieval=dense' -> [('loss.w_tt', '0'), ('eval.retrieval', 'dense')]."""
  out = []
  for part in str(text).split(";"):
    if not part.strip():
      continue
    if "=" not in part:
      raise ConfigError(f"override {part.strip()!r} is not 'section.key=value'")
    key, value = part.split("=", 1)
    out.append((key.strip(), value.strip()))
  return out


def _cast(old, value: str, key: str):
  if isinstance(old, bool):
    if value.lower() in ("true", "1", "yes"):
      return True
    if value.lower() in ("false", "0", "no"):
      return False
    raise ConfigError(f"override {key}={value!r}: expected true or false")
  try:
    return type(old)(value)
  except ValueError:
    raise ConfigError(f"override {key}={value!r}: expected a {type(old).__name__}") from None


def apply_overrides(config, text: str):
  """A copy of `config` with the overrides set; an unknown key or a bad value is a ConfigError naming it."""
  config = copy.deepcopy(config)
  for key, value in parse_overrides(text):
    node, parts = config, key.split(".")
    for p in parts[:-1]:
      if p not in node:
        raise ConfigError(f"override {key!r}: no section {p!r} in the CALRec config")
      node = node[p]
    if parts[-1] not in node:
      raise ConfigError(f"override {key!r}: no key {parts[-1]!r} in section {'.'.join(parts[:-1])!r}")
    with node.unlocked():
      node[parts[-1]] = _cast(node[parts[-1]], value, key)
  return config


def variant_config(config_spec: str, method: str):
  """The CALRec config of comparison variant `method` of the comparison config file `config_spec`
  ('configs/compare/x.py[:arg]'), its overrides applied (what the scripts under benchmarks/ run)."""
  import importlib.util
  path, _, arg = config_spec.partition(":")
  spec = importlib.util.spec_from_file_location("comparison_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config(arg)
  return apply_overrides(cfg.calrec, cfg.variants[method])


# ----------------------------------------------------------------------------- shared data
def evaluation_data(calrec_config):
  """(categories, eval category index, eval rows) shared by every method: the CALRec config's data and eval."""
  from calrec_jax.data import sources
  from calrec_jax.data.iterators import eval_rows
  from calrec_jax.eval.evaluate import eval_category_index
  cats = sources.load_categories(calrec_config.data)
  cat = eval_category_index(calrec_config, cats)
  ec = calrec_config.eval
  rows = eval_rows(cats[cat].sequences, ec.split, ec.max_users, calrec_config.seed, cats[cat].new_items)
  if not rows:
    from calrec_jax.errors import DataError
    raise DataError(f"no {ec.split} users in category {cats[cat].name!r}")
  return cats, cat, rows


def _ks(calrec_config) -> list[int]:
  from calrec_jax.data.sources import split_names
  return [int(k) for k in split_names(calrec_config.eval.ks)]


# ----------------------------------------------------------------------------- baselines
def _item_texts(calrec_config, data) -> list[str]:
  """Every catalog item's text as CALRec renders it (the same attributes and coverage rule)."""
  from calrec_jax.data.sources import split_names
  from calrec_jax.data.text import render_item, rendered_attributes
  attrs = rendered_attributes(data.catalog.attributes, tuple(split_names(calrec_config.data.attributes)),
                              calrec_config.data.min_attribute_coverage)
  return [render_item(a, attrs) for a in data.catalog.attributes]


def run_popularity(cfg, data, rows) -> MethodResult:
  from calrec_jax.eval.evaluate import evaluate_popularity
  t0 = time.time()
  metrics, records = evaluate_popularity(cfg.calrec, data, rows)
  label = "Popularity"
  return MethodResult("baseline", {label: metrics}, {label: {r["user"]: r["rank"] for r in records}},
                      eval_seconds=time.time() - t0)


def run_bm25_history(cfg, data, rows) -> MethodResult:
  """Text retrieval without learning: BM25 over item texts, the query the texts of the user's last items."""
  from calrec_jax.eval.bm25 import BM25Index
  from calrec_jax.eval.metrics import rank_of, ranking_metrics
  from calrec_jax.eval.signals import history_queries
  t0 = time.time()
  ec, ks = cfg.calrec.eval, _ks(cfg.calrec)
  texts = _item_texts(cfg.calrec, data)
  index = BM25Index.from_texts(texts, k1=ec.bm25_k1, b=ec.bm25_b, epsilon=ec.bm25_epsilon)
  n = cfg.bm25_history.num_items
  ranks = {}
  for user, hist, target in rows:
    seen = set(hist) if ec.exclude_history else set()
    ids, scores = index.top_k(history_queries(texts, [hist], n), max(ks) + len(seen))
    top = [int(i) for i, s in zip(ids[0], scores[0]) if s > 0 and int(i) not in seen][:max(ks)]
    ranks[data.user_ids[user]] = rank_of(target, top)
  label = f"BM25 on the last {n} history texts"
  return MethodResult("baseline", {label: ranking_metrics(list(ranks.values()), ks)}, {label: ranks},
                      eval_seconds=time.time() - t0)


def _fused_row(cfg, data, rows, label: str, signals, kind: str, train_seconds: float = 0.0, method: str = ""
               ) -> MethodResult:
  """One fused ranking of `rows` (test): `signals(rows)` -> {name: standardised [U, I]}, fitted (`method`, else
  calrec.eval.fusion_method: eval/fusion_methods.py) on the validation split only (its own users, the same
  count), then applied to the test rows."""
  from calrec_jax.data.iterators import eval_rows
  from calrec_jax.eval import fusion, fusion_methods
  from calrec_jax.eval.metrics import ranking_metrics
  t0 = time.time()
  c = cfg.calrec
  ec, ks = c.eval, _ks(c)
  n_items = len(data.catalog)
  valid_rows = eval_rows(data.sequences, "valid", ec.max_users, c.seed, data.new_items)

  def excluded(rs):
    return fusion.exclusion_mask([h for _, h, _ in rs], n_items) if ec.exclude_history else None
  choice = fusion_methods.fit(method or ec.get("fusion_method", "weights"), signals(valid_rows),
                              [t for _, _, t in valid_rows], excluded(valid_rows), [len(h) for _, h, _ in valid_rows],
                              ec.fusion_metric, ks, c.seed)
  scores = fusion_methods.apply(choice, signals(rows), [len(h) for _, h, _ in rows])
  ranks = fusion.target_ranks(scores, [t for _, _, t in rows], excluded(rows), max(ks)).tolist()
  return MethodResult(kind, {label: ranking_metrics(ranks, ks)},
                      {label: {data.user_ids[u]: r for (u, _, _), r in zip(rows, ranks)}},
                      train_seconds=train_seconds, eval_seconds=time.time() - t0, notes={"fused": choice})


def _model_free(cfg, data, names):
  """rows -> {name: standardised [U, I]} of the model-free signals `names` (eval/signals.py)."""
  from calrec_jax.eval import fusion
  from calrec_jax.eval.signals import model_free_signals
  texts = _item_texts(cfg.calrec, data)

  def signals(rs):
    raw = model_free_signals(names, texts, data.sequences, [h for _, h, _ in rs], cfg.calrec.eval)
    return {n: fusion.standardise(raw[n]) for n in names}
  return signals


def run_text_fused(cfg, data, rows) -> MethodResult:
  """Without a model: BM25 over the last history texts and popularity, fused with weights chosen on the
  validation split (the same fusion as CALRec's fused row, without its dense signal)."""
  label = f"BM25 on the last {cfg.calrec.eval.fusion_history_items} history texts + popularity, fused"
  from calrec_jax.eval.signals import MODEL_FREE_SIGNALS
  return _fused_row(cfg, data, rows, label, _model_free(cfg, data, MODEL_FREE_SIGNALS), "baseline")


def ensemble_members(cfg, name: str) -> list[str]:
  from calrec_jax.data.sources import split_names
  return split_names(cfg.ensembles[name])


def ensemble_fusion_method(cfg, name: str) -> str:
  """How an ensemble fuses its signals: ensemble_fusion.<name>, else calrec.eval.fusion_method."""
  own = (cfg.get("ensemble_fusion") or {}).get(name)
  return own or cfg.calrec.eval.get("fusion_method", "weights")


def member_workdir(cfg, member: str, comparison_dir: str) -> str:
  """Where a CALRec variant of this comparison holds its trained (stage 2) run."""
  c = apply_overrides(cfg.calrec, cfg.variants[member])
  folder = os.path.join(comparison_dir, member)
  return os.path.join(folder, "stage2") if c.pipeline.enabled else folder


def run_ensemble(name: str, cfg, data, rows, comparison_dir: str, finished: dict) -> MethodResult:
  """The dense scores of several CALRec variants of this comparison (trained earlier in it) fused with the
  model-free signals of `calrec.eval.fusion`, weights chosen on validation (eval/ensemble.py); its training
  budget is the members' together."""
  from calrec_jax.data.sources import split_names
  from calrec_jax.eval.ensemble import member_signals
  from calrec_jax.eval.recommender import Recommender
  from calrec_jax.eval.signals import MODEL_FREE_SIGNALS
  members = ensemble_members(cfg, name)
  recommenders = {m: Recommender.load(member_workdir(cfg, m, comparison_dir)) for m in members}
  free = [n for n in split_names(cfg.calrec.eval.fusion) if n in MODEL_FREE_SIGNALS]
  model_free = _model_free(cfg, data, free)

  def signals(rs):
    histories = [h for _, h, _ in rs]
    return {**member_signals(recommenders, data.catalog.item_ids, histories), **model_free(rs)}
  label = cfg.labels.get(name, name)
  res = _fused_row(cfg, data, rows, label, signals, "calrec", sum(finished[m].train_seconds for m in members),
                   ensemble_fusion_method(cfg, name))
  res.notes["members"] = members
  return res


def run_id_model(name: str, cfg, data, rows, workdir: str, progress: bool) -> MethodResult:
  """SASRec / GRU4Rec: train with early stopping, then rank the evaluation users' items."""
  from calrec_jax.baselines.id_sequences import id_examples
  from calrec_jax.baselines.train_id import IdModelTrainer
  from calrec_jax.eval.metrics import ranking_metrics
  from calrec_jax.model.sharding import mesh_from_config
  trainer = IdModelTrainer(name, cfg[name], data, cfg.calrec.eval, mesh_from_config(cfg.calrec.mesh),
                           seed=cfg.calrec.seed)
  res = trainer.train(workdir, progress)
  t0 = time.time()
  users = [u for u, _, _ in rows]
  ex = id_examples(data.sequences, cfg.calrec.eval.split, cfg[name].max_len, users)
  ks = _ks(cfg.calrec)
  r = trainer.ranks(res.params, ex, cfg.calrec.eval.split, max(ks))
  label = {"sasrec": "SASRec", "gru4rec": "GRU4Rec"}[name]
  return MethodResult("baseline", {label: ranking_metrics(r.tolist(), ks)},
                      {label: {data.user_ids[u]: int(x) for u, x in zip(users, r)}},
                      train_seconds=res.train_seconds, eval_seconds=time.time() - t0,
                      notes={"epochs": res.epochs, "best_epoch": res.best_epoch,
                             "best_valid_ndcg@10": res.best_valid, "max_epochs": cfg[name].max_epochs,
                             "patience": cfg[name].patience})


# ----------------------------------------------------------------------------- CALRec and the zero-shot LLM
def _rows_from_eval(out_dir: str, label: str) -> tuple[dict, dict]:
  """Rows of a CALRec evaluation folder (metrics.json + rankings_*.jsonl)."""
  with open(os.path.join(out_dir, "metrics.json"), encoding="utf-8") as f:
    metrics = json.load(f)
  rows, ranks = {}, {}
  from calrec_jax.eval.fusion_methods import row_label
  names = {"bm25": "generation + BM25", "bm25_constrained": "constrained generation + BM25", "dense": "dense",
           "beam": "constrained beams", "fused": row_label(metrics.get("fused_choice") or {})}
  for m in [m for m in names if m in metrics]:
    name = f"{label} · {names[m]}"
    rows[name] = {k: v for k, v in metrics[m].items() if isinstance(v, (int, float))}
    with open(os.path.join(out_dir, f"rankings_{m}.jsonl"), encoding="utf-8") as f:
      ranks[name] = {r["user"]: r["rank"] for r in map(json.loads, f)}
  return rows, ranks


def recorded_train_seconds(workdirs: list[str], fallback: float) -> float:
  """Training seconds the runs themselves recorded (perf/train_seconds of their last row: kept across resumes,
  so a comparison that resumed or re-used a finished run reports the whole training); `fallback` when a run
  recorded none."""
  from calrec_jax.train.metrics_writer import read_metrics
  total = 0.0
  for w in workdirs:
    path = os.path.join(w, "metrics.jsonl")
    seconds = [r["perf/train_seconds"] for r in (read_metrics(path) if os.path.exists(path) else [])
               if "perf/train_seconds" in r]
    if not seconds:
      return fallback
    total += seconds[-1]
  return total


def run_calrec(name: str, overrides: str, cfg, workdir: str, progress: bool) -> MethodResult:
  """Train the variant (stage 2 only, or stage 1 -> stage 2 when `pipeline.enabled`), then evaluate it."""
  from calrec_jax.runner import evaluate_workdir, train_pipeline, train_run
  c = apply_overrides(cfg.calrec, overrides)
  with c.unlocked():
    c.train.progress = progress
  t0 = time.time()
  if c.pipeline.enabled:
    stage2 = os.path.join(workdir, "stage2")
    s2 = train_pipeline(c, workdir)
  else:
    stage2 = workdir
    train_run(c, workdir)
    s2 = c
  train_s = recorded_train_seconds([os.path.join(workdir, "stage1"), stage2] if c.pipeline.enabled else [stage2],
                                   time.time() - t0)
  t0 = time.time()
  out_dir = os.path.join(workdir, "eval")
  evaluate_workdir(s2, stage2, out_dir=out_dir)
  rows, ranks = _rows_from_eval(out_dir, cfg.labels.get(name, name))
  notes = {"overrides": overrides}
  with open(os.path.join(out_dir, "metrics.json"), encoding="utf-8") as f:
    fused = json.load(f).get("fused_choice")
  if fused:
    notes["fused"] = fused
  return MethodResult("calrec", rows, ranks, train_seconds=train_s, eval_seconds=time.time() - t0, notes=notes)


def run_zero_shot(cfg, workdir: str) -> MethodResult:
  """The pretrained LLM without finetuning: generation -> BM25, and dense v_U . v_T from its hidden states."""
  from calrec_jax.eval.evaluate import run_evaluation
  from calrec_jax.model.run_parts import build
  c = apply_overrides(cfg.calrec, cfg.zero_shot.overrides)
  if not c.model.pretrained:
    raise ConfigError("zero_shot needs model.pretrained in zero_shot.overrides (e.g. model.pretrained=gemma3-270m-gguf)")
  if c.model.projection_dim:
    raise ConfigError("zero_shot: model.projection_dim must be 0 (an untrained projection head is random)")
  t0 = time.time()
  parts = build(c, workdir)
  out_dir = os.path.join(workdir, "eval")
  run_evaluation(c, parts, {"decoder": parts.pretrained_params}, out_dir, params_source=c.model.pretrained)
  rows, ranks = _rows_from_eval(out_dir, f"Zero-shot {c.model.pretrained}")
  return MethodResult("baseline", rows, ranks, eval_seconds=time.time() - t0)


@dataclasses.dataclass(frozen=True)
class Baseline:
  """A comparison method that is not a CALRec variant: how it runs, and which config it depends on (beyond the
  shared data, eval and seed: a finished result is re-used only while both are unchanged)."""
  run: Callable[..., MethodResult]  # (cfg, (categories, eval category, rows), workdir, progress) -> MethodResult
  settings: Callable[[Any], dict]


BASELINE_METHODS: dict[str, Baseline] = {
    "popularity": Baseline(lambda cfg, d, w, p: run_popularity(cfg, d[0][d[1]], d[2]), lambda cfg: {}),
    "bm25_history": Baseline(lambda cfg, d, w, p: run_bm25_history(cfg, d[0][d[1]], d[2]),
                             lambda cfg: cfg.bm25_history.to_dict()),
    "text_fused": Baseline(lambda cfg, d, w, p: run_text_fused(cfg, d[0][d[1]], d[2]), lambda cfg: {}),
    "sasrec": Baseline(lambda cfg, d, w, p: run_id_model("sasrec", cfg, d[0][d[1]], d[2], w, p),
                       lambda cfg: cfg.sasrec.to_dict()),
    "gru4rec": Baseline(lambda cfg, d, w, p: run_id_model("gru4rec", cfg, d[0][d[1]], d[2], w, p),
                        lambda cfg: cfg.gru4rec.to_dict()),
    "zero_shot": Baseline(lambda cfg, d, w, p: run_zero_shot(cfg, w),
                          lambda cfg: {"overrides": cfg.zero_shot.overrides, "model": cfg.calrec.model.to_dict()}),
}
BASELINES = tuple(BASELINE_METHODS)


# keys added after results were stored, per config section: left out of a fingerprint while at the value that
# means "off" (with the keys that only matter then), so results stored before they existed still match
_LATER_KEYS = {"data": {"cold_start_items": (0.0, ("cold_start_items", "cold_start_seed")),
                        "user_tokens": (0, ("user_tokens",))},
               "eval": {"fusion_method": ("weights", ("fusion_method",))}}


def _fingerprinted(section: str, values: dict) -> dict:
  """A config section as a fingerprint holds it (its _LATER_KEYS left out while off)."""
  for key, (off, dropped) in _LATER_KEYS[section].items():
    if values.get(key, off) == off:
      values = {k: v for k, v in values.items() if k not in dropped}
  return values


def method_fingerprint(name: str, cfg) -> str:
  """What a finished method's result depends on: a resumed comparison re-uses it only when this is unchanged."""
  shared = {"data": _fingerprinted("data", cfg.calrec.data.to_dict()),
            "eval": _fingerprinted("eval", cfg.calrec.eval.to_dict()), "seed": cfg.calrec.seed}
  if name in BASELINE_METHODS:
    own = BASELINE_METHODS[name].settings(cfg)
  elif name in _ensembles(cfg):
    own = {"members": {m: method_fingerprint(m, cfg) for m in ensemble_members(cfg, name)},
           "fusion": cfg.calrec.eval.fusion}
    if ensemble_fusion_method(cfg, name) != "weights":  # results stored before fusion methods existed still match
      own["fusion_method"] = ensemble_fusion_method(cfg, name)
  else:
    own = apply_overrides(cfg.calrec, cfg.variants[name]).to_dict()
    own["data"], own["eval"] = _fingerprinted("data", own["data"]), _fingerprinted("eval", own["eval"])
  return json.dumps({"method": name, "shared": shared, "own": own}, sort_keys=True, default=str)


def run_method(name: str, cfg, data_bundle, workdir: str, progress: bool, references: str = "",
               finished: dict | None = None) -> MethodResult:
  """Train and evaluate one method in `workdir` (<comparison>/<name>); `references` ('SASRec=0.087'):
  validation lines of a CALRec variant's time-to-quality plot; `finished`: the results of the methods before it
  (an ensemble's members)."""
  if name in BASELINE_METHODS:
    return BASELINE_METHODS[name].run(cfg, data_bundle, workdir, progress)
  if name in _ensembles(cfg):
    cats, cat, rows = data_bundle
    return run_ensemble(name, cfg, cats[cat], rows, os.path.dirname(os.path.abspath(workdir)), finished or {})
  overrides = cfg.variants[name] + (f"; eval.reference_valid_ndcg={references}" if references else "")
  return run_calrec(name, overrides, cfg, workdir, progress)


def check_methods(cfg) -> list[str]:
  """The configured method names, each known; CALRec variants' overrides parsed and validated up front."""
  from calrec_jax.config_check import validate_config
  from calrec_jax.data.sources import split_names
  names = split_names(cfg.methods)
  if not names:
    raise ConfigError("methods is empty; name at least one method")
  for i, n in enumerate(names):
    if n in BASELINES:
      continue
    if n in _ensembles(cfg):
      members = ensemble_members(cfg, n)
      if len(members) < 2:
        raise ConfigError(f"ensembles.{n}={cfg.ensembles[n]!r}: name at least two CALRec variants")
      for m in members:
        if m not in cfg.variants or m not in names[:i]:
          raise ConfigError(f"ensembles.{n}: member {m!r} is not a CALRec variant listed before {n!r} in methods "
                            f"({cfg.methods!r}); list the variants it combines first")
      continue
    if n not in cfg.variants:
      raise ConfigError(f"methods: unknown method {n!r}; choose from {list(BASELINES)} or the CALRec variants "
                        f"{sorted(cfg.variants.keys())}")
    if any(key == "seed" for key, _ in parse_overrides(cfg.variants[n])):
      raise ConfigError(f"variants.{n} overrides seed, which also draws the evaluated users: its rows would be "
                        "measured on other users than the rest of the table; set --config.calrec.seed=N to run the "
                        "whole comparison with another seed")
    validate_config(apply_overrides(cfg.calrec, cfg.variants[n]))
  from calrec_jax.eval.fusion_methods import METHODS
  for n, method in (cfg.get("ensemble_fusion") or {}).items():
    if n not in _ensembles(cfg):
      raise ConfigError(f"ensemble_fusion.{n}: no ensemble {n!r} in ensembles ({sorted(_ensembles(cfg))})")
    if method not in METHODS:
      raise ConfigError(f"ensemble_fusion.{n}={method!r}; choose one of {sorted(METHODS)}")
  if "zero_shot" in names:
    validate_config(apply_overrides(cfg.calrec, cfg.zero_shot.overrides))
  validate_config(cfg.calrec)
  return names


def _ensembles(cfg) -> dict:
  """The configured ensembles (name -> members), {} for a config written before they existed."""
  return cfg.get("ensembles") or {}


def _number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def read_stored(path: str, name: str) -> dict | None:
  """A finished method's stored result.json, checked field by field; None when there is none. A damaged one is
  one line naming the method, the file and what to do (never a traceback, never a report built from it)."""
  if not os.path.exists(path):
    return None

  def bad(why: str):
    return DataError(f"{path}: the stored result of {name!r} is {why}; delete {os.path.dirname(path)} to run "
                     f"{name} again")
  try:
    with open(path, encoding="utf-8") as f:
      d = json.load(f)
  except (OSError, ValueError) as e:
    raise bad(f"unreadable ({str(e)[:120]})") from None
  if not isinstance(d, dict):
    raise bad("not a JSON object")
  for key, ok in (("kind", lambda v: v in ("baseline", "calrec")), ("fingerprint", lambda v: isinstance(v, str)),
                  ("rows", lambda v: isinstance(v, dict) and all(
                      isinstance(m, dict) and all(_number(x) for x in m.values()) for m in v.values())),
                  ("ranks", lambda v: isinstance(v, dict) and all(
                      isinstance(r, dict) and all(isinstance(x, int) for x in r.values()) for r in v.values())),
                  ("train_seconds", _number), ("eval_seconds", _number), ("notes", lambda v: isinstance(v, dict))):
    if key not in d:
      raise bad(f"missing the field {key!r}")
    if not ok(d[key]):
      raise bad(f"holding a wrong value in {key!r}")
  if set(d["rows"]) != set(d["ranks"]):
    raise bad("inconsistent (its rows and per-user ranks name different rows)")
  return d


def load_result(path: str, name: str = "") -> MethodResult:
  d = read_stored(path, name or os.path.basename(os.path.dirname(path)))
  if d is None:
    raise DataError(f"{path}: no stored result; run the comparison to compute it")
  d.pop("fingerprint")
  return MethodResult(**d)


def save_result(path: str, result: MethodResult, fingerprint: str) -> None:
  """Atomic: a killed comparison never leaves a half-written result that a resume would trust."""
  from calrec_jax.paths import write_atomically
  write_atomically(path, json.dumps({**dataclasses.asdict(result), "fingerprint": fingerprint}, indent=1))


def stored_fingerprint(path: str, name: str = "") -> str | None:
  d = read_stored(path, name or os.path.basename(os.path.dirname(path)))
  return None if d is None else d["fingerprint"]
