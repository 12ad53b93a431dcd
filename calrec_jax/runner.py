"""Run modes behind `calrec_jax.main`: train, evaluate, and the two-stage pipeline."""
from __future__ import annotations

import copy
import logging
import os

import jax

log = logging.getLogger(__name__)


def run_configured(config, action) -> None:
  """The shared body of the absl commands: logging, config validation, multi-host join, then `action()`;
  a CalrecError ends the command with its message (exit status 1) instead of a traceback."""
  import sys
  from calrec_jax.config_check import validate_config
  from calrec_jax.errors import CalrecError
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "jax._src", "orbax", "tensorflow"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  try:
    validate_config(config)
    maybe_init_distributed(config)
    action()
  except CalrecError as e:
    log.error("%s", e)
    sys.exit(f"error: {e}")


def maybe_init_distributed(config) -> None:
  """Join a multi-host run (TPU pods detect everything; elsewhere give coordinator, count and id)."""
  mh = config.multihost
  if not mh.enabled:
    return
  kw = {}
  if mh.coordinator:
    kw = dict(coordinator_address=mh.coordinator, num_processes=mh.num_processes, process_id=mh.process_id)
  jax.distributed.initialize(**kw)
  log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
           jax.local_device_count(), jax.device_count())


def evaluate_workdir(config, workdir: str, split: str | None = None, step: int | None = None,
                     out_dir: str | None = None) -> dict:
  """Evaluate a workdir's export (or checkpoint `step`); results go to <workdir>/eval (or eval_step<N>)."""
  from calrec_jax.eval.evaluate import run_evaluation
  from calrec_jax.train.checkpoint import params_from_workdir
  from calrec_jax.train.setup import build
  parts = build(config, workdir)
  params = params_from_workdir(workdir, step)
  source = f"{workdir} checkpoint {step}" if step is not None else workdir
  out_dir = out_dir or os.path.join(workdir, "eval" if step is None else f"eval_step{step}")
  return run_evaluation(config, parts, params, out_dir, split, params_source=source)


def run_mode(mode: str, config, workdir: str) -> dict:
  from calrec_jax.train.loop import train
  if mode == "train":
    return train(config, workdir)
  if mode == "evaluate":
    return evaluate_workdir(config, workdir)
  # pipeline: stage 1 on the mixture, stage 2 on the target category, evaluation of stage 2
  s1 = copy.deepcopy(config)
  s1.stage = "stage1"
  with s1.unlocked():
    s1.data.categories = config.pipeline.stage1_categories
    s1.train.num_steps = config.pipeline.stage1_steps
  train(s1, os.path.join(workdir, "stage1"))
  s2 = copy.deepcopy(config)
  s2.stage = "stage2"
  with s2.unlocked():
    s2.data.categories = config.pipeline.stage2_category
    s2.train.num_steps = config.pipeline.stage2_steps
    s2.ckpt.init_from = os.path.join(workdir, "stage1")
    s2.optim.learning_rate = config.pipeline.stage2_learning_rate
  train(s2, os.path.join(workdir, "stage2"))
  return evaluate_workdir(s2, os.path.join(workdir, "stage2"))
