"""Run a comparison: every configured method on the same users, resumable, then the report."""
from __future__ import annotations

import logging
import os

from calrec_jax.compare import methods as methods_lib
from calrec_jax.compare.report import write_report
from calrec_jax.errors import ConfigError

log = logging.getLogger(__name__)


def reference_lines(results: dict) -> str:
  """'SASRec=<its best validation NDCG@10>' (and GRU4Rec's) from the baselines already run: the lines a CALRec
  variant's time_to_quality.png draws."""
  out = []
  for res in results.values():
    value = res.notes.get("best_valid_ndcg@10") if res.notes else None
    if value is not None:
      out.append(f"{next(iter(res.rows))}={float(value):.5f}")
  return ",".join(out)


def split_protocol(categories, cat: int, rows) -> str:
  """The sentence comparison.md adds for a cold-start split ('' for the usual one)."""
  data = categories[cat]
  if not data.new_items:
    return ""
  return (f"Cold-start split: {len(data.new_items)} of the {len(data.catalog)} items are new (never in training, "
          f"nor in the item bank or popularity counts); the {len(rows)} evaluated users are those whose held-out "
          "item is new. An ID model never trained a new item's embedding on a positive, so it ranks new items "
          "low; a text model scores them from their text.")


def run_comparison(cfg, workdir: str) -> dict[str, str]:
  """Train and evaluate `cfg.methods` into <workdir>/<method>/; a method whose result.json exists with the same
  settings is not run again (a crashed or extended comparison resumes). Returns the report's paths."""
  from calrec_jax.paths import require_writable_dir
  names = methods_lib.check_methods(cfg)
  require_writable_dir(workdir, "--workdir")
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    f.write(cfg.to_json_best_effort(indent=1))
  for name in names:  # every stored result checked before any method runs
    methods_lib.read_stored(os.path.join(workdir, name, "result.json"), name)
  data = methods_lib.evaluation_data(cfg.calrec)
  results = {}
  for i, name in enumerate(names, 1):
    folder = os.path.join(workdir, name)
    path = os.path.join(folder, "result.json")
    fingerprint = methods_lib.method_fingerprint(name, cfg)
    stored = methods_lib.stored_fingerprint(path, name)
    if stored is not None:
      if stored != fingerprint:
        raise ConfigError(f"{path} was computed with other settings than this config's {name!r}; delete {folder} "
                          "to run it again with the new settings, or use another --workdir")
      log.info("[%d/%d] %s: finished earlier (%s), not run again", i, len(names), name, path)
      results[name] = methods_lib.load_result(path, name)
      continue
    log.info("[%d/%d] %s: running in %s", i, len(names), name, folder)
    os.makedirs(folder, exist_ok=True)
    res = methods_lib.run_method(name, cfg, data, folder, cfg.progress, reference_lines(results), results)
    methods_lib.save_result(path, res, fingerprint)
    results[name] = res
    for label, m in res.rows.items():
      log.info("%s: recall@10 %.4f, ndcg@10 %.4f (%d users; train %.0fs, eval %.0fs)", label,
               m.get("recall@10", 0.0), m.get("ndcg@10", 0.0), m.get("users", 0), res.train_seconds,
               res.eval_seconds)
  paths = write_report(results, workdir, cfg.title, cfg.calrec.eval.exclude_history, cfg.significance.bootstrap,
                       split_protocol(*data))
  with open(paths["md"], encoding="utf-8") as f:
    print(f.read())
  print("wrote:\n" + "\n".join(f"  {p}" for p in paths.values()))
  return paths
