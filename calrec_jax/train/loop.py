"""The training loop: restore (in the documented order), compile ahead of time, train, log, checkpoint, export."""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

import jax
import numpy as np

from calrec_jax.model import variables
from calrec_jax.model import host_collectives
from calrec_jax.data.iterators import MixtureIterator, PackedMixtureIterator
from calrec_jax import progress
from calrec_jax.errors import CalrecError, Interrupted
from calrec_jax.train import checkpoint as ckpt_lib
from calrec_jax.train import optim
from calrec_jax.model import sharding as shd
from calrec_jax.train import objective
from calrec_jax.train import step as step_lib
from calrec_jax.train.finetuning import finetuning_mode
from calrec_jax.train.item_bank import ItemBank, SampledNegatives
from calrec_jax.train.metrics_writer import MetricsWriter, parse_references, plot_curves, plot_time_to_quality
from calrec_jax.train.resources import release_host_memory
from calrec_jax.model.run_parts import RunParts, build, save_run_files

log = logging.getLogger(__name__)


class NonFiniteLossError(CalrecError):
  pass


class TrainingInterrupted(Interrupted):
  """SIGTERM / SIGINT: a checkpoint of the current step was saved; the same command continues from it."""


class StopSignals:
  """Turns SIGTERM (TPU VM preemption, `kill`) and SIGINT (Ctrl-C) into a flag the loop checks after each step.

  A second Ctrl-C while the checkpoint is being written is ignored, so the save is not cut short."""

  def __init__(self):
    self.received: str | None = None
    self._old = {}

  def __enter__(self):
    import signal
    import threading
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    import signal
    self.received = signal.Signals(signum).name

  def stop_now(self) -> bool:
    """True on every process once any process received a signal (a collective when there are several)."""
    return host_collectives.any_process(self.received is not None)

  def __exit__(self, *exc):
    import signal
    for sig, handler in self._old.items():
      signal.signal(sig, handler)
    return False


# keys that must not change when a workdir with checkpoints is started again (shapes, tokenizer, data stream)
RUN_IDENTITY = ("seed", "model.preset", "model.pretrained", "model.projection_dim", "model.item_id_offsets",
                "model.lora_rank", "model.lora_targets", "model.lora_layers", "model.scan_layers", "tokenizer.path",
                "tokenizer.vocab_size", "data.source", "data.path", "data.categories", "data.synthetic_users",
                "data.synthetic_seed", "data.kcore",
                "data.attributes", "data.min_attribute_coverage", "data.max_item_tokens", "data.mixture_alpha",
                "data.batch_size", "data.packing", "data.pack_window", "data.pack_context", "data.cold_start_items",
                "data.cold_start_seed", "loss.negatives", "loss.sampled_negatives", "optim.item_id_sgd_rate",
                "optim.item_id_min_count", "model.item_bias", "optim.item_bias_rate", "data.user_tokens")


def check_same_run(config, workdir: str) -> None:
  """A workdir with checkpoints continues only the run it holds: keys of RUN_IDENTITY that differ from its
  config.json are an error naming them (not a silent run on the old model or a new tokenizer)."""
  from calrec_jax.model.run_parts import load_run_config
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not (os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir))):
    return
  recorded = load_run_config(workdir)
  if recorded is None:
    return
  differ = []
  for key in RUN_IDENTITY:
    section, _, name = key.rpartition(".")
    old = recorded.get(section, {}).get(name) if section else recorded.get(name)
    new = config[section][name] if section else config[name]
    if old is not None and old != new:
      differ.append(f"{key}={new!r} (the run in {workdir} has {old!r})")
  if differ:
    raise CalrecError(f"{workdir} holds checkpoints of another run: {'; '.join(differ)}. Use the workdir's own "
                      "settings to continue it, or another --workdir for the new run")


def last_logged(workdir: str) -> dict:
  """The metrics of the last training and validation rows in metrics.jsonl (what a finished run returned)."""
  from calrec_jax.train.metrics_writer import read_metrics
  path = os.path.join(workdir, "metrics.jsonl")
  out = {}
  for row in read_metrics(path) if os.path.exists(path) else []:
    out.update({k: v for k, v in row.items() if k != "step"})
  return out


# (config, parts, params, item_tower: params -> v_T of every item, or None) -> {'valid/...': value}
ValidationFn = Callable[[Any, RunParts, Any, Any], dict]


def nonfinite_cause(metrics: dict) -> str:
  """Which quantity of a skipped step went non-finite first (a loss term, the gradient, or the update and new
  optimizer state), and the config keys that feed it."""
  import math
  bad = [k[len("loss_"):] for k, v in metrics.items() if k.startswith("loss_") and not math.isfinite(float(v))]
  if bad:
    name = bad[0]
    feeds = ("loss.temperature (a small one overflows the similarities), loss.w_" + name) if name != "nig" else \
        "the data's target tokens and model.compute_dtype"
    return f"loss term {name!r} is not finite ({float(metrics['loss_' + name])}); check {feeds}"
  if not math.isfinite(float(metrics.get("loss", 0.0))):
    return f"the loss is not finite ({float(metrics['loss'])}); check the loss.w_* weights"
  if not math.isfinite(float(metrics.get("grad_norm", 0.0))):
    return ("the gradient is not finite while every loss is (" + ", ".join(
        f"{k}={float(v):.4g}" for k, v in metrics.items() if k.startswith("loss")) + "); check loss.temperature "
            "and model.compute_dtype")
  return (f"the update or the new optimizer state is not finite while the loss ({float(metrics['loss']):.4g}) and "
          f"the gradient (norm {float(metrics['grad_norm']):.4g}) are; lower optim.learning_rate or "
          "optim.weight_decay")


def train(config, workdir: str, validation: ValidationFn | None = None) -> dict:
  """Run (or resume) training; returns the last logged metrics. `validation` (the runner passes
  calrec_jax.eval.validation.validation_metrics) runs every train.eval_every steps and at the end."""
  is_main = jax.process_index() == 0
  from calrec_jax.paths import require_writable_dir
  if is_main:
    require_writable_dir(workdir, "--workdir")
  check_same_run(config, workdir)  # before any data is read or anything compiled
  parts = build(config, workdir)
  if is_main:
    save_run_files(workdir, parts, config)
  dc, tc = config.data, config.train
  mesh = shd.mesh_from_config(config.mesh)
  if dc.batch_size % (mesh.shape["data"] * mesh.shape["fsdp"] * config.optim.grad_accum):
    raise CalrecError(f"data.batch_size={dc.batch_size} must be divisible by data x fsdp devices "
                      f"({mesh.shape['data'] * mesh.shape['fsdp']}) x optim.grad_accum ({config.optim.grad_accum})")
  tx = optim.make_optimizer(config.optim, tc.num_steps, trained_identity_rows(config, parts),
                            bool(parts.model.num_item_ids and parts.model.id_bias))
  learning_rate = optim.schedule(config.optim, tc.num_steps)
  spec = parts.encoder.spec
  shapes = variables.example_batch(dc.batch_size, parts.encoder.buckets[-1], spec.target_len, spec.item_len)
  packed = training_packer(config, parts)
  step_shapes = shapes if packed is None else variables.packed_batch(
      dc.batch_size, packed.spec.slots, packed.spec.max_len, spec.target_len, packed.spec.item_len)
  ckptr = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), config.ckpt.keep, config.ckpt.async_save,
                                config.ckpt.save_concurrent_gb)
  mode = finetuning_mode(config)  # full finetuning, or LoRA adapters on frozen weights (train/finetuning.py)
  step_model = parts.model  # the step's model: with a frozen-layer cache, the one that starts above the cached blocks
  if config.model.cache_frozen_layers:
    from calrec_jax.train import layer_cache
    step_model = parts.model.clone(cached_layers=layer_cache.frozen_block_count(config, parts.model_cfg.n_layers))
  sampler = sampled_negatives(config, parts, mesh)  # its errors before the state is built
  bank_shape = None if config.loss.negatives != "catalog" else (
      sum(len(c.catalog) for c in parts.categories), config.model.projection_dim or parts.model_cfg.d_model)
  state, state_sh, it_state, how = mode.start(config, workdir, parts, tx, mesh, shapes, ckptr, bank_shape)
  parts.pretrained_params = None  # now in the train state (or the frozen weights): free the host copy (1 GB at 270M)
  model_params = mode.model_params  # the model's per-layer params of a train state (validation, the item bank)
  log.info("start: %s", how)
  hidden = None
  if step_model.cached_layers and int(jax.device_get(state["step"])) < tc.num_steps:
    with StopSignals() as signals:  # a stop keeps what is built; the same command continues the build
      try:
        hidden = layer_cache.build(os.path.join(workdir, layer_cache.CACHE_DIR), step_model, model_params(state),
                                   packed, stop=signals.stop_now)
      except layer_cache.CacheBuildInterrupted:
        ckptr.close()
        raise
    step_shapes = variables.packed_batch(dc.batch_size, packed.spec.slots, packed.spec.max_len, spec.target_len,
                                         packed.spec.item_len, (hidden.d_model, hidden.dtype))
  bank = ItemBank(step_model, parts.encoder, hidden=hidden) if config.loss.negatives == "catalog" else None
  item_tower = None  # validation's item tower: with the cache, the blocks above it on the cached item states
  if hidden is not None and validation:
    item_tower = (bank if bank is not None else ItemBank(step_model, parts.encoder, hidden=hidden)).encode  # [I, E]
  if sampler is not None:
    step_shapes = {**step_shapes, **sampler.shapes()}
  if int(jax.device_get(state["step"])) >= tc.num_steps and os.path.exists(
      os.path.join(workdir, "export", "model_config.json")):
    ckptr.close()
    log.info("%s finished earlier (step %d of %d, export in %s/export): nothing to train", workdir,
             int(jax.device_get(state["step"])), tc.num_steps, workdir)
    return last_logged(workdir)
  if packed is None:
    it = MixtureIterator(parts.encoder, dc.batch_size, dc.mixture_alpha, config.seed, jax.process_index(),
                         jax.process_count())
  else:
    it = PackedMixtureIterator(packed, dc.batch_size, dc.mixture_alpha, config.seed, jax.process_index(),
                               jax.process_count(), hidden)
    log.info("packed user sequences: %d units of up to %d items for %d training targets; rows of %d tokens, "
             "%d targets, %d item-tower tokens", sum(len(e) for e in it.examples), packed.spec.window,
             sum(int((e[:, 2] - e[:, 1]).sum()) for e in it.examples), packed.spec.max_len, packed.spec.slots,
             packed.spec.item_len)
  if it_state is not None:
    it.set_state(it_state)
  log.info("mixture over %s with p=%s", [c.name for c in parts.categories], np.round(it.probs, 3).tolist())
  train_step = step_lib.jit_train_step(
      step_lib.make_train_step(step_model, tx, objective.loss_config(config.loss, lm_vocabulary(config, parts),
                                                                      new_item_ids(parts.encoder)),
                               config.optim.grad_accum, mode.to_params), mesh, state_sh,
      frozen_sharding=mode.frozen_sharding)
  abstract_state = shd.abstract_with_sharding(jax.eval_shape(lambda s: s, state), state_sh)
  extra = tuple(shd.abstract_with_sharding(jax.eval_shape(lambda f: f, a), mode.frozen_sharding)
                for a in mode.step_args())
  log.info("compiling the train step (batch %d x %d tokens) ...", dc.batch_size, step_shapes["tokens"].shape[1])
  t_compile = time.time()
  compiled = train_step.lower(abstract_state, step_shapes, *extra).compile()
  log.info("compiled the train step in %.1fs", time.time() - t_compile)
  release_host_memory()  # what loading weights, building the state and compiling freed, before the steps' peak
  step_flops = compiled_flops(compiled)
  mem = compiled.memory_analysis()
  if mem is not None:
    log.info("compiled step (batch %d x %d tokens): %.1f MiB arguments, %.1f MiB temporaries per device",
             dc.batch_size, step_shapes["tokens"].shape[1], mem.argument_size_in_bytes / 2**20,
             mem.temp_size_in_bytes / 2**20)
  if is_main:
    from calrec_jax.train.resources import check_resources
    check_resources(mem, state, config.ckpt.keep, workdir)
  start = int(jax.device_get(state["step"]))
  writer = MetricsWriter(workdir, enabled=is_main, resume_step=start)
  # time-to-quality counters, carried across resumes in the checkpoint's iterator state
  seconds_before = float((it_state or {}).get("train_seconds", 0.0))
  examples_seen = float((it_state or {}).get("examples_seen", 0.0))
  t_start = time.time()

  def counters() -> dict:
    return {"perf/train_seconds": seconds_before + time.time() - t_start, "perf/examples_seen": examples_seen}

  # the logging window's sums so far: a stop between two logged steps carries them in the checkpoint, so the first
  # row after the resume averages the same steps as an uninterrupted run's
  acc: dict[str, float] = dict((it_state or {}).get("log_window") or {})

  def position() -> dict:
    c = counters()
    return {**it.get_state(), "train_seconds": c["perf/train_seconds"], "examples_seen": examples_seen,
            "log_window": dict(acc)}
  bar = progress.bar(total=tc.num_steps, initial=start, disable=not (tc.progress and is_main), unit="step",
                     desc=config.stage)
  # rates: the steps, tokens and examples this process ran since t_last
  nonfinite_run, t_last, timed_steps, tokens, examples = 0, time.time(), 0, 0.0, 0.0
  last = {}
  signals = StopSignals().__enter__()
  try:
    for step in range(start, tc.num_steps):
      if bank is not None and step % config.loss.bank_refresh_steps == 0:  # the negatives of this step onwards
        state = dict(state, bank=jax.device_put(bank.encode(model_params(state)), state_sh["bank"]))
      host = next(it)
      if sampler is not None:
        host = {**host, **sampler.arrays(step)}
      batch = shd.global_batch(host, mesh)
      state, m = train_step(state, batch, *mode.step_args())
      m = jax.device_get(m)
      nonfinite_run = nonfinite_run + 1 if m["skipped"] else 0
      if m["skipped"]:
        cause = nonfinite_cause(m)
        log.warning("step %d: %s; the update was not applied", step + 1, cause)
        writer.write(step + 1, {"train/nonfinite": 1.0})
        if nonfinite_run >= tc.max_consecutive_nonfinite:
          ckptr.close()
          raise NonFiniteLossError(f"{nonfinite_run} non-finite steps in a row at step {step + 1}: {cause}. The "
                                   "last checkpoint holds finite params.")
      else:
        for k, v in m.items():
          acc[k] = acc.get(k, 0.0) + float(v)
        acc["_n"] = acc.get("_n", 0) + 1
      tokens += float(m["tokens"])
      examples += float(m["examples"])
      examples_seen += float(m["examples"])
      timed_steps += 1
      done = step + 1
      if (done % tc.log_every == 0 or done == tc.num_steps) and acc.get("_n"):
        dt = time.time() - t_last
        n = acc.pop("_n")
        last = {f"train/{k}": v / n for k, v in acc.items() if k not in ("tokens", "examples", "skipped")}
        last["train/learning_rate"] = float(learning_rate(step))  # the rate this step's update used
        last["perf/steps_per_s"] = timed_steps / dt if dt else 0.0
        last["perf/tokens_per_s"] = tokens / dt if dt else 0.0
        last["perf/examples_per_s"] = examples / dt if dt else 0.0  # (history -> next item) pairs trained
        if step_flops:  # XLA's count per device; see compiled_flops
          last["perf/tflops_per_s"] = step_flops * last["perf/steps_per_s"] / 1e12
          if tc.peak_flops:
            last["perf/mfu"] = step_flops * last["perf/steps_per_s"] / tc.peak_flops
        writer.write(done, last)
        bar.set_postfix(loss=f"{last['train/loss']:.3f}", tok_s=f"{last['perf/tokens_per_s']:.0f}",
                        ex_s=f"{last['perf/examples_per_s']:.2f}", refresh=False)
        acc, tokens, examples, t_last, timed_steps = {}, 0.0, 0.0, time.time(), 0
      if validation and tc.eval_every and done % tc.eval_every == 0 and done != tc.num_steps:
        writer.write(done, {**validate(validation, config, parts, model_params(state), done, item_tower), **counters()})
      if done % config.ckpt.every == 0 or done == tc.num_steps:  # every row up to `done` is on disk already
        ckptr.save(done, state, position(), force=done == tc.num_steps)
      bar.update(1)
      if done < tc.num_steps and signals.stop_now():
        bar.close()
        if done % config.ckpt.every:
          ckptr.save(done, state, position(), force=True)
        ckptr.close()
        writer.close()
        raise TrainingInterrupted(f"{signals.received or 'a stop signal'} at step {done} of {tc.num_steps}: saved "
                                  f"the checkpoint {ckptr.directory}/{done}; run the same command to continue from it")
  finally:
    signals.__exit__()
  bar.close()
  ckptr.close()
  if packed is not None and packed.dropped_targets:
    log.warning("%d drawn targets were left out because their window did not fit data.pack_max_len=%d tokens; "
                "raise data.pack_max_len or lower data.pack_window", packed.dropped_targets, packed.spec.max_len)
  if validation:
    final = writer.logged_at_resume("valid/") if start == tc.num_steps else None
    if not agreed_by_all(final is not None):  # validation is collective: every process decides as process 0 does
      final = validate(validation, config, parts, model_params(state), tc.num_steps, item_tower)
      writer.write(tc.num_steps, {**final, **counters()})
    else:  # a kill hit after the final validation was logged (during the export): the same params, not run again
      log.info("the final validation of step %d was logged before the restart: not run again", tc.num_steps)
    last.update(final or {})
  export(workdir, config, parts, mode.export_params(state))  # a collective; stacked blocks unstacked on the host
  if is_main and os.path.exists(writer.path):
    plot_curves(writer.path, os.path.join(workdir, "training_curves.png"))
    plot_time_to_quality(writer.path, os.path.join(workdir, "time_to_quality.png"),
                         parse_references(config.eval.reference_valid_ndcg))
  writer.close()
  return last


def agreed_by_all(flag: bool) -> bool:
  """Process 0's `flag` on every process (process 0 alone reads the metrics)."""
  if jax.process_count() == 1:
    return flag
  return bool(host_collectives.broadcast_from_zero(np.int32(flag)))


def compiled_flops(compiled) -> float:
  """FLOPs of one compiled step per device as XLA counts them (0 when it does not say). XLA counts a while loop's
  body once: the LM loss's vocabulary chunks beyond the first (none with loss.lm_vocab=catalog and a vocab_chunk
  above the catalog's tokens) and scanned blocks beyond the first are missing, so MFU then reads low."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - a backend without cost analysis
    return 0.0
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


def training_packer(config, parts: RunParts):
  """The PackedEncoder of `data.packing='sequence'` (None for per-prefix examples)."""
  if config.data.packing != "sequence":
    return None
  from calrec_jax.data.packed import PackedEncoder, PackSpec
  dc = config.data
  return PackedEncoder(parts.encoder, PackSpec(dc.pack_window, dc.pack_context, dc.pack_max_len, dc.pack_slots,
                                               dc.pack_item_len))


def new_item_ids(encoder) -> tuple[int, ...]:
  """Global ids of the items a cold-start split keeps out of training (never bank negatives)."""
  return tuple(int(encoder.item_offsets[c] + i) for c, cat in enumerate(encoder.categories) for i in cat.new_items)


def sampled_negatives(config, parts: RunParts, mesh) -> SampledNegatives | None:
  """The per-step sampled catalog negatives of loss.sampled_negatives (None when 0)."""
  count = int(config.loss.get("sampled_negatives", 0))
  if not count:
    return None
  devices = mesh.shape["data"] * mesh.shape["fsdp"]
  if count % devices:
    raise CalrecError(f"loss.sampled_negatives={count} must be divisible by data x fsdp devices ({devices})")
  try:
    sampler = SampledNegatives(parts.encoder, count, config.seed, new_item_ids(parts.encoder), jax.process_index(),
                               jax.process_count())
  except ValueError as e:
    raise CalrecError(str(e)) from None
  log.info("sampled negatives: %d of %d catalog items per step, encoded fresh", count, len(sampler.candidates))
  return sampler


def trained_identity_rows(config, parts: RunParts) -> np.ndarray | None:
  """[I] bool over the item identity table's rows (the run's categories' items in order): the items the training
  sequences hold at least optim.item_id_min_count times; None when that is 0 or there is no table."""
  min_count = int(config.optim.get("item_id_min_count", 0))
  if not parts.model.num_item_ids or min_count <= 0:
    return None
  from calrec_jax.data.records import item_counts
  counts = np.concatenate([item_counts(c.sequences, len(c.catalog)) for c in parts.categories])
  trained = optim.table_rows_trained(counts, min_count)
  log.info("item identities: the rows of %d of %d items (seen at least %d times in training) train; the rest keep "
           "their start (text alone)", int(trained.sum()), len(trained), min_count)
  return trained


def lm_vocabulary(config, parts: RunParts) -> tuple[int, ...]:
  """Token ids of `loss.lm_vocab='catalog'` (every item text's tokens and EOS); () for the whole vocabulary."""
  if config.loss.lm_vocab != "catalog":
    return ()
  from calrec_jax.data.examples import catalog_vocabulary
  vocab = catalog_vocabulary(parts.encoder)
  log.info("L_NIG over the catalog's %d tokens (of %d)", len(vocab), parts.model_cfg.vocab_size)
  return vocab


def validate(validation: ValidationFn, config, parts: RunParts, params, step: int, item_tower=None
             ) -> dict[str, float]:
  """Run `validation` (given `item_tower` where the loop has a cheaper one) and log its metrics with the time it
  took."""
  t0 = time.time()
  out = validation(config, parts, params, item_tower)
  log.info("step %d validation (%.1fs): %s", step, time.time() - t0,
           ", ".join(f"{k.split('/')[-1]}={v:.4f}" for k, v in out.items()))
  return out


def export(workdir: str, config, parts: RunParts, host_params) -> None:
  """Params-only export + tokenizer + model config: what evaluation, stage 2 and HF export read; and the serving
  files (data/serving.py) that let recommend run from the export folder alone.

  Every process calls it (orbax saves collectively); only process 0 writes files."""
  from calrec_jax.data.serving import write_serving_files
  from calrec_jax.model.loading import save_converted
  out = os.path.join(workdir, "export")
  if jax.process_index() == 0:  # before model_config.json, which marks the export complete
    names = [c.name for c in parts.categories]
    cat = names.index(config.data.eval_category) if config.data.eval_category in names else 0
    write_serving_files(out, config.to_json_best_effort(indent=1), parts.categories[cat],
                        parts.encoder.attributes[cat], int(parts.encoder.item_offsets[cat]))
  save_converted(out, parts.model_cfg, host_params, parts.tokenizer)
