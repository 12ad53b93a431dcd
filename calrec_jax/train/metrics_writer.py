"""Training metrics: JSON lines, TensorBoard event files and a PNG of the curves."""
from __future__ import annotations

import json
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from tensorboardX.event_file_writer import EventsWriter  # noqa: E402
from tensorboardX.proto.event_pb2 import Event, SessionLog  # noqa: E402
from tensorboardX.proto.summary_pb2 import Summary  # noqa: E402

from calrec_jax.paths import write_atomically  # noqa: E402


class EventFile:
  """One TensorBoard event file, written synchronously: a row is on disk when `add` returns.

  tensorboardX's SummaryWriter queues events for a thread and its flush() does not wait for the queue, so a kill
  right after a checkpoint lost the scalars logged just before it. `purge_step=s` writes a SessionLog START at s:
  TensorBoard then drops every event of the earlier files at step >= s (what a killed run logged past the
  checkpoint the restart resumes from). The file name ends in the creation time in ns, so a restart within the
  same second never truncates the previous file and names still sort in creation order."""

  def __init__(self, logdir: str, purge_step: int | None = None):
    os.makedirs(logdir, exist_ok=True)
    self._writer = EventsWriter(os.path.join(logdir, "events"), f".{time.time_ns()}")
    if purge_step is not None:
      self._writer.write_event(Event(wall_time=time.time(), step=int(purge_step),
                                     session_log=SessionLog(status=SessionLog.START)))
    self._writer.flush()

  def add(self, step: int, scalars: dict[str, float]) -> None:
    values = [Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
    self._writer.write_event(Event(wall_time=time.time(), step=int(step), summary=Summary(value=values)))
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class MetricsWriter:
  """Writes on process 0 only; `write(step, {'train/loss': ..})` appends a row to metrics.jsonl and the same
  scalars to TensorBoard.

  metrics.jsonl is the record: a restart from the checkpoint at `resume_step` drops its rows past that step (a
  killed run logged them; the resumed run logs them again), purges TensorBoard from `resume_step` on and writes
  the kept rows of `resume_step` to it again, so every (tag, step) has one value in both, wherever the kill hit."""

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int = 0):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.rows_at_resume: list[dict] = []  # kept rows of resume_step
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self.rows_at_resume = [r for r in self._truncate_after(resume_step) if r["step"] == resume_step]
      self.tb = EventFile(os.path.join(workdir, "tensorboard"), purge_step=resume_step)
      for row in self.rows_at_resume:
        self.tb.add(resume_step, {k: v for k, v in row.items() if k != "step"})

  def _truncate_after(self, step: int) -> list[dict]:
    """Drop rows past the restored step and a partially written last line; returns the kept rows."""
    if not os.path.exists(self.path):
      return []
    kept = []
    with open(self.path, encoding="utf-8", errors="replace") as f:
      for line in f:
        try:
          row = json.loads(line)
        except json.JSONDecodeError:
          continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
          kept.append(row)
    write_atomically(self.path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept

  def logged_at_resume(self, prefix: str) -> dict[str, float] | None:
    """The metrics named `prefix...` that an earlier (killed) run logged at the resume step and that were kept
    (e.g. the final validation, logged after the last checkpoint, before a kill during the export); None when
    there are none."""
    found = {k: v for r in self.rows_at_resume for k, v in r.items() if k.startswith(prefix)}
    return found or None

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(row) + "\n")
    self.tb.add(step, metrics)

  def close(self) -> None:
    if self.enabled:
      self.tb.close()


def read_metrics(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_curves(metrics_path: str, out_png: str) -> None:
  """Panels of metrics against the step, grouped by scale: train losses, train accuracies, validation losses,
  validation accuracies and retrieval metrics (periodic validation reads as curves, one per metric)."""
  rows = read_metrics(metrics_path)
  groups = {"train losses": lambda k: k.startswith("train/loss"),
            "train accuracies": lambda k: k.startswith("train/acc"),
            "validation losses": lambda k: k.startswith("valid/loss"),
            "validation accuracies and retrieval": lambda k: k.startswith(("valid/acc", "valid/dense"))}
  fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 3.6))
  for ax, (title, pick) in zip(axes, groups.items()):
    keys = sorted({k for r in rows for k in r if pick(k)})
    for k in keys:
      pts = [(r["step"], r[k]) for r in rows if k in r]
      ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k.split("/", 1)[1],
              marker="o" if len(pts) < 30 else None, markersize=3)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole (one validation point reads 30, not 29.96)
    if keys:
      ax.legend(fontsize=7)
    else:
      ax.text(0.5, 0.5, "no rows yet", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.grid(alpha=0.3)
  last_step = max((r["step"] for r in rows), default=0)
  for ax in axes:  # one step axis for every panel: a single validation sits at its step of the run
    ax.set_xlim(0, max(last_step, 1) * 1.03)
  fig.tight_layout()
  fig.savefig(out_png, dpi=110)
  plt.close(fig)


def plot_time_to_quality(metrics_path: str, out_png: str, references: dict[str, float] | None = None) -> bool:
  """Validation NDCG@10 and Recall@10 of dense retrieval against training hours and (history -> next item)
  examples seen, with `references` ({label: validation NDCG@10}, e.g. SASRec's) as horizontal lines on the
  NDCG panels. Returns False (and writes nothing) when no validation row carries the time counters."""
  rows = read_metrics(metrics_path)
  prefix = next((p for p in ("valid/dense_", "valid/dense_sampled_")
                 if any("perf/train_seconds" in r and f"{p}ndcg_at_10" in r for r in rows)), None)
  if prefix is None:
    return False
  rows = [r for r in rows if "perf/train_seconds" in r and f"{prefix}ndcg_at_10" in r]
  sampled = prefix.endswith("sampled_")
  if sampled:
    references = {}  # whole-catalog references do not compare with sampled metrics
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for ax, (xkey, xlabel, scale) in zip(axes, [("perf/train_seconds", "training hours (incl. validation)", 3600.0),
                                              ("perf/examples_seen", "examples seen (thousands)", 1000.0)]):
    x = [r[xkey] / scale for r in rows]
    for key, label in ((f"{prefix}ndcg_at_10", "NDCG@10"), (f"{prefix}recall_at_10", "Recall@10")):
      ax.plot(x, [r.get(key, float("nan")) for r in rows], marker="o", markersize=3, label=f"CALRec dense {label}")
    for name, value in (references or {}).items():
      ax.axhline(value, linestyle="--", color="grey", linewidth=1)
      ax.text(ax.get_xlim()[0], value, f" {name} NDCG@10 {value:.4f}", va="bottom", fontsize=7, color="grey")
    ax.set_xlabel(xlabel)
    ax.set_title("validation, dense retrieval" + (" against sampled items (eval.valid_items)" if sampled else ""),
                 fontsize=10)
    ax.grid(alpha=0.3)
  handles, labels = axes[0].get_legend_handles_labels()  # below the panels: a legend inside one hides its lines
  fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
  fig.tight_layout(rect=(0, 0.07, 1, 1))
  fig.savefig(out_png, dpi=110)
  plt.close(fig)
  return True


def parse_references(text: str) -> dict[str, float]:
  """'SASRec=0.0874,BM25=0.07' -> {'SASRec': 0.0874, 'BM25': 0.07} (the key eval.reference_valid_ndcg)."""
  out = {}
  for part in (p.strip() for p in str(text).split(",") if p.strip()):
    name, sep, value = part.partition("=")
    try:
      out[name.strip()] = float(value)
    except ValueError:
      sep = ""
    if not sep or not name.strip():
      from calrec_jax.errors import ConfigError
      raise ConfigError(f"eval.reference_valid_ndcg={text!r}: expected label=value pairs, e.g. 'SASRec=0.0874'")
  return out
