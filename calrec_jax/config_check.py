"""Validate a run config before anything heavy starts; every message names the key."""
from __future__ import annotations

from calrec_jax.errors import ConfigError

CHOICES = {
    "data.source": ("synthetic", "prepared", "recbole", "amazon_raw", "tfds"),
    "model.compute_dtype": ("float32", "bfloat16"),
    "model.attention": ("einsum", "xla", "cudnn"),
    "optim.name": ("adamw", "adafactor"),
    "optim.schedule": ("cosine", "linear", "constant"),
    "eval.split": ("valid", "test"),
    "eval.retrieval": ("bm25", "dense"),
    "data.packing": ("prefix", "sequence"),
    "loss.lm_vocab": ("full", "catalog"),
    "loss.negatives": ("batch", "catalog"),
}
POSITIVE = ("data.max_len", "data.max_item_tokens", "data.max_history", "data.batch_size", "train.num_steps",
            "train.log_every", "ckpt.every", "ckpt.keep", "ckpt.save_concurrent_gb", "optim.grad_accum",
            "loss.vocab_chunk", "eval.batch_size", "eval.num_samples", "eval.max_new_tokens", "tokenizer.vocab_size",
            "data.pack_window", "data.pack_context", "data.pack_max_len", "data.pack_slots", "data.pack_item_len",
            "loss.bank_refresh_steps")
NON_NEGATIVE = ("loss.w_nig", "loss.w_tt", "loss.w_ut", "optim.learning_rate", "optim.weight_decay",
                "train.eval_every", "eval.max_users", "eval.temperature", "data.mixture_alpha", "model.lora_rank",
                "compile_cache.min_compile_secs", "train.peak_flops")


def _get(config, key):
  node = config
  for part in key.split("."):
    if part not in node:
      raise ConfigError(f"config key {key!r} is missing (configs should start from configs/base.py)")
    node = node[part]
  return node


def _walk(node, prefix=""):
  for key in node.keys():
    value = node[key]
    if hasattr(value, "keys"):
      yield from _walk(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def _int_list(config, key: str, minimum: int = 1) -> list[int]:
  text = str(_get(config, key))
  try:
    values = [int(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise ConfigError(f"{key}={text!r}: expected comma-separated integers, e.g. '1,5,10,20'") from None
  if any(v < minimum for v in values):
    raise ConfigError(f"{key}={text!r}: every value must be >= {minimum}")
  return values


def validate_config(config) -> None:
  """Every check that can be made before data is read or anything is compiled; raises ConfigError naming the key."""
  import math
  for key, value in _walk(config):
    if isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f"{key}={value}: must be a finite number")
  for key, allowed in CHOICES.items():
    if _get(config, key) not in allowed:
      raise ConfigError(f"{key}={_get(config, key)!r}; choose one of {allowed}")
  for key in POSITIVE:
    if not _get(config, key) > 0:
      raise ConfigError(f"{key}={_get(config, key)!r} must be > 0")
  for key in NON_NEGATIVE:
    if _get(config, key) < 0:
      raise ConfigError(f"{key}={_get(config, key)!r} must be >= 0")
  if config.model.attention == "cudnn" and config.model.compute_dtype != "bfloat16":
    raise ConfigError("model.attention='cudnn' runs in bfloat16 only; set model.compute_dtype='bfloat16' "
                      "or model.attention='xla'")
  if config.data.packing == "sequence":
    from calrec_jax.data.packed import PackSpec
    d = config.data
    PackSpec(d.pack_window, d.pack_context, d.pack_max_len, d.pack_slots, d.pack_item_len)  # names the key
  from calrec_jax.train.metrics_writer import parse_references
  parse_references(config.eval.reference_valid_ndcg)
  if config.loss.negatives == "catalog" and config.loss.symmetric:
    raise ConfigError("loss.symmetric is not available with loss.negatives='catalog' (the bank has no gradient "
                      "to give the item->user direction); set loss.symmetric=False or loss.negatives='batch'")
  if not 0 < config.loss.temperature:
    raise ConfigError("loss.temperature must be > 0")
  if not 0 <= config.data.min_attribute_coverage <= 1:
    raise ConfigError(f"data.min_attribute_coverage={config.data.min_attribute_coverage} must be in [0, 1]")
  if config.model.lora_rank:
    from calrec_jax.adapters.lora import LoraConfig
    LoraConfig.from_config(config.model)  # unknown lora_targets: ConfigError naming them
  if not 0 < config.eval.top_p <= 1:
    raise ConfigError(f"eval.top_p={config.eval.top_p} must be in (0, 1]")
  if config.eval.top_k < 0:
    raise ConfigError(f"eval.top_k={config.eval.top_k} must be >= 0 (0: off)")
  if not _int_list(config, "eval.ks"):
    raise ConfigError("eval.ks is empty; give the cut-offs, e.g. '1,5,10,20'")
  _int_list(config, "data.length_buckets")
  names = [c.strip() for c in str(config.data.categories).split(",") if c.strip()]
  if config.data.source == "synthetic":
    from calrec_jax.data.synthetic import CATEGORIES
    unknown = [n for n in names if n not in CATEGORIES]
    if unknown:
      raise ConfigError(f"data.categories: unknown synthetic categories {unknown}; choose from {sorted(CATEGORIES)}")
    if config.data.synthetic_users:
      users = _int_list(config, "data.synthetic_users")
      if len(users) != len(names or CATEGORIES):
        raise ConfigError(f"data.synthetic_users={config.data.synthetic_users!r} needs one count per category of "
                          f"data.categories ({len(names or CATEGORIES)})")
  if config.data.source == "synthetic" and not names:
    from calrec_jax.data.synthetic import CATEGORIES
    names = sorted(CATEGORIES)  # all of them are loaded
  if config.data.eval_category and names and config.data.eval_category not in names:
    raise ConfigError(f"data.eval_category={config.data.eval_category!r} is not among data.categories {names}")
  if config.data.batch_size % config.optim.grad_accum:
    raise ConfigError(f"data.batch_size={config.data.batch_size} must be divisible by optim.grad_accum")
