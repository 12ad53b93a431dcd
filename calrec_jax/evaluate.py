"""Evaluate a trained workdir: generate -> BM25 -> quasi-round-robin merge -> full-ranking metrics (+ dense).

  python -m calrec_jax.evaluate --config=configs/stage2.py --workdir=workdirs/stage2
  python -m calrec_jax.evaluate --config=configs/stage2.py --workdir=workdirs/stage2 --step=400 --split=valid

Reads the workdir's export (or checkpoint --step), its tokenizer and model config; writes metrics.json,
metrics.md and per-user rankings_{bm25,dense}.jsonl to <workdir>/eval (eval_step<N> for a named step).
"""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "The config the workdir was trained with (configs/*.py[:arg]); "
                                "override eval keys with --config.eval.key=value.", lock_config=True)
flags.DEFINE_string("workdir", None, "Training workdir to evaluate.")
flags.DEFINE_integer("step", None, "Evaluate this checkpoint step instead of the final export.")
flags.DEFINE_enum("split", None, ["valid", "test"], "Split (default: config.eval.split).")
flags.DEFINE_string("output", None, "Folder for the results (default: <workdir>/eval or eval_step<N>).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
  del argv
  from calrec_jax.runner import evaluate_workdir, run_configured
  run_configured(FLAGS.config, lambda: evaluate_workdir(FLAGS.config, FLAGS.workdir, FLAGS.split, FLAGS.step,
                                                        FLAGS.output))


def run() -> None:
  app.run(main)


if __name__ == "__main__":
  run()
