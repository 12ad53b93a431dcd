"""The training loop: restore (in the documented order), compile ahead of time, train, log, checkpoint, export."""
from __future__ import annotations

import logging
import os
import time

import jax
import numpy as np
from tqdm import tqdm

from calrec_jax.data.iterators import MixtureIterator
from calrec_jax.errors import CalrecError
from calrec_jax.train import checkpoint as ckpt_lib
from calrec_jax.train import optim
from calrec_jax.train import sharding as shd
from calrec_jax.train import step as step_lib
from calrec_jax.train.metrics_writer import MetricsWriter, plot_curves
from calrec_jax.train.setup import RunParts, build, save_run_files

log = logging.getLogger(__name__)


class NonFiniteLossError(CalrecError):
  pass


def loss_config(c) -> step_lib.LossConfig:
  return step_lib.LossConfig(c.w_nig, c.w_tt, c.w_ut, c.temperature, c.symmetric, c.vocab_chunk)


def _abstract_with_sharding(abstract, shardings):
  return jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def initial_state(config, workdir, parts: RunParts, tx, mesh, shapes, ckptr):
  """Restore order: workdir checkpoint -> ckpt.init_from params -> pretrained -> random. Returns (state, it_state, how)."""
  state_sh, abstract = step_lib.state_shardings(parts.model, tx, mesh, shapes)
  restored = ckptr.restore_latest(_abstract_with_sharding(abstract, state_sh))
  if restored is not None:
    step, state, it_state = restored
    return state, state_sh, it_state, f"resumed from {ckptr.directory} step {step}"
  params, how = None, f"random init ({config.model.preset})"
  if config.ckpt.init_from:
    params = ckpt_lib.params_from_workdir(config.ckpt.init_from)
    how = f"params from {config.ckpt.init_from} (fresh optimizer, step 0)"
  elif parts.pretrained_params is not None:
    params = {"decoder": parts.pretrained_params}
    how = f"pretrained weights {config.model.pretrained}"
  if params is not None:
    if "proj" in abstract["params"] and "proj" not in params:  # new projection head on pretrained weights
      fresh = jax.jit(lambda r: step_lib.nn.meta.unbox(step_lib._init_variables(parts.model, r, shapes)))(
          jax.random.PRNGKey(config.seed))
      params = dict(params, proj=jax.device_get(fresh["proj"]))
    ckpt_lib.check_params(params, abstract["params"], how)
    params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params)
  state = step_lib.init_state(parts.model, tx, mesh, shapes, config.seed, state_sh, params)
  return state, state_sh, None, how


def train(config, workdir: str) -> dict:
  """Run (or resume) training; returns the last logged metrics."""
  is_main = jax.process_index() == 0
  parts = build(config, workdir)
  if is_main:
    save_run_files(workdir, parts, config)
  dc, tc = config.data, config.train
  mesh = shd.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  if dc.batch_size % (mesh.shape["data"] * mesh.shape["fsdp"] * config.optim.grad_accum):
    raise CalrecError(f"data.batch_size={dc.batch_size} must be divisible by data x fsdp devices "
                      f"({mesh.shape['data'] * mesh.shape['fsdp']}) x optim.grad_accum ({config.optim.grad_accum})")
  tx = optim.make_optimizer(config.optim, tc.num_steps)
  spec = parts.encoder.spec
  shapes = step_lib.example_batch(dc.batch_size, parts.encoder.buckets[-1], spec.target_len, spec.item_len)
  ckptr = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), config.ckpt.keep, config.ckpt.async_save)
  state, state_sh, it_state, how = initial_state(config, workdir, parts, tx, mesh, shapes, ckptr)
  log.info("start: %s", how)
  it = MixtureIterator(parts.encoder, dc.batch_size, dc.mixture_alpha, config.seed, jax.process_index(),
                       jax.process_count())
  if it_state is not None:
    it.set_state(it_state)
  log.info("mixture over %s with p=%s", [c.name for c in parts.categories], np.round(it.probs, 3).tolist())
  train_step = step_lib.jit_train_step(
      step_lib.make_train_step(parts.model, tx, loss_config(config.loss), config.optim.grad_accum), mesh, state_sh)
  abstract_state = _abstract_with_sharding(jax.eval_shape(lambda s: s, state), state_sh)
  compiled = train_step.lower(abstract_state, shapes).compile()
  mem = compiled.memory_analysis()
  if mem is not None:
    log.info("compiled step (batch %d x %d tokens): %.1f MiB arguments, %.1f MiB temporaries per device",
             dc.batch_size, shapes["tokens"].shape[1], mem.argument_size_in_bytes / 2**20, mem.temp_size_in_bytes / 2**20)
  start = int(jax.device_get(state["step"]))
  writer = MetricsWriter(workdir, enabled=is_main, resume_step=start)
  bar = tqdm(total=tc.num_steps, initial=start, disable=not (tc.progress and is_main), unit="step",
             dynamic_ncols=True, desc=config.stage)
  acc: dict[str, float] = {}
  nonfinite_run, t_last, tokens = 0, time.time(), 0.0
  last = {}
  for step in range(start, tc.num_steps):
    batch = shd.global_batch(next(it), mesh)
    state, m = train_step(state, batch)
    m = jax.device_get(m)
    nonfinite_run = nonfinite_run + 1 if m["skipped"] else 0
    if m["skipped"]:
      log.warning("step %d: non-finite loss or gradient (loss=%s); the update was not applied", step + 1, m["loss"])
      writer.write(step + 1, {"train/nonfinite": 1.0})
      if nonfinite_run >= tc.max_consecutive_nonfinite:
        ckptr.close()
        raise NonFiniteLossError(f"{nonfinite_run} non-finite losses in a row at step {step + 1}; lower "
                                 "optim.learning_rate or check the data. The last checkpoint holds finite params.")
    else:
      for k, v in m.items():
        acc[k] = acc.get(k, 0.0) + float(v)
      acc["_n"] = acc.get("_n", 0) + 1
    tokens += float(m["tokens"])
    done = step + 1
    if (done % tc.log_every == 0 or done == tc.num_steps) and acc.get("_n"):
      dt = time.time() - t_last
      n = acc.pop("_n")
      last = {f"train/{k}": v / n for k, v in acc.items() if k not in ("tokens", "skipped")}
      last["perf/steps_per_s"] = tc.log_every / dt if dt else 0.0
      last["perf/tokens_per_s"] = tokens / dt if dt else 0.0
      writer.write(done, last)
      bar.set_postfix(loss=f"{last['train/loss']:.3f}", tok_s=f"{last['perf/tokens_per_s']:.0f}")
      acc, tokens, t_last = {}, 0.0, time.time()
    if tc.eval_every and done % tc.eval_every == 0 and done != tc.num_steps:
      writer.write(done, validate(config, parts, state["params"], done))
    if done % config.ckpt.every == 0 or done == tc.num_steps:
      ckptr.save(done, state, it.get_state(), force=done == tc.num_steps)
    bar.update(1)
  bar.close()
  ckptr.close()
  final = validate(config, parts, state["params"], tc.num_steps)
  writer.write(tc.num_steps, final)
  last.update(final)
  export(workdir, parts, gather_to_host(state["params"]))  # collective: every process joins
  if is_main and os.path.exists(writer.path):
    plot_curves(writer.path, os.path.join(workdir, "training_curves.png"))
  writer.close()
  return last


def validate(config, parts: RunParts, params, step: int) -> dict[str, float]:
  """Validation loss terms on a fixed user subset of the evaluation category (and retrieval metrics)."""
  from calrec_jax.eval.validation import validation_metrics
  t0 = time.time()
  out = validation_metrics(config, parts, params)
  log.info("step %d validation (%.1fs): %s", step, time.time() - t0,
           ", ".join(f"{k.split('/')[-1]}={v:.4f}" for k, v in out.items()))
  return out


def gather_to_host(params):
  """Host numpy copy of (possibly multi-host sharded) params; a collective when there are several processes."""
  if jax.process_count() == 1:
    return jax.device_get(params)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(params, tiled=True)


def export(workdir: str, parts: RunParts, host_params) -> None:
  """Params-only export + tokenizer + model config: what evaluation, stage 2 and HF export read.

  Every process calls it (orbax saves collectively); only process 0 writes files."""
  from calrec_jax.model.loading import save_converted
  save_converted(os.path.join(workdir, "export"), parts.model_cfg, host_params, parts.tokenizer)
