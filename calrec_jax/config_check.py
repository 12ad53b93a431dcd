"""Validate a run config before anything heavy starts; every message names the key."""
from __future__ import annotations

from calrec_jax.errors import ConfigError

CHOICES = {
    "data.source": ("synthetic", "prepared", "recbole", "amazon_raw", "tfds"),
    "model.compute_dtype": ("float32", "bfloat16"),
    "optim.name": ("adamw", "adafactor"),
    "optim.schedule": ("cosine", "linear", "constant"),
    "eval.split": ("valid", "test"),
    "eval.retrieval": ("bm25", "dense"),
}
POSITIVE = ("data.max_len", "data.max_item_tokens", "data.max_history", "data.batch_size", "train.num_steps",
            "train.log_every", "ckpt.every", "ckpt.keep", "optim.grad_accum", "loss.vocab_chunk",
            "eval.batch_size", "eval.num_samples", "eval.max_new_tokens", "tokenizer.vocab_size")
NON_NEGATIVE = ("loss.w_nig", "loss.w_tt", "loss.w_ut", "optim.learning_rate", "optim.weight_decay",
                "train.eval_every", "eval.max_users", "eval.temperature", "data.mixture_alpha")


def _get(config, key):
  node = config
  for part in key.split("."):
    if part not in node:
      raise ConfigError(f"config key {key!r} is missing (configs should start from configs/base.py)")
    node = node[part]
  return node


def validate_config(config) -> None:
  for key, allowed in CHOICES.items():
    if _get(config, key) not in allowed:
      raise ConfigError(f"{key}={_get(config, key)!r}; choose one of {allowed}")
  for key in POSITIVE:
    if not _get(config, key) > 0:
      raise ConfigError(f"{key}={_get(config, key)!r} must be > 0")
  for key in NON_NEGATIVE:
    if _get(config, key) < 0:
      raise ConfigError(f"{key}={_get(config, key)!r} must be >= 0")
  if not 0 < config.loss.temperature:
    raise ConfigError("loss.temperature must be > 0")
  if not 0 < config.eval.top_p <= 1:
    raise ConfigError(f"eval.top_p={config.eval.top_p} must be in (0, 1]")
  if config.data.batch_size % config.optim.grad_accum:
    raise ConfigError(f"data.batch_size={config.data.batch_size} must be divisible by optim.grad_accum")
