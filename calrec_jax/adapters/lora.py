"""LoRA adapters (Hu et al. 2021) as a pure transformation of the decoder's params.

A targeted projection W (e.g. attn/q_proj [D, N, H], mlp/down_proj [F, D]) is viewed as a matrix
[inputs, outputs] and used as W + (alpha / r) * A @ B, with A [inputs, r] random and B [r, outputs] zero at
init, so a fresh adapter leaves the model unchanged. Training differentiates only the adapters (and the
projection head, if any): no optimizer state and no weight gradients for the frozen weights. `merge` folds the
adapters into the weights, which is what validation, evaluation and export use.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# projection name -> how many leading axes of its weight are inputs
PROJECTIONS = {"q_proj": 1, "k_proj": 1, "v_proj": 1, "o_proj": 2, "gate_proj": 1, "up_proj": 1, "down_proj": 1}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  rank: int = 8
  alpha: float = 16.0
  targets: tuple[str, ...] = tuple(PROJECTIONS)
  layers: int = 0  # adapters in the top `layers` blocks only (0: every block); nothing below them is
  #                  differentiated, so the backward pass stops at the lowest adapted block

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  @classmethod
  def from_config(cls, model_cfg) -> "LoraConfig | None":
    """From the config's `model` section (lora_rank, lora_alpha, lora_targets); None when lora_rank is 0."""
    if not model_cfg.lora_rank:
      return None
    targets = tuple(t.strip() for t in str(model_cfg.lora_targets).split(",") if t.strip())
    unknown = [t for t in targets if t not in PROJECTIONS]
    if unknown or not targets:
      from calrec_jax.errors import ConfigError
      raise ConfigError(f"model.lora_targets={model_cfg.lora_targets!r}: unknown {unknown}; choose from "
                        f"{', '.join(PROJECTIONS)}")
    layers = int(model_cfg.get("lora_layers", 0))
    if layers < 0:
      from calrec_jax.errors import ConfigError
      raise ConfigError(f"model.lora_layers={layers} must be >= 0 (0: every block)")
    return cls(int(model_cfg.lora_rank), float(model_cfg.lora_alpha), targets, layers)


def _targets(decoder_params, lc: LoraConfig) -> list[tuple[tuple[str, ...], Any]]:
  """(path, weight) of every targeted projection, in a fixed order."""
  out = []
  n_layers = len([k for k in decoder_params if str(k).startswith("layers_")])
  for path, leaf in jax.tree_util.tree_leaves_with_path(decoder_params):
    keys = tuple(getattr(k, "key", str(k)) for k in path)
    if keys[-1] not in lc.targets:
      continue
    block = next((int(k[len("layers_"):]) for k in keys if k.startswith("layers_")), None)
    if lc.layers and block is not None and block < n_layers - lc.layers:
      continue
    out.append((keys, leaf))
  return out


def _key(path: tuple[str, ...]) -> str:
  return "/".join(path)


def init_adapters(decoder_params, lc: LoraConfig, seed: int = 0) -> dict[str, dict[str, jax.Array]]:
  """{'layers_0/attn/q_proj': {'a': [inputs, r], 'b': [r, outputs]}, ...}; A ~ N(0, 1/inputs), B = 0."""
  adapters = {}
  rng = jax.random.PRNGKey(seed)
  for i, (path, w) in enumerate(_targets(decoder_params, lc)):
    n_in = PROJECTIONS[path[-1]]
    fan_in, fan_out = int(np.prod(w.shape[:n_in])), int(np.prod(w.shape[n_in:]))
    if lc.rank >= min(fan_in, fan_out):
      from calrec_jax.errors import ConfigError
      raise ConfigError(f"model.lora_rank={lc.rank} is not below the dimensions of {_key(path)} ({fan_in} x "
                        f"{fan_out}): the adapters would be larger than the weight; use a rank below "
                        f"{min(fan_in, fan_out)} (typically 4-64), or full finetuning (model.lora_rank=0)")
    a = jax.random.normal(jax.random.fold_in(rng, i), (fan_in, lc.rank), jnp.float32) / np.sqrt(fan_in)
    adapters[_key(path)] = {"a": a, "b": jnp.zeros((lc.rank, fan_out), jnp.float32)}
  if not adapters:
    from calrec_jax.errors import ConfigError
    raise ConfigError(f"model.lora_targets={','.join(lc.targets)} matches no weight of this model")
  return adapters


def merge(decoder_params, adapters: dict, lc: LoraConfig):
  """Decoder params with every adapter folded in: W + scale * (A @ B) reshaped to W's shape."""
  def one(path, w):
    keys = tuple(getattr(k, "key", str(k)) for k in path)
    ad = adapters.get(_key(keys))
    if ad is None:
      return w
    delta = (ad["a"] @ ad["b"]).reshape(w.shape)  # [inputs, outputs] -> W's named axes
    return (w.astype(jnp.float32) + lc.scale * delta).astype(w.dtype)
  return jax.tree_util.tree_map_with_path(one, decoder_params)


def trainable_to_params(base_decoder, trainable: dict, lc: LoraConfig) -> dict:
  """The two-tower params tree from frozen decoder weights and the trainable tree {'lora', ['proj'],
  ['item_offsets'], ['item_bias']} (the projection head and the learned per-item tables pass through)."""
  params = {"decoder": merge(base_decoder, trainable["lora"], lc)}
  params.update({k: v for k, v in trainable.items() if k != "lora"})
  return params


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))
