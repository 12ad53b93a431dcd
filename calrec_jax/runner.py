"""Run modes behind `calrec_jax.main`: train, evaluate, and the two-stage pipeline."""
from __future__ import annotations

import copy
import json
import logging
import os
import time

import jax

log = logging.getLogger(__name__)


def run_configured(config, action, validate=None, multihost=None) -> None:
  """The shared body of the absl commands: logging, config validation (`validate`, default: the run config's),
  multi-host join and the persistent compilation cache (from `multihost`'s config, default `config`), then
  `action()`; a CalrecError ends the command with its message (exit status 1) instead of a traceback."""
  import sys
  from calrec_jax.config_check import validate_config
  from calrec_jax.errors import CalrecError, Interrupted
  validate = validate or validate_config
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "jax._src", "orbax", "tensorflow"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  from calrec_jax.compile_cache import enable_compile_cache
  run_config = multihost if multihost is not None else config
  try:
    validate(config)
    maybe_init_distributed(run_config)
    enable_compile_cache(run_config.compile_cache)
    action()
  except Interrupted as e:
    log.warning("%s", e)
    sys.exit(f"stopped: {e}")
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
  from calrec_jax.model import host_collectives
  host_collectives.use_coordination_barriers_in_orbax()
  log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
           jax.local_device_count(), jax.device_count())


# model keys that shape a run's params beyond model_config.json (its learned per-item tables): evaluation takes them
# from the run, as it takes the decoder from model_config.json
RECORDED_MODEL_KEYS = ("item_id_offsets", "item_bias")


def recorded_run_config(config, workdir: str, explicit: frozenset[str] = frozenset()):
  """`config` with its data section, and the model keys of RECORDED_MODEL_KEYS, taken from the run recorded in
  <workdir>/config.json (what the workdir was trained on and with), except keys given on the command line
  (`explicit`, e.g. {'data.categories'}); differences are logged either way."""
  from calrec_jax.model.run_parts import load_run_config
  recorded = load_run_config(workdir) or {}
  taken = [("data", key, value) for key, value in recorded.get("data", {}).items()]
  taken += [("model", key, recorded["model"][key]) for key in RECORDED_MODEL_KEYS
            if key in recorded.get("model", {})]
  if not taken:
    return config
  config = copy.deepcopy(config)
  for section, key, value in taken:
    current = config[section]
    if key not in current or current[key] == value:
      continue
    if f"{section}.{key}" in explicit:
      log.warning("%s.%s=%r as given on the command line; %s was trained with %r", section, key, current[key],
                  workdir, value)
      continue
    log.info("%s.%s=%r: what %s was trained with (the config file says %r)", section, key, value, workdir,
             current[key])
    with config.unlocked():
      current[key] = type(current[key])(value) if current[key] is not None else value
  return config


def check_model_overrides(config, workdir: str, explicit: frozenset[str]) -> None:
  """An evaluation reads the model the workdir trained (its model_config.json and params): a command-line
  `--config.model.*` flag of a key that defines the model (RUN_IDENTITY's) naming another value is an error, not
  silently ignored. Runtime keys (model.compute_dtype, model.attention, ...) apply as given."""
  from calrec_jax.errors import ConfigError
  from calrec_jax.train.loop import RUN_IDENTITY
  from calrec_jax.model.run_parts import load_run_config
  recorded = (load_run_config(workdir) or {}).get("model", {})
  for key in sorted(k for k in explicit if k.startswith("model.") and k in RUN_IDENTITY):
    name = key.split(".", 1)[1]
    if name not in recorded or (name == "preset" and recorded.get("pretrained")):
      continue  # a pretrained model's preset is its own
    if recorded[name] != config.model[name]:
      raise ConfigError(f"--config.{key}={config.model[name]!r}, but {workdir} was trained with {key}="
                        f"{recorded[name]!r}; evaluation reads the workdir's own model: drop the flag, or train a "
                        "run with it")


def fresh_output_dir(base: str) -> str:
  """`base`, or base-2, base-3, ... when earlier results are there: an evaluation never overwrites them."""
  out, k = base, 1
  while os.path.exists(os.path.join(out, "metrics.json")):
    k += 1
    out = f"{base}-{k}"
  if out != base:
    log.info("%s holds earlier results, which are kept; this evaluation writes to %s", base, out)
  return out


def evaluate_workdir(config, workdir: str, split: str | None = None, step: int | None = None,
                     out_dir: str | None = None, announce: bool = True) -> dict:
  """Evaluate a workdir's export (or checkpoint `step`); results go to `out_dir`, by default <workdir>/eval
  (eval_step<N>), or eval-2, eval-3 ... when earlier results are there."""
  from calrec_jax.eval.evaluate import run_evaluation
  from calrec_jax.train.checkpoint import params_from_workdir
  from calrec_jax.model.run_parts import build
  if not os.path.isdir(workdir):
    from calrec_jax.errors import CheckpointError
    raise CheckpointError(f"{workdir}: no such workdir; train first (python -m calrec_jax.main ...) or give the "
                          "folder of a trained run")
  from calrec_jax.paths import require_writable_dir
  out_dir = out_dir or fresh_output_dir(os.path.join(workdir, "eval" if step is None else f"eval_step{step}"))
  if jax.process_index() == 0:
    require_writable_dir(out_dir, "--output")  # before the generation, not after it
  params = params_from_workdir(workdir, step)
  parts = build(config, workdir)
  if "lora" in params:  # a LoRA checkpoint holds the adapters only
    params = merged_lora_checkpoint(params, workdir, parts)
  source = f"{workdir} checkpoint {step}" if step is not None else workdir
  results = run_evaluation(config, parts, params, out_dir, split, params_source=source)
  choice = results.get("fused_choice")
  if choice and step is None and jax.process_index() == 0:  # for recommend --export=<workdir>/export
    from calrec_jax.data.serving import record_fusion
    try:
      record_fusion(os.path.join(workdir, "export"), choice)
    except OSError as e:
      log.warning("the fused ranking's choice was not added to %s/export/serving.json (%s)", workdir, e)
  if announce:
    print_outputs([out_dir])
  return results


def merged_lora_checkpoint(trainable: dict, workdir: str, parts) -> dict:
  """The two-tower params of a LoRA checkpoint ({'lora', ['proj']}): its adapters folded into the frozen weights
  the run trained them on (the run's ckpt.init_from params, else its model.pretrained weights)."""
  import ml_collections
  from calrec_jax.adapters.lora import LoraConfig, trainable_to_params
  from calrec_jax.errors import CheckpointError
  from calrec_jax.train.checkpoint import params_from_workdir
  from calrec_jax.model.run_parts import load_run_config
  run = load_run_config(workdir) or {}
  model, init_from = run.get("model", {}), run.get("ckpt", {}).get("init_from", "")
  if not model.get("lora_rank"):
    raise CheckpointError(f"{workdir}: the checkpoint holds LoRA adapters but {workdir}/config.json records no "
                          "model.lora_rank; evaluate the run's export instead (omit --step)")
  lora = LoraConfig.from_config(ml_collections.ConfigDict(model))
  if init_from:
    base = params_from_workdir(init_from)["decoder"]
  elif model.get("pretrained"):
    base = parts.pretrained_params
    if base is None:
      from calrec_jax.model.loading import load_pretrained
      base = load_pretrained(model["pretrained"])[1]
  else:
    raise CheckpointError(f"{workdir}: LoRA adapters on a random-init model; only its export (omit --step) holds "
                          "the weights they were trained on")
  return trainable_to_params(base, trainable, lora)


STARTED = time.time()  # when this command started: what print_outputs calls written rather than kept


def print_outputs(folders: list[str], since: float | None = None) -> None:
  """The closing lines of a command: where its tables, plots, exports and TensorBoard events are; what this
  command wrote (changed at or after `since`, default: when it started) apart from what earlier runs left."""
  since = STARTED if since is None else since
  names = [("metrics.md", "evaluation table"), ("metrics.json", "evaluation metrics"),
           ("training_curves.png", "training curves"),
           ("time_to_quality.png", "validation against training time and examples seen"),
           ("metrics.jsonl", "training metrics"),
           ("export", "export (params, tokenizer, model config)"), ("checkpoints", "checkpoints"),
           ("frozen_layer_cache", "frozen lower blocks' outputs (model.cache_frozen_layers; delete to free disk)")]
  written, kept = [], []

  def add(what: str, path: str) -> None:
    (written if os.path.getmtime(path) >= since - 1.0 else kept).append(f"  {what}: {path}")  # 1 s: mtime rounding
  for folder in folders:
    for name, what in names:
      path = os.path.join(folder, name)
      if os.path.exists(path):
        add(what, path)
      if name == "metrics.json" and os.path.isdir(folder):  # every ranker's per-user rankings
        for r in sorted(f for f in os.listdir(folder) if f.startswith("rankings_") and f.endswith(".jsonl")):
          add(f"per-user rankings of {r[len('rankings_'):-len('.jsonl')]} (rank 0: not in the top list)",
              os.path.join(folder, r))
  boards = [f for f in folders if os.path.isdir(os.path.join(f, "tensorboard"))]
  if boards:
    (written or kept).append(
        f"  TensorBoard: tensorboard --logdir {os.path.commonpath(boards) if len(boards) > 1 else boards[0]}")
  if jax.process_index() == 0 and (written or kept):
    print(("wrote:\n" + "\n".join(written) if written else "wrote nothing new")
          + ("\nfrom earlier runs, kept:\n" + "\n".join(kept) if kept else ""), flush=True)


def train_run(config, workdir: str) -> dict:
  """One training run with the evaluation layer's validation (train.eval_every steps and at the end)."""
  from calrec_jax.eval.validation import validation_metrics
  from calrec_jax.train.loop import train
  from calrec_jax.train.resources import release_host_memory
  out = train(config, workdir, validation_metrics)
  release_host_memory()  # the finished run's train state and buffers, before a next stage or the evaluation
  return out


def stage_config(config, stage: str, workdir: str):
  """The config of one pipeline stage: stage 1 on `pipeline.stage1_categories`, stage 2 on
  `pipeline.stage2_category` from stage 1's params (<workdir>/stage1) at `pipeline.stage2_learning_rate`."""
  s, p = copy.deepcopy(config), config.pipeline
  s.stage = stage
  with s.unlocked():
    if stage == "stage1":
      s.data.categories, s.train.num_steps = p.stage1_categories, p.stage1_steps
    else:
      s.data.categories, s.train.num_steps = p.stage2_category, p.stage2_steps
      s.ckpt.init_from = os.path.join(workdir, "stage1")
      s.optim.learning_rate = p.stage2_learning_rate
  return s


def train_pipeline(config, workdir: str):
  """Stage 1 on the mixture (<workdir>/stage1), then stage 2 on the target category from its params
  (<workdir>/stage2); returns the stage-2 config."""
  train_run(stage_config(config, "stage1", workdir), os.path.join(workdir, "stage1"))
  s2 = stage_config(config, "stage2", workdir)
  train_run(s2, os.path.join(workdir, "stage2"))
  return s2


def run_mode(mode: str, config, workdir: str) -> dict:
  if mode == "train":
    out = train_run(config, workdir)
    print_outputs([workdir])
    return out
  if mode == "evaluate":
    return evaluate_workdir(config, workdir)
  s2 = train_pipeline(config, workdir)  # pipeline: stage 1 -> stage 2 -> evaluation of stage 2
  stage2 = os.path.join(workdir, "stage2")
  done = os.path.join(stage2, "eval", "metrics.json")
  export = os.path.join(stage2, "export", "model_config.json")
  if os.path.exists(done) and os.path.getmtime(done) >= os.path.getmtime(export):  # a finished pipeline again
    log.info("the evaluation of %s finished earlier (%s): not run again", stage2, done)
    print_outputs([os.path.join(workdir, "stage1"), stage2, os.path.dirname(done)])
    with open(done, encoding="utf-8") as f:
      return json.load(f)
  out_dir = fresh_output_dir(os.path.join(stage2, "eval"))
  results = evaluate_workdir(s2, stage2, out_dir=out_dir, announce=False)
  print_outputs([os.path.join(workdir, "stage1"), stage2, out_dir])
  return results
