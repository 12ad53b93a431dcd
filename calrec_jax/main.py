"""Train CALRec: one training run, the evaluation of a trained workdir, or stage 1 -> stage 2 -> evaluation.

  python -m calrec_jax.main --config=configs/demo.py:smoke --workdir=workdirs/smoke --mode=pipeline
      stage 1 -> stage 2 -> evaluation on the embedded synthetic data (about 45 s on 2 CPU cores)
  python -m calrec_jax.main --config=configs/stage1.py --workdir=workdirs/stage1 [--config.key=value ...]
      one training run (configs/base.py documents every key)
"""
from __future__ import annotations

from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]); override keys with "
                                "--config.section.key=value (see configs/base.py for every key).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics, TensorBoard events, plots, export.")
flags.DEFINE_enum("mode", "train", ["train", "evaluate", "pipeline"],
                  "train: one training run; evaluate: evaluate the workdir's export; pipeline: the config's "
                  "stage-1 -> stage-2 -> evaluation sequence (its pipeline.* keys).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
  del argv
  from calrec_jax.runner import run_configured, run_mode
  run_configured(FLAGS.config, lambda: run_mode(FLAGS.mode, FLAGS.config, FLAGS.workdir))


def run() -> None:
  from calrec_jax.cli import run_absl
  run_absl(main)


if __name__ == "__main__":
  run()
