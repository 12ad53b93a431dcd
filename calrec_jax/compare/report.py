"""The comparison's outputs: comparison.json, comparison.md (table, relative change, significance) and a PNG."""
from __future__ import annotations

import json
import os

from calrec_jax.compare.methods import MethodResult
from calrec_jax.compare.significance import compare_rankings

COLUMNS = ("recall@1", "recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr")


def all_rows(results: dict[str, MethodResult]) -> list[tuple[str, str, str, dict]]:
  """(method, kind, row label, metrics) in method order."""
  return [(m, r.kind, label, metrics) for m, r in results.items() for label, metrics in r.rows.items()]


def best_baseline(results: dict[str, MethodResult], metric: str = "ndcg@10") -> tuple[str, str] | None:
  """(method, row label) of the baseline row with the highest `metric`."""
  rows = [(m, label, metrics.get(metric, 0.0)) for m, kind, label, metrics in all_rows(results) if kind == "baseline"]
  if not rows:
    return None
  m, label, _ = max(rows, key=lambda x: x[2])
  return m, label


def relative_changes(results: dict[str, MethodResult]) -> dict[str, dict[str, float]]:
  """Each CALRec row's relative change against the best baseline value of every metric (as the paper reports)."""
  base = [metrics for _, kind, _, metrics in all_rows(results) if kind == "baseline"]
  if not base:
    return {}
  best = {k: max(b.get(k, 0.0) for b in base) for k in COLUMNS}
  out = {}
  for _, kind, label, metrics in all_rows(results):
    if kind == "calrec":
      out[label] = {k: (metrics[k] - best[k]) / best[k] if best[k] else float("nan") for k in COLUMNS if k in metrics}
  return out


def significance(results: dict[str, MethodResult], metrics=("ndcg@10", "recall@10"), num_bootstrap: int = 10_000
                 ) -> dict[str, dict]:
  """Paired tests of every CALRec row against the best baseline row (by NDCG@10), on their common users."""
  best = best_baseline(results)
  if best is None:
    return {}
  ref = results[best[0]].ranks[best[1]]
  out = {}
  for m, kind, label, _ in all_rows(results):
    if kind == "calrec":
      out[label] = {"against": best[1], **compare_rankings(results[m].ranks[label], ref, metrics, num_bootstrap)}
  return out


def _fmt_rel(x: float) -> str:
  return "n/a" if x != x else f"{100 * x:+.1f}%"


def markdown(results: dict[str, MethodResult], title: str, sig: dict, exclude_history: bool,
             protocol: str = "") -> str:
  lines = [f"# {title}", "",
           f"Full ranking over the whole catalog, leave-one-out test item; history items "
           f"{'excluded from' if exclude_history else 'kept in'} every ranking." + (f" {protocol}" if protocol else ""),
           "",
           "| method | users | " + " | ".join(COLUMNS) + " | train s | eval s |",
           "|---|---:|" + "---:|" * len(COLUMNS) + "---:|---:|"]
  for m, kind, label, metrics in all_rows(results):
    r = results[m]
    name = f"**{label}**" if kind == "calrec" else label
    lines.append(f"| {name} | {int(metrics.get('users', 0))} | "
                 + " | ".join(f"{metrics.get(k, 0.0):.4f}" for k in COLUMNS)
                 + f" | {r.train_seconds:.0f} | {r.eval_seconds:.0f} |")
  for m, r in results.items():
    if r.notes and "best_epoch" in r.notes:
      n = r.notes
      capped = n.get("max_epochs") is not None and n["epochs"] >= n["max_epochs"]
      lines += ["", f"{next(iter(r.rows))} trained {n['epochs']} epochs and kept epoch {n['best_epoch']} (best "
                f"validation NDCG@10 {n['best_valid_ndcg@10']:.4f}); "
                + ("**stopped by max_epochs before early stopping: it may be under-trained**" if capped else
                   f"early stopping after {n.get('patience', '?')} epochs without improvement")]
  for m, r in results.items():
    fused = r.notes.get("fused") if r.notes else None
    if fused and "weights" in fused:
      lines += ["", f"Fused weights of {m} (chosen on {fused['valid_users']} validation users; the test split is "
                "never read while choosing): " + ", ".join(f"{k} {v:g}" for k, v in fused["weights"].items())]
    elif fused:
      lines += ["", f"Learned fusion of {m} (eval/learned_fusion.py; fitted on {fused['valid_users']} validation "
                "users, the test split never read while fitting) over " + ", ".join(fused["signals"])
                + ", starting from the weights " + ", ".join(f"{k} {v:g}" for k, v in fused["start"].items())]
  rel = relative_changes(results)
  if rel:
    lines += ["", "Relative change of each CALRec row against the best baseline value of each metric:", "",
              "| CALRec row | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for label, d in rel.items():
      lines.append(f"| {label} | " + " | ".join(_fmt_rel(d.get(k, float('nan'))) for k in COLUMNS) + " |")
  if sig:
    lines += ["", "Paired significance over users against the best baseline (by NDCG@10): mean per-user "
              "difference, bootstrap 95% interval, two-sided p-values (paired t-test / paired bootstrap):", "",
              "| CALRec row | against | metric | users | mean diff | 95% interval | p (t-test) | p (bootstrap) |",
              "|---|---|---|---:|---:|---|---:|---:|"]
    for label, d in sig.items():
      for metric, t in d.items():
        if metric == "against":
          continue
        lines.append(f"| {label} | {d['against']} | {metric} | {t['users']} | {t['mean_diff']:+.4f} | "
                     f"[{t['ci95_low']:+.4f}, {t['ci95_high']:+.4f}] | {t['p_ttest']:.3g} | {t['p_bootstrap']:.3g} |")
  return "\n".join(lines) + "\n"


LABEL_WIDTH = 48   # characters per line of a row label in the chart
TITLE_WIDTH = 80   # characters per line of the chart's title (it spans the axes, right of the labels)


def bar_chart(results: dict[str, MethodResult], path: str, title: str) -> None:
  """Horizontal grouped bars of Recall@1, Recall@10 and NDCG@10 per row; CALRec rows in bold. Long row labels and
  titles are wrapped (LABEL_WIDTH, TITLE_WIDTH characters) so that none is cut off at the figure's edge."""
  import textwrap
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  rows = all_rows(results)
  metrics = ("recall@1", "recall@10", "ndcg@10")
  colours = {"recall@1": "#4C72B0", "recall@10": "#55A868", "ndcg@10": "#C44E52"}
  y = np.arange(len(rows))
  h = 0.8 / len(metrics)
  labels = [textwrap.fill(r[2], LABEL_WIDTH) for r in rows]
  title = textwrap.fill(title, TITLE_WIDTH)
  row_height = max(0.55, 0.17 * max(label.count("\n") + 1 for label in labels) + 0.15)
  fig, ax = plt.subplots(figsize=(11, row_height * len(rows) + 1.4 + 0.2 * title.count("\n")))
  for j, m in enumerate(metrics):
    vals = [r[3].get(m, 0.0) for r in rows]
    bars = ax.barh(y + (j - 1) * h, vals, h, label=m, color=colours[m])
    for b, v in zip(bars, vals):
      ax.text(b.get_width(), b.get_y() + b.get_height() / 2, f" {v:.3f}", va="center", fontsize=7)
  ax.set_yticks(y)
  ax.set_yticklabels(labels, fontsize=8)
  for t, r in zip(ax.get_yticklabels(), rows):
    t.set_fontweight("bold" if r[1] == "calrec" else "normal")
  ax.invert_yaxis()
  ax.set_xlabel("metric value (full ranking)")
  ax.set_title(title, fontsize=10)
  top = max([r[3].get(m, 0.0) for r in rows for m in metrics] + [1e-6])
  ax.set_xlim(0, top * 1.18)  # room for the value labels right of the longest bar
  handles, labels = ax.get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=len(metrics), fontsize=8, frameon=False)  # below the
  #                                                                  axis: it never covers a bar or its label
  ax.grid(axis="x", alpha=0.3)
  fig.tight_layout(rect=(0, 0.45 / fig.get_figheight(), 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_report(results: dict[str, MethodResult], workdir: str, title: str, exclude_history: bool,
                 num_bootstrap: int = 10_000, protocol: str = "") -> dict[str, str]:
  """comparison.json, comparison.md and comparison.png in `workdir` (`protocol`: a sentence on the split when it
  is not the usual one); returns their paths."""
  sig = significance(results, num_bootstrap=num_bootstrap)
  paths = {k: os.path.join(workdir, f"comparison.{k}") for k in ("json", "md", "png")}
  doc = {"title": title, "exclude_history": exclude_history, "protocol": protocol,
         "methods": {m: {"kind": r.kind, "rows": r.rows, "train_seconds": r.train_seconds,
                         "eval_seconds": r.eval_seconds, "notes": r.notes} for m, r in results.items()},
         "best_baseline": best_baseline(results), "relative_change": relative_changes(results), "significance": sig}
  from calrec_jax.paths import write_atomically
  md = markdown(results, title, sig, exclude_history, protocol)  # everything built before anything is written
  write_atomically(paths["json"], json.dumps(doc, indent=1))
  write_atomically(paths["md"], md)
  bar_chart(results, paths["png"] + ".tmp.png", title)
  os.replace(paths["png"] + ".tmp.png", paths["png"])
  return paths
