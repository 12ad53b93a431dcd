"""Evaluate a trained workdir: generate -> BM25 -> quasi-round-robin merge -> full-ranking metrics (+ dense).

  python -m calrec_jax.evaluate --config=configs/stage2.py --workdir=workdirs/stage2
  python -m calrec_jax.evaluate --config=configs/stage2.py --workdir=workdirs/stage2 --step=400 --split=valid

Reads the workdir's export (or checkpoint --step), its tokenizer and model config, and the data config and
per-item tables (model.item_bias, model.item_id_offsets) it was trained with (<workdir>/config.json; a
--config.data.* override that differs is used and logged). Writes
metrics.json, metrics.md and per-user rankings_{bm25,dense}.jsonl (rank: 1-based position of the held-out item,
0 when it is not in the top list) to --output, by default <workdir>/eval (eval_step<N> for a named step), or
eval-2, eval-3, ... when earlier results are there: nothing is overwritten.
"""
from __future__ import annotations

from absl import flags
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
  import sys
  from calrec_jax.runner import check_model_overrides, evaluate_workdir, recorded_run_config, run_configured
  explicit = frozenset(a[len("--config."):].split("=")[0] for a in sys.argv
                       if a.startswith(("--config.data.", "--config.model.")))

  def action():
    from calrec_jax.config_check import validate_config
    config = recorded_run_config(FLAGS.config, FLAGS.workdir, explicit)  # what the workdir was trained on
    validate_config(config)
    check_model_overrides(config, FLAGS.workdir, explicit)
    evaluate_workdir(config, FLAGS.workdir, FLAGS.split, FLAGS.step, FLAGS.output)
  run_configured(FLAGS.config, action)


def run() -> None:
  from calrec_jax.cli import run_absl
  run_absl(main)


if __name__ == "__main__":
  run()
