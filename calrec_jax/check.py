"""Check a run config without running anything: the config file loads, every override names a key of it with
the right type, and every value passes the checks a run makes before it starts.

  python -m calrec_jax.check --config=configs/stage1.py --mode=pipeline [--config.key=value ...]

The launchers (launch/tpu_pod.sh, launch/multihost_gpu.sh) run it on this machine before they create or
reach any remote machine. Prints one `ok:` line (exit 0) or one `error:` line naming the key (exit 1 or 2).
"""
from __future__ import annotations

from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]) and --config.key=value overrides.",
                                lock_config=True)
flags.DEFINE_enum("mode", "train", ["train", "evaluate", "pipeline"], "The mode the config will run in.")
flags.mark_flags_as_required(["config"])


def main(argv) -> None:
  del argv
  import sys
  from calrec_jax.config_check import validate_config
  from calrec_jax.errors import CalrecError
  from calrec_jax.runner import stage_config
  config = FLAGS.config
  try:
    validate_config(config)
    if FLAGS.mode == "pipeline":
      for stage in ("stage1", "stage2"):
        validate_config(stage_config(config, stage, "WORKDIR"))
  except CalrecError as e:
    sys.exit(f"error: {e}")
  what = (f"stage 1 on {config.pipeline.stage1_categories} ({config.pipeline.stage1_steps} steps) -> stage 2 on "
          f"{config.pipeline.stage2_category} ({config.pipeline.stage2_steps} steps) -> evaluation"
          if FLAGS.mode == "pipeline" else f"{config.train.num_steps} steps on {config.data.categories or 'all'}")
  print(f"ok: {FLAGS['config'].config_filename} ({FLAGS.mode}): {what}")


def run() -> None:
  from calrec_jax.cli import run_absl
  run_absl(main)


if __name__ == "__main__":
  run()
