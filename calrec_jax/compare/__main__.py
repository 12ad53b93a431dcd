"""Compare CALRec with baselines on one category: one command, one table (intentionally short).

  python -m calrec_jax.compare --config=configs/compare/scientific.py --workdir=workdirs/compare
  python -m calrec_jax.compare --config=configs/compare/synthetic.py --workdir=workdirs/compare_demo

Trains and evaluates every method of `--config.methods` on the same users with the same metric code, skipping
methods that finished earlier in --workdir, and writes comparison.md / comparison.json / comparison.png there.
"""
from __future__ import annotations

from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Comparison config (configs/compare/*.py[:arg]); override keys "
                                "with --config.key=value, CALRec keys with --config.calrec.section.key=value.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Folder of the comparison: one sub-folder per method, and the report.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
  del argv
  from calrec_jax.compare.methods import check_methods
  from calrec_jax.compare.run import run_comparison
  from calrec_jax.runner import run_configured
  run_configured(FLAGS.config, lambda: run_comparison(FLAGS.config, FLAGS.workdir), validate=check_methods,
                 multihost=FLAGS.config.calrec)


def run() -> None:
  from calrec_jax.cli import run_absl
  run_absl(main)


if __name__ == "__main__":
  run()
