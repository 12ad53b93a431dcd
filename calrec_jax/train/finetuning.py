"""Finetuning modes: how a run starts (the documented restore order), which params its step trains, and what it
exports. `FullFinetuning` trains every weight; `LoraFinetuning` trains adapters on frozen weights. A mode is
looked up from the config (`finetuning_mode`); a new one is a class with the same members (start, step_args,
model_params, export_params, to_params, frozen_sharding)."""
from __future__ import annotations

import logging
from typing import Any, Callable

import jax
import numpy as np

from calrec_jax.model import sharding as shd
from calrec_jax.model import item_ids, variables
from calrec_jax.train import checkpoint as ckpt_lib
from calrec_jax.train import step as step_lib
from calrec_jax.model.run_parts import RunParts

log = logging.getLogger(__name__)


def _fresh_params(config, parts: RunParts, shapes) -> Any:
  """Random-init params of the model (host numpy, unboxed)."""
  return jax.device_get(jax.jit(lambda r: variables.init_params(parts.model, r, shapes))(
      jax.random.PRNGKey(config.seed)))


def given_params(config, parts: RunParts, abstract_params, shapes) -> tuple[Any | None, str]:
  """Restore steps 2-3: ckpt.init_from params, else pretrained weights, as checked host float32 params (a fresh
  projection head added where the source has none); (None, 'random init ...') when neither applies."""
  if config.ckpt.init_from:
    params = ckpt_lib.params_from_workdir(config.ckpt.init_from)
    how = f"params from {config.ckpt.init_from} (fresh optimizer, step 0)"
  elif parts.pretrained_params is not None:
    params, how = {"decoder": parts.pretrained_params}, f"pretrained weights {config.model.pretrained}"
  else:
    return None, f"random init ({config.model.preset})"
  if "proj" in abstract_params and "proj" not in params:  # new projection head on pretrained weights
    params = dict(params, proj=_fresh_params(config, parts, shapes)["proj"])
  source_layout = None
  for name, key in ((item_ids.PARAM, "model.item_id_offsets"), (item_ids.BIAS, "model.item_bias")):
    if name in abstract_params:  # a learned per-item table: the source's items' rows, the rest zeros
      if source_layout is None and config.ckpt.init_from:
        source_layout = item_ids.read_layout(config.ckpt.init_from)
      params = dict(params, **{name: item_ids.carried_table(
          params, tuple(abstract_params[name].shape), log, source_layout,
          item_ids.catalog_layout(parts.categories), name)})
    elif name in params:
      log.info("%s holds a learned %s; %s is off, so it is not used", how, name, key)
      params = {k: v for k, v in params.items() if k != name}
  ckpt_lib.check_params(params, abstract_params, how)
  return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params), how


def with_bank(state, state_sh, abstract, mesh, bank_shape):
  """Adds the item bank (train/item_bank.py; zeros until its first refresh, replicated) to a state, its shardings
  and its abstract tree; unchanged when bank_shape is None."""
  if bank_shape is None:
    return state, state_sh, abstract
  rep = step_lib.NamedSharding(mesh, step_lib.P())
  abstract = dict(abstract, bank=jax.ShapeDtypeStruct(bank_shape, jax.numpy.float32))
  state_sh = dict(state_sh, bank=rep)
  if state is not None:
    state = dict(state, bank=jax.device_put(np.zeros(bank_shape, np.float32), rep))
  return state, state_sh, abstract


def initial_state(config, workdir, parts: RunParts, tx, mesh, shapes, ckptr, bank_shape=None):
  """Restore order: workdir checkpoint -> ckpt.init_from params -> pretrained -> random. Returns (state, it_state, how)."""
  state_sh, abstract = step_lib.state_shardings(parts.model, tx, mesh, shapes)
  _, state_sh, abstract = with_bank(None, state_sh, abstract, mesh, bank_shape)
  restored = ckptr.restore_latest(shd.abstract_with_sharding(abstract, state_sh))
  if restored is not None:
    step, state, it_state = restored
    return state, state_sh, it_state, f"resumed from {ckptr.directory} step {step}"
  params, how = given_params(config, parts, abstract["params"], shapes)
  plain_sh = {k: v for k, v in state_sh.items() if k != "bank"}
  state = step_lib.init_state(parts.model, tx, mesh, shapes, config.seed, plain_sh, params)  # random: sharded init
  state, _, _ = with_bank(state, plain_sh, abstract, mesh, bank_shape)
  return state, state_sh, None, how


def lora_initial_state(config, parts: RunParts, tx, mesh, shapes, ckptr, lc, bank_shape=None):
  """LoRA: frozen weights by restore steps 2-4 (every start, also a resume), and a train state of the trainable
  tree {'lora', ['proj'], ['item_offsets'], ['item_bias']} only, restored from the workdir's checkpoint when there
  is one. Returns (state, state shardings, iterator state, how, frozen decoder weights, their shardings)."""
  from calrec_jax.adapters.lora import count, init_adapters
  p_sh, p_abstract = variables.params_shardings(parts.model, mesh, shapes)
  params, how = given_params(config, parts, p_abstract, shapes)
  if params is None:  # the frozen weights are needed on the host either way
    params = _fresh_params(config, parts, shapes)
  trainable = {"lora": init_adapters(params["decoder"], lc, config.seed)}
  for key in ("proj", *item_ids.TABLES):  # trained beside the adapters
    if key in params:
      trainable[key] = params[key]
  frozen = jax.device_put(params["decoder"], p_sh["decoder"])
  rep = step_lib.NamedSharding(mesh, step_lib.P())
  abstract = jax.eval_shape(lambda t: {"step": jax.numpy.zeros((), jax.numpy.int32), "params": t,
                                       "opt_state": tx.init(t)}, trainable)
  state_sh = jax.tree_util.tree_map(lambda _: rep, abstract)
  log.info("LoRA rank %d on %s of %s: %d trainable parameters (frozen: %d)", lc.rank, ",".join(lc.targets),
           f"the top {lc.layers} blocks" if lc.layers else "every block", count(trainable), count(params["decoder"]))
  _, full_sh, full_abstract = with_bank(None, state_sh, abstract, mesh, bank_shape)
  restored = ckptr.restore_latest(shd.abstract_with_sharding(full_abstract, full_sh))
  if restored is not None:
    step, state, it_state = restored
    return state, full_sh, it_state, f"resumed LoRA adapters from {ckptr.directory} step {step} on {how}", \
        frozen, p_sh["decoder"]
  state = jax.jit(lambda t: {"step": jax.numpy.zeros((), jax.numpy.int32), "params": t, "opt_state": tx.init(t)},
                  out_shardings=state_sh)(trainable)
  state, _, _ = with_bank(state, state_sh, abstract, mesh, bank_shape)
  return state, full_sh, None, f"LoRA adapters on {how}", frozen, p_sh["decoder"]


class FullFinetuning:
  """Every weight trains: the train state holds the model's params (blocks stacked when scanned)."""

  to_params: Callable | None = None     # the step's params are the model's own
  frozen = frozen_sharding = None       # nothing is held outside the train state

  def start(self, config, workdir, parts: RunParts, tx, mesh, shapes, ckptr, bank_shape=None):
    """(state, state shardings, iterator state or None, how it started)."""
    return initial_state(config, workdir, parts, tx, mesh, shapes, ckptr, bank_shape)

  def step_args(self) -> tuple:
    return ()

  def model_params(self, state) -> Any:
    """The model's per-layer params of a train state (validation and export read these)."""
    from calrec_jax.model.layer_stack import unstack_layers
    return unstack_layers(state["params"])

  def export_params(self, state) -> Any:
    """Host params to export (a collective: every process calls it)."""
    from calrec_jax.model.layer_stack import unstack_layers
    return unstack_layers(shd.gather_to_host(state["params"]))


class LoraFinetuning:
  """LoRA adapters (and the projection head, if any) train; the decoder's weights are frozen, read by restore
  steps 2-4 at every start and passed to the step as an argument (closed over, jit would bake them into the
  program as constants: a 0.7 GB executable for Gemma-3-270M that took minutes to compile)."""

  def __init__(self, lora):
    from calrec_jax.adapters.lora import trainable_to_params
    self.lora = lora
    self.frozen = self.frozen_sharding = None
    self.to_params = lambda trainable, base: trainable_to_params(base, trainable, lora)  # noqa: E731
    self._merge = jax.jit(self.to_params)

  def start(self, config, workdir, parts: RunParts, tx, mesh, shapes, ckptr, bank_shape=None):
    state, state_sh, it_state, how, self.frozen, self.frozen_sharding = lora_initial_state(
        config, parts, tx, mesh, shapes, ckptr, self.lora, bank_shape)
    return state, state_sh, it_state, how

  def step_args(self) -> tuple:
    return (self.frozen,)

  def model_params(self, state) -> Any:
    """The adapters merged into the frozen weights."""
    return self._merge(state["params"], self.frozen)

  def export_params(self, state) -> Any:
    from calrec_jax.model.layer_stack import unstack_layers
    return unstack_layers(shd.gather_to_host(self.model_params(state)))


def finetuning_mode(config):
  """The mode a config asks for: LoRA when model.lora_rank > 0, else full finetuning."""
  from calrec_jax.adapters.lora import LoraConfig
  lora = LoraConfig.from_config(config.model)
  return FullFinetuning() if lora is None else LoraFinetuning(lora)
