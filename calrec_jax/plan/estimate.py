"""Memory and time of one CALRec train step per device, from the model config, mesh, batch and lengths alone.

Params, optimizer state and gradients are exact: the parameter tree comes from `jax.eval_shape` and each array is
divided as the logical-axis rules place it on the mesh. Activations are what the backward pass keeps per token
of each tower and layer (only each block's input with remat), plus one vocabulary chunk of the LM loss: a model
of XLA's buffers, checked against XLA's compiled memory analysis (`compiled_bytes`) in the tests. FLOPs:
6 x (matmul params) per token, attention's two [T, S] products, the LM head over the target tokens; remat adds
one more forward pass of the blocks.
"""
from __future__ import annotations

import dataclasses
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np

from calrec_jax.model import variables
from calrec_jax.model.config import ModelConfig
from calrec_jax.model.partitioning import DEFAULT_RULES, logical_spec

GiB = 2 ** 30
ACCELERATORS = {  # dense bf16 peak FLOP/s and memory per chip (vendor figures)
    "tpu-v5e": (197e12, 16 * GiB), "tpu-v5p": (459e12, 95 * GiB), "tpu-v4": (275e12, 32 * GiB),
    "h100": (989e12, 80 * GiB), "h200": (989e12, 141 * GiB), "a100": (312e12, 80 * GiB),
}


@dataclasses.dataclass(frozen=True)
class StepShape:
  """Everything besides the architecture that sets a step's memory and FLOPs."""
  global_batch: int
  seq_len: int          # joint tower tokens (prompt + target)
  target_len: int       # LM target tokens (item tokens + EOS)
  item_len: int         # item tower tokens (BOS + item + EOS)
  mesh: tuple[int, int, int]  # (data, fsdp, tensor)
  remat: bool = False
  compute_bytes: int = 4      # 4: float32, 2: bfloat16 compute (params and AdamW moments stay float32)
  scan_layers: bool = False
  vocab_chunk: int = 16384

  @property
  def devices(self) -> int:
    return int(np.prod(self.mesh))

  @property
  def batch_per_device(self) -> float:
    return self.global_batch / (self.mesh[0] * self.mesh[1])


def _fake_mesh(mesh: tuple[int, int, int]):
  return types.SimpleNamespace(shape={"data": mesh[0], "fsdp": mesh[1], "tensor": mesh[2]})


def _divisor(spec, mesh) -> int:
  return int(np.prod([mesh.shape[a] for axes in spec for a in ((axes,) if isinstance(axes, str) else (axes or ()))]))


def param_tree(cfg: ModelConfig, projection_dim: int = 0):
  """Abstract params of the two-tower model, boxed with their logical axis names."""
  from calrec_jax.model.variables import init_boxed as _init_variables, example_batch
  from calrec_jax.model.two_tower import TwoTower
  model = TwoTower(cfg, projection_dim)
  return jax.eval_shape(lambda r: _init_variables(model, r, example_batch(1, 8, 4, 6)), jax.random.PRNGKey(0))


@functools.lru_cache(maxsize=32)
def _param_shapes(cfg: ModelConfig) -> tuple[tuple[tuple[int, ...], tuple], ...]:
  """(shape, logical axis names) of every parameter."""
  import flax.linen as nn
  out = []
  for leaf in jax.tree_util.tree_leaves(param_tree(cfg), is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)):
    shape = leaf.value.shape if isinstance(leaf, nn.LogicallyPartitioned) else leaf.shape
    names = tuple(leaf.names) if isinstance(leaf, nn.LogicallyPartitioned) else (None,) * len(shape)
    out.append((tuple(shape), names))
  return tuple(out)


def sharded_elements(cfg: ModelConfig, mesh: tuple[int, int, int], rules=DEFAULT_RULES) -> tuple[int, int]:
  """(all parameters, parameters on one device) under the logical-axis rules."""
  fake = _fake_mesh(mesh)
  total = local = 0
  for shape, names in _param_shapes(cfg):
    n = int(np.prod(shape))
    total += n
    local += n // _divisor(logical_spec(names, shape, fake, rules), fake)
  return total, local


def _split(size: int, tensor: int) -> float:
  """`size` elements of an axis sharded over a tensor axis of size `tensor` (whole when indivisible, as the
  sharding rules drop indivisible axes)."""
  return size / tensor if size % tensor == 0 else size


def _block_activation_elements(cfg: ModelConfig, tokens: int, tensor: int) -> float:
  """Elements one block keeps for the backward pass for a sequence of `tokens`, on one device of a tensor axis
  of size `tensor` (heads, attention probabilities and the MLP width are split over it)."""
  d, n, k, h, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff
  norms = 4 if cfg.traits.sandwich_norms else 2
  return tokens * ((3 + norms) * d + _split(2 * n * h, tensor) + _split(2 * k * h, tensor)
                   + _split(n, tensor) * tokens + _split(4 * f, tensor))


def _tower_probability_elements(cfg: ModelConfig, tokens: int, tensor: int, remat: bool) -> float:
  """The part of `_tower_activation_elements` that is attention probabilities [N, T, S] (one block's with remat)."""
  return tokens * _split(cfg.n_heads, tensor) * tokens * (1 if remat else cfg.n_layers)


def _tower_activation_elements(cfg: ModelConfig, tokens: int, tensor: int, remat: bool) -> float:
  """Elements one sequence keeps through every layer: all of each block's activations, or with remat only each
  block's input (one block's activations are rebuilt at a time in the backward pass)."""
  if remat:
    return cfg.n_layers * tokens * cfg.d_model + _block_activation_elements(cfg, tokens, tensor)
  return cfg.n_layers * _block_activation_elements(cfg, tokens, tensor) + 2 * tokens * cfg.d_model


# Fitted on XLA's compiled memory analysis of full-finetuning float32 steps (tiny, small, SmolLM2-135M,
# Gemma-3-270M on 1 device): buffers live at once during the backward pass, and during the AdamW update
# (the gradients and the tied embedding's second gradient; new moments and params are written in place).
ACTIVATION_FACTOR = 1.40
PARAMS_IN_BACKWARD = 0.2
SCAN_ACTIVATIONS = 0.33   # scanned blocks: the loop's stacked copies of the saved activations


def estimate(cfg: ModelConfig, shape: StepShape) -> dict[str, float]:
  """Per device: bytes of params, optimizer state (AdamW), gradients, activations, XLA-style temporaries and the
  total (arguments + temporaries); FLOPs of the whole step; the parameter count. Full finetuning."""
  total, local = sharded_elements(cfg, shape.mesh)
  fake = _fake_mesh(shape.mesh)
  emb_spec = logical_spec(("vocab", "embed"), (cfg.vocab_size, cfg.d_model), fake, DEFAULT_RULES)
  emb_local = cfg.vocab_size * cfg.d_model // _divisor(emb_spec, fake)
  b, t = shape.batch_per_device, shape.mesh[2]
  per_seq = (_tower_activation_elements(cfg, shape.seq_len, t, shape.remat)
             + _tower_activation_elements(cfg, shape.item_len, t, shape.remat))
  chunk = min(shape.vocab_chunk, cfg.vocab_size)
  loss = shape.target_len * (2 * _split(chunk, t) + 4 * cfg.d_model)  # a float32 logits chunk and its exp
  activations = b * (per_seq * shape.compute_bytes + loss * 4)
  probabilities = b * shape.compute_bytes * (_tower_probability_elements(cfg, shape.seq_len, t, shape.remat)
                                             + _tower_probability_elements(cfg, shape.item_len, t, shape.remat))
  params = local * 4.0
  block_params = params - emb_local * 4.0
  out = {"params": params, "optimizer": 2 * params, "gradients": params, "activations": activations}
  # attention's probabilities are kept once and its backward pass makes no second, transposed copy of them or of
  # dlogits (softmax_attention), so they take no share of the factor for buffers alive beside the saved ones
  backward_peak = ACTIVATION_FACTOR * activations - (ACTIVATION_FACTOR - 1) * probabilities + PARAMS_IN_BACKWARD * params
  if cfg.tie_embeddings:  # the LM head's gradient of the tied embedding, assembled over the vocabulary chunks
    backward_peak += emb_local * 4.0
  if shape.compute_bytes == 2:  # the bfloat16 copy of the weights the passes read
    backward_peak += params / 2
  if shape.scan_layers:  # the loop's stacked residuals (the weights are stored stacked: model/layer_stack.py)
    backward_peak += SCAN_ACTIVATIONS * activations
  if shape.mesh[1] > 1:  # fsdp: the blocks' weights are gathered for the passes, and the embedding is gathered
    #                      with its gradient accumulated whole before the reduce-scatter
    backward_peak += (block_params + 2 * emb_local * 4.0) * shape.mesh[1] * shape.compute_bytes / 4
  update_peak = params + emb_local * 4.0 * (1 if cfg.tie_embeddings else 0)  # the gradients (+ the tied
  #                                          embedding's second gradient); the update itself is written in place
  batch_bytes = b * (shape.seq_len * 12 + shape.target_len * 12 + shape.item_len * 10 + 8)
  out["temporaries"] = max(backward_peak, update_peak)
  out["batch"] = float(batch_bytes)
  out["total"] = 3 * params + batch_bytes + out["temporaries"]  # arguments (params, moments, batch) + temporaries
  out["flops"] = step_flops(cfg, shape, total)
  out["param_count"] = float(total)
  return out


def step_flops(cfg: ModelConfig, shape: StepShape, param_count: int) -> float:
  """Matmul FLOPs of one step over all devices: forward + backward (2x forward), + a forward with remat."""
  d, n, h = cfg.d_model, cfg.n_heads, cfg.head_dim
  matmul = param_count - cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
  tokens = shape.global_batch * (shape.seq_len + shape.item_len)
  attn = shape.global_batch * cfg.n_layers * 4 * n * h * (shape.seq_len ** 2 + shape.item_len ** 2)
  head = shape.global_batch * shape.target_len * 2 * d * cfg.vocab_size
  blocks = 2 * matmul * tokens + attn
  return float(3 * (blocks + head) + (blocks if shape.remat else 0))


def step_seconds(flops: float, devices: int, peak_flops: float, mfu: float) -> float:
  return flops / (devices * peak_flops * mfu)


def compile_train_step(cfg: ModelConfig, shape: StepShape, tx, attention: str = "einsum"):
  """The real train step of `shape`, compiled ahead of time on the first `shape.devices` local devices.

  Returns (compiled step, model, mesh, abstract batch, state shardings)."""
  from calrec_jax.model import sharding as shd
  from calrec_jax.train import objective
  from calrec_jax.train import step as step_lib
  from calrec_jax.model.two_tower import TwoTower
  mesh = shd.make_mesh(*shape.mesh, devices=jax.devices()[:shape.devices])
  dtype = jnp.bfloat16 if shape.compute_bytes == 2 else jnp.float32
  model = TwoTower(cfg, 0, dtype, jnp.float32, shape.remat, shape.scan_layers, attention)
  batch = variables.example_batch(shape.global_batch, shape.seq_len, shape.target_len, shape.item_len)
  state_sh, abstract = step_lib.state_shardings(model, tx, mesh, batch)
  lc = objective.LossConfig(vocab_chunk=shape.vocab_chunk)
  step = step_lib.jit_train_step(step_lib.make_train_step(model, tx, lc), mesh, state_sh)
  compiled = step.lower(shd.abstract_with_sharding(abstract, state_sh), batch).compile()
  return compiled, model, mesh, batch, state_sh


def compiled_bytes(cfg: ModelConfig, shape: StepShape, lr: float = 1e-4, attention: str = "einsum"
                   ) -> dict[str, float]:
  """XLA's memory analysis of the real compiled train step on the local devices (arguments, temporaries)."""
  import optax
  mem = compile_train_step(cfg, shape, optax.adamw(lr), attention)[0].memory_analysis()
  return {"arguments": float(mem.argument_size_in_bytes), "temporaries": float(mem.temp_size_in_bytes),
          "total": float(mem.argument_size_in_bytes + mem.temp_size_in_bytes)}
