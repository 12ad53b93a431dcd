"""Where each row of a comparison wins: its metrics on groups of the same users, split by how often training saw
the held-out item (the long tail against the head) and by how long the user's history is.

  python -m calrec_jax.compare.breakdown --config=configs/compare/scientific.py:epochs \
      --workdir=workdirs/compare_scientific_epochs

Reads every finished method's result.json in --workdir (per-user ranks) and the comparison's evaluation users;
each factor's users are cut into `--groups` groups of about equal size at the factor's quantiles (a value is
never split across two groups). Writes breakdown.json, breakdown.md and breakdown.png in --workdir; nothing is
trained or ranked again.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Sequence

import numpy as np
from absl import flags
from ml_collections import config_flags

log = logging.getLogger(__name__)
FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "The comparison config the workdir was run with "
                                "(configs/compare/*.py[:arg]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder of the comparison (its method sub-folders hold result.json).")
flags.DEFINE_integer("groups", 3, "Groups per factor (cut at its quantiles over the evaluated users).")
flags.mark_flags_as_required(["config", "workdir"])

METRICS = ("recall@10", "ndcg@10")
FACTORS = {"target_count": "times training saw the held-out item", "history_length": "items in the user's history"}


@dataclasses.dataclass
class Group:
  low: int      # the factor's smallest value in the group
  high: int     # its largest
  users: list   # user ids


def quantile_groups(values: dict[str, int], groups: int) -> list[Group]:
  """Users cut into at most `groups` groups of about equal size by their integer `values` (user id -> value),
  at the values' quantiles; users with equal values always share a group. Groups in increasing value order."""
  if groups < 1:
    raise ValueError(f"groups must be at least 1, got {groups}")
  v = np.asarray(list(values.values()), np.int64)
  edges = np.unique(np.quantile(v, np.linspace(0, 1, groups + 1)[1:-1], method="higher")) if len(v) else []
  cut = np.searchsorted(edges, v, side="left")   # group g holds edges[g-1] < value <= edges[g]
  out = []
  users = np.asarray(list(values.keys()), dtype=object)
  for g in range(len(edges) + 1):
    members = cut == g
    if members.any():
      out.append(Group(int(v[members].min()), int(v[members].max()), users[members].tolist()))
  return out


def group_metrics(ranks: dict[str, int], groups: Sequence[Group], metrics: Sequence[str] = METRICS
                  ) -> list[dict[str, float]]:
  """A row's metrics on each group's users (`ranks`: user id -> 1-based rank, 0 when outside the top list)."""
  from calrec_jax.eval.metrics import ranking_metrics
  ks = sorted({int(m.split("@")[1]) for m in metrics if "@" in m})
  out = []
  for g in groups:
    missing = [u for u in g.users if u not in ranks]
    if missing:
      raise KeyError(missing[0])
    m = ranking_metrics([ranks[u] for u in g.users], ks)
    out.append({k: m[k] for k in metrics})
  return out


def factor_values(data, rows) -> dict[str, dict[str, int]]:
  """Per factor, user id -> value for the evaluation `rows` [(user, history, target)] of category `data`."""
  from calrec_jax.data.records import item_counts
  counts = item_counts(data.sequences, len(data.catalog))
  return {"target_count": {data.user_ids[u]: int(counts[t]) for u, _, t in rows},
          "history_length": {data.user_ids[u]: len(h) for u, h, _ in rows}}


def breakdown(results: dict, values: dict[str, dict[str, int]], groups: int) -> dict:
  """{'factors': {factor: {'groups': [{low, high, users}], 'rows': {label: [metrics per group]}}}} for every row
  of `results` (method name -> MethodResult)."""
  out = {}
  for factor, per_user in values.items():
    cut = quantile_groups(per_user, groups)
    rows = {}
    for method, res in results.items():
      for label, ranks in res.ranks.items():
        try:
          rows[label] = group_metrics(ranks, cut)
        except KeyError as e:
          from calrec_jax.errors import DataError
          raise DataError(f"{method}/result.json has no rank for the evaluation user {e.args[0]!r}: it was run on "
                          "other users than this config's; run the comparison again with this config") from None
    out[factor] = {"description": FACTORS[factor],
                   "groups": [{"low": g.low, "high": g.high, "users": len(g.users)} for g in cut], "rows": rows}
  return {"factors": out}


def _span(g: dict) -> str:
  return f"{g['low']}" if g["low"] == g["high"] else f"{g['low']}-{g['high']}"


def markdown(doc: dict, title: str) -> str:
  lines = [f"# {title}: where each row wins", ""]
  for factor, f in doc["factors"].items():
    heads = [f"{_span(g)} ({g['users']} users)" for g in f["groups"]]
    for metric in METRICS:
      lines += [f"## {metric} by {f['description']}", "", "| row | " + " | ".join(heads) + " |",
                "|---|" + "---:|" * len(heads)]
      for label, per_group in f["rows"].items():
        lines.append(f"| {label} | " + " | ".join(f"{m[metric]:.4f}" for m in per_group) + " |")
      lines.append("")
  return "\n".join(lines)


def chart(doc: dict, path: str, title: str, metric: str = "ndcg@10") -> None:
  """One panel per factor: grouped bars of `metric` per group, one bar per row."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  factors = list(doc["factors"].items())
  labels = list(factors[0][1]["rows"])
  fig, axes = plt.subplots(1, len(factors), figsize=(6.5 * len(factors), 4.8), squeeze=False)
  width = 0.8 / max(len(labels), 1)
  for ax, (factor, f) in zip(axes[0], factors):
    x = np.arange(len(f["groups"]))
    for j, label in enumerate(labels):
      ax.bar(x + (j - (len(labels) - 1) / 2) * width, [m[metric] for m in f["rows"][label]], width, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{_span(g)}\n({g['users']} users)" for g in f["groups"]], fontsize=8)
    ax.set_xlabel(f["description"])
    ax.set_ylabel(metric)
    ax.grid(axis="y", alpha=0.3)
  handles, names = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, names, loc="lower center", ncol=2, fontsize=7, frameon=False)
  fig.suptitle(title, fontsize=10)
  rows_of_legend = (len(labels) + 1) // 2
  fig.tight_layout(rect=(0, min(0.45, 0.045 * rows_of_legend + 0.02), 1, 0.96))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def finished_results(cfg, workdir: str) -> dict:
  """method name -> MethodResult for every method of the config with a result.json in `workdir`."""
  from calrec_jax.compare.methods import check_methods, load_result
  from calrec_jax.errors import DataError
  results = {}
  for name in check_methods(cfg):
    path = os.path.join(workdir, name, "result.json")
    if os.path.exists(path):
      results[name] = load_result(path, name)
    else:
      log.warning("%s: not finished (no %s); left out of the breakdown", name, path)
  if not results:
    raise DataError(f"{workdir}: no finished method of this config (no <method>/result.json); run "
                    "python -m calrec_jax.compare with the same --config and --workdir first")
  return results


def write_breakdown(cfg, workdir: str, groups: int = 3) -> list[str]:
  """breakdown.json, .md and .png in `workdir`; returns their paths."""
  import json
  from calrec_jax.compare.methods import evaluation_data
  from calrec_jax.paths import write_atomically
  results = finished_results(cfg, workdir)
  cats, cat, rows = evaluation_data(cfg.calrec)
  doc = {"title": cfg.title, "users": len(rows), **breakdown(results, factor_values(cats[cat], rows), groups)}
  paths = [os.path.join(workdir, f"breakdown.{k}") for k in ("json", "md", "png")]
  write_atomically(paths[0], json.dumps(doc, indent=1))
  write_atomically(paths[1], markdown(doc, cfg.title))
  chart(doc, paths[2] + ".tmp.png", cfg.title)
  os.replace(paths[2] + ".tmp.png", paths[2])
  return paths


def main(argv) -> None:
  del argv
  from calrec_jax.compare.methods import check_methods
  from calrec_jax.paths import require_writable_dir
  from calrec_jax.runner import run_configured

  def action():
    if not os.path.isdir(FLAGS.workdir):
      from calrec_jax.errors import DataError
      raise DataError(f"{FLAGS.workdir}: no such comparison folder; run python -m calrec_jax.compare first")
    require_writable_dir(FLAGS.workdir, "--workdir")
    if FLAGS.groups < 1:
      from calrec_jax.errors import ConfigError
      raise ConfigError(f"--groups must be at least 1, got {FLAGS.groups}")
    paths = write_breakdown(FLAGS.config, FLAGS.workdir, FLAGS.groups)
    with open(paths[1], encoding="utf-8") as f:
      print(f.read())
    print("wrote:\n" + "\n".join(f"  {p}" for p in paths), flush=True)
  run_configured(FLAGS.config, action, validate=check_methods, multihost=FLAGS.config.calrec)


def run() -> None:
  from calrec_jax.cli import run_absl
  run_absl(main)


if __name__ == "__main__":
  run()
