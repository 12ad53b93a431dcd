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
            "loss.vocab_chunk", "eval.batch_size", "eval.item_batch_size", "eval.num_samples", "eval.max_new_tokens", "tokenizer.vocab_size",
            "data.pack_window", "data.pack_context", "data.pack_max_len", "data.pack_slots", "data.pack_item_len",
            "loss.bank_refresh_steps", "pipeline.stage1_steps", "pipeline.stage2_steps")
NON_NEGATIVE = ("data.user_tokens", "optim.learning_rate", "optim.weight_decay", "optim.item_id_sgd_rate",
                "optim.item_bias_rate", "optim.item_id_min_count",
                "loss.sampled_negatives", "train.eval_every", "eval.max_users", "eval.valid_items", "eval.temperature", "data.mixture_alpha", "model.lora_rank",
                "compile_cache.min_compile_secs", "train.peak_flops", "pipeline.stage2_learning_rate")


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


def _check_fusion(ev) -> None:
  """eval.fusion: known signals, a metric the evaluation reports, and the test split (weights come from valid)."""
  from calrec_jax.eval.evaluate import FUSION_SIGNALS
  signals = [s.strip() for s in str(ev.fusion).split(",") if s.strip()]
  unknown = [s for s in signals if s not in FUSION_SIGNALS]
  if unknown:
    raise ConfigError(f"eval.fusion: unknown signal {unknown[0]!r}; choose from {FUSION_SIGNALS}")
  if len(set(signals)) != len(signals):
    raise ConfigError(f"eval.fusion={ev.fusion!r} names a signal twice")
  if "beam" in signals and not ev.beams:
    raise ConfigError("eval.fusion names 'beam' but eval.beams is 0; set eval.beams (e.g. 20) or drop 'beam'")
  if not signals:
    return
  if ev.split != "test":
    raise ConfigError("eval.fusion chooses its weights on the validation split, so it reports the test split "
                      "only; set eval.split='test' or eval.fusion=''")
  ks = [int(k) for k in str(ev.ks).split(",") if k.strip()]
  allowed = ["mrr"] + [f"recall@{k}" for k in ks] + [f"ndcg@{k}" for k in ks if k > 1]
  if ev.fusion_metric not in allowed:
    raise ConfigError(f"eval.fusion_metric={ev.fusion_metric!r}; choose one of {allowed} (from eval.ks)")
  if ev.fusion_history_items < 1:
    raise ConfigError(f"eval.fusion_history_items={ev.fusion_history_items} must be >= 1")
  from calrec_jax.eval.fusion_methods import METHODS
  if ev.get("fusion_method", "weights") not in METHODS:
    raise ConfigError(f"eval.fusion_method={ev.fusion_method!r}; choose one of {sorted(METHODS)}")


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
  from calrec_jax.train.objective import TERMS
  for key in NON_NEGATIVE + tuple(f"loss.w_{name}" for name in TERMS):  # every registered loss term's weight
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
  if config.loss.sampled_negatives:
    m = config.loss.sampled_negatives
    if config.loss.negatives != "catalog":
      raise ConfigError(f"loss.sampled_negatives={m} adds catalog items to the item bank's keys, which "
                        "loss.negatives='batch' has none of; set loss.negatives='catalog' or the count to 0")
    if config.optim.grad_accum > 1:
      raise ConfigError(f"loss.sampled_negatives={m} is not available with optim.grad_accum="
                        f"{config.optim.grad_accum}; set optim.grad_accum=1 or loss.sampled_negatives=0")
    if config.model.cache_frozen_layers:
      raise ConfigError(f"loss.sampled_negatives={m} encodes token rows, which model.cache_frozen_layers replaces "
                        "by cached states; set model.cache_frozen_layers=0 or loss.sampled_negatives=0")
  if config.optim.item_id_sgd_rate and not config.model.item_id_offsets:
    raise ConfigError(f"optim.item_id_sgd_rate={config.optim.item_id_sgd_rate} trains the item identity table, which "
                      "model.item_id_offsets=False leaves out; set model.item_id_offsets=True or the rate to 0")
  if config.optim.item_id_min_count and not (config.model.item_id_offsets or config.model.item_bias):
    raise ConfigError(f"optim.item_id_min_count={config.optim.item_id_min_count} chooses which rows of the per-item "
                      "tables train, which model.item_id_offsets=False and model.item_bias=False leave out; set "
                      "one of them True or the count to 0")
  if config.model.item_bias and not config.optim.item_bias_rate:
    raise ConfigError("model.item_bias=True with optim.item_bias_rate=0 would keep every item's bias at zero; set "
                      "optim.item_bias_rate > 0 (e.g. 0.05) or model.item_bias=False")
  if not 0 < config.loss.temperature:
    raise ConfigError("loss.temperature must be > 0")
  if not 0 <= config.data.min_attribute_coverage <= 1:
    raise ConfigError(f"data.min_attribute_coverage={config.data.min_attribute_coverage} must be in [0, 1]")
  if not 0 <= config.data.cold_start_items < 1:
    raise ConfigError(f"data.cold_start_items={config.data.cold_start_items} must be in [0, 1) (0: off)")
  if config.model.lora_rank:
    from calrec_jax.adapters.lora import LoraConfig
    LoraConfig.from_config(config.model)  # unknown lora_targets: ConfigError naming them
  if config.model.cache_frozen_layers:
    from calrec_jax.train.layer_cache import check_config
    check_config(config)
  if not 0 < config.eval.top_p <= 1:
    raise ConfigError(f"eval.top_p={config.eval.top_p} must be in (0, 1]")
  if config.eval.top_k < 0:
    raise ConfigError(f"eval.top_k={config.eval.top_k} must be >= 0 (0: off)")
  if not _int_list(config, "eval.ks"):
    raise ConfigError("eval.ks is empty; give the cut-offs, e.g. '1,5,10,20'")
  if config.eval.beams < 0 or config.eval.beam_length_penalty < 0:
    raise ConfigError(f"eval.beams={config.eval.beams}, eval.beam_length_penalty={config.eval.beam_length_penalty}: "
                      "both must be >= 0")
  _check_fusion(config.eval)
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
