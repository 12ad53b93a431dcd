"""Quality against training steps of one CALRec method of a comparison: its kept checkpoints evaluated on the
comparison's users, next to the untuned model (step 0, the `zero_shot` row) and the best baseline.

  python -m calrec_jax.compare.curve --config=configs/compare/scientific.py:llm \
      --workdir=workdirs/compare_scientific_llm --method=calrec_pretrained_lora

Each checkpoint step N is evaluated into <workdir>/<method>/eval_step<N> (kept: a rerun evaluates only the
steps without results); the final step is the method's own evaluation. Writes steps_curve.json, .md and .png
in <workdir>/<method>.
"""
from __future__ import annotations

import json
import logging
import os

from absl import flags
from ml_collections import config_flags

log = logging.getLogger(__name__)
FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "The comparison config the workdir was run with "
                                "(configs/compare/*.py[:arg]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder of the comparison.")
flags.DEFINE_string("method", None, "The CALRec method (a key of config.variants) whose checkpoints to evaluate.")
flags.DEFINE_list("steps", [], "Checkpoint steps to evaluate (default: every kept one).")
flags.mark_flags_as_required(["config", "workdir", "method"])

PATHS = {"bm25": "generation + BM25", "dense": "dense"}
METRICS = ("recall@1", "recall@10", "ndcg@10", "mrr")


def checkpoint_steps(method_dir: str) -> list[int]:
  """Steps of the checkpoints kept in <method_dir>/checkpoints (not the damaged or unfinished ones)."""
  ckpt = os.path.join(method_dir, "checkpoints")
  if not os.path.isdir(ckpt):
    return []
  return sorted(int(d) for d in os.listdir(ckpt) if d.isdigit() and os.path.isdir(os.path.join(ckpt, d)))


def curve_points(cfg, workdir: str, method: str, steps: list[int]) -> list[dict]:
  """[{'step', 'bm25': metrics, 'dense': metrics}, ...]: step 0 from zero_shot (when the comparison has it),
  each step in `steps` evaluated (or read back), the final step from the method's own evaluation."""
  from calrec_jax.compare.methods import apply_overrides
  from calrec_jax.runner import evaluate_workdir
  method_dir = os.path.join(workdir, method)
  config = apply_overrides(cfg.calrec, cfg.variants[method])
  with config.unlocked():
    config.eval.constrained = False  # the curve follows free generation and dense retrieval
  final = config.train.num_steps
  points = []
  zero = os.path.join(workdir, "zero_shot", "eval", "metrics.json")
  if os.path.exists(zero):
    points.append({"step": 0, **_read(zero)})
  for step in sorted(set(steps) - {final}):
    out = os.path.join(method_dir, f"eval_step{step}")
    if not os.path.exists(os.path.join(out, "metrics.json")):
      log.info("evaluating %s at step %d (%s)", method, step, out)
      evaluate_workdir(config, method_dir, step=step, out_dir=out, announce=False)
    points.append({"step": step, **_read(os.path.join(out, "metrics.json"))})
  own = os.path.join(method_dir, "eval", "metrics.json")
  if os.path.exists(own):
    points.append({"step": final, **_read(own)})
  return points


def _read(path: str) -> dict:
  with open(path, encoding="utf-8") as f:
    m = json.load(f)
  return {p: m[p] for p in PATHS if p in m}


def best_baseline_row(workdir: str) -> tuple[str, dict] | None:
  """(label, metrics) of the comparison's best baseline row by NDCG@10, as the report picks it; zero-shot is
  left out (it is the curve's step 0)."""
  from calrec_jax.compare.methods import load_result
  from calrec_jax.compare.report import best_baseline
  results = {name: load_result(os.path.join(workdir, name, "result.json")) for name in sorted(os.listdir(workdir))
             if name != "zero_shot" and os.path.exists(os.path.join(workdir, name, "result.json"))}
  best = best_baseline(results)
  return None if best is None else (best[1], results[best[0]].rows[best[1]])


def write_curve(points: list[dict], baseline, out_dir: str, title: str) -> list[str]:
  """steps_curve.json / .md / .png; returns their paths."""
  paths = [os.path.join(out_dir, f"steps_curve.{ext}") for ext in ("json", "md", "png")]
  with open(paths[0], "w", encoding="utf-8") as f:
    json.dump({"points": points, "best_baseline": baseline}, f, indent=1)
  lines = [f"# {title}", "", "| step | path | " + " | ".join(METRICS) + " |", "|---:|---|" + "---:|" * len(METRICS)]
  for p in points:
    for path, label in PATHS.items():
      if path in p:
        lines.append(f"| {p['step']} | {label} | " + " | ".join(f"{p[path][m]:.4f}" for m in METRICS) + " |")
  if baseline:
    lines.append(f"| - | {baseline[0]} (best baseline) | " + " | ".join(f"{baseline[1][m]:.4f}" for m in METRICS)
                 + " |")
  with open(paths[1], "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for ax, metric in zip(axes, ("recall@10", "ndcg@10")):
    for path, label in PATHS.items():
      pts = [(p["step"], p[path][metric]) for p in points if path in p]
      if pts:
        ax.plot(*zip(*pts), marker="o", label=label)
    if baseline:
      ax.axhline(baseline[1][metric], color="gray", linestyle="--", label=baseline[0])
    ax.set_xlabel("training step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(paths[2], dpi=110)
  plt.close(fig)
  return paths


def main(argv) -> None:
  del argv
  from calrec_jax.errors import ConfigError
  from calrec_jax.runner import run_configured

  def action():
    cfg, method = FLAGS.config, FLAGS.method
    if method not in cfg.variants:
      raise ConfigError(f"--method={method!r} is not a CALRec variant of this config; choose from "
                        f"{sorted(cfg.variants.keys())}")
    method_dir = os.path.join(FLAGS.workdir, method)
    steps = [int(s) for s in FLAGS.steps] or checkpoint_steps(method_dir)
    if not steps:
      raise ConfigError(f"{method_dir}: no checkpoints to evaluate; run the comparison first")
    points = curve_points(cfg, FLAGS.workdir, method, steps)
    label = cfg.labels.get(method, method)
    paths = write_curve(points, best_baseline_row(FLAGS.workdir), method_dir, f"{cfg.title}: {label}")
    print("wrote:\n" + "\n".join(f"  {p}" for p in paths), flush=True)
  run_configured(FLAGS.config.calrec, action)


def run() -> None:
  from calrec_jax.cli import run_absl
  run_absl(main)


if __name__ == "__main__":
  run()
