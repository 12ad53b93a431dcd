"""Training metrics: JSON lines, TensorBoard event files (tensorboardX) and a PNG of the curves."""
from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboardX import SummaryWriter  # noqa: E402


class MetricsWriter:
  """Writes on process 0 only; `write(step, {'train/loss': ..})`."""

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int = 0):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self._truncate_after(resume_step)
      self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def _truncate_after(self, step: int) -> None:
    """Drop rows past the restored step (a killed run logged them; the resumed run logs them again) and a
    partially written last line."""
    if not os.path.exists(self.path):
      return
    kept = []
    with open(self.path, encoding="utf-8", errors="replace") as f:
      for line in f:
        try:
          row = json.loads(line)
        except json.JSONDecodeError:
          continue
        if row.get("step", 0) <= step:
          kept.append(line if line.endswith("\n") else line + "\n")
    tmp = self.path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(kept)
    os.replace(tmp, self.path)

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(row) + "\n")
    for k, v in metrics.items():
      self.tb.add_scalar(k, float(v), int(step))
    self.tb.flush()

  def close(self) -> None:
    if self.enabled:
      self.tb.close()


def read_metrics(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_curves(metrics_path: str, out_png: str) -> None:
  """One panel per metric group (losses, accuracies, validation) against the step."""
  rows = read_metrics(metrics_path)
  groups = {"train losses": lambda k: k.startswith("train/loss"), "train accuracies": lambda k: k.startswith("train/acc"),
            "validation": lambda k: k.startswith("valid/")}
  fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.6))
  for ax, (title, pick) in zip(axes, groups.items()):
    keys = sorted({k for r in rows for k in r if pick(k)})
    for k in keys:
      pts = [(r["step"], r[k]) for r in rows if k in r]
      ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k.split("/", 1)[1], marker="." if len(pts) < 30 else None)
    ax.set_title(title)
    ax.set_xlabel("step")
    if keys:
      ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out_png, dpi=110)
  plt.close(fig)
