"""Build everything a run needs from its config: data, tokenizer, model, encoder (shared by training, evaluation
and the recommender), and the run files of a workdir (config.json, model_config.json, tokenizer)."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import jax.numpy as jnp

from calrec_jax.data import sources
from calrec_jax.data.examples import ExampleEncoder, ExampleSpec, require_item_texts
from calrec_jax.data.records import CategoryData
from calrec_jax.data.text import FIRST_ITEM, NEXT_ITEM, PROMPT_HEADER, render_item, rendered_attributes
from calrec_jax.data.tokenizer import Tokenizer, find_tokenizer, load_tokenizer, train_tokenizer
from calrec_jax.errors import ConfigError
from calrec_jax.model import config as model_config
from calrec_jax.model.config import ModelConfig
from calrec_jax.model.two_tower import TwoTower

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RunParts:
  categories: list[CategoryData]
  tokenizer: Tokenizer  # or data.hf_tokenizer.HFTokenizer: the same interface
  model_cfg: ModelConfig
  model: TwoTower
  encoder: ExampleEncoder
  pretrained_params: dict | None  # decoder params, host numpy


def example_spec(dc) -> ExampleSpec:
  """The encoder's spec from a config's data section (a run's recorded one included)."""
  return ExampleSpec(max_len=dc.max_len, max_history=dc.max_history, max_item_tokens=dc.max_item_tokens,
                     length_buckets=tuple(int(x) for x in sources.split_names(dc.length_buckets)),
                     attributes=tuple(sources.split_names(dc.attributes)),
                     min_attribute_coverage=dc.min_attribute_coverage,
                     user_tokens=dc.get("user_tokens", 0))  # 0: a run recorded before the key existed


def _from_process_zero(tok: Tokenizer) -> Tokenizer:
  """Multi-host: every process uses process 0's trained tokenizer (training is not bit-for-bit reproducible)."""
  import jax
  if jax.process_count() == 1:
    return tok
  import numpy as np
  from calrec_jax.model.host_collectives import broadcast_from_zero
  proto = np.frombuffer(tok.proto, np.uint8)
  n = int(broadcast_from_zero(np.int64(len(proto))))
  buf = np.zeros(n, np.uint8)
  buf[:min(n, len(proto))] = proto[:n]
  return Tokenizer(bytes(np.asarray(broadcast_from_zero(buf))), "process 0's trained tokenizer")


def build(config, workdir: str, categories: list[CategoryData] | None = None) -> RunParts:
  """Data -> tokenizer (pretrained, saved in workdir, given, or trained) -> model config -> model."""
  cats = categories if categories is not None else sources.load_categories(config.data)
  spec = example_spec(config.data)
  # per category, once (per item, this scanned the catalog once per item: quadratic)
  kept = [rendered_attributes(c.catalog.attributes, spec.attributes, spec.min_attribute_coverage) for c in cats]
  for c, names in zip(cats, kept):  # before any weights are read or a tokenizer is trained
    require_item_texts(c, names, spec.attributes)
  pretrained, cfg, tok = None, None, None
  saved_tok = find_tokenizer(workdir) if os.path.isdir(workdir) else None
  saved_cfg = os.path.join(workdir, "model_config.json")
  init_dir = config.ckpt.init_from if config.ckpt.init_from and os.path.isdir(config.ckpt.init_from) else ""
  init_cfg = os.path.join(init_dir, "model_config.json") if init_dir else ""
  from_init = bool(init_dir and os.path.exists(init_cfg) and find_tokenizer(init_dir))
  if from_init:
    _check_same_model(config, init_dir)
  if config.model.pretrained and not from_init:  # (params, tokenizer and config of an init_from run are its own)
    from calrec_jax.model.loading import load_pretrained
    log.info("reading pretrained weights %s (a GGUF file is dequantised to float32: 5-20 s for 100-300M "
             "parameters) ...", config.model.pretrained)
    t0 = time.time()
    cfg, pretrained, tok = load_pretrained(config.model.pretrained)
    log.info("read the pretrained weights in %.1fs", time.time() - t0)
    log.info("pretrained %s: %s, %d layers, d_model %d", config.model.pretrained, cfg.family, cfg.n_layers, cfg.d_model)
  init_tok = find_tokenizer(init_dir) if init_dir else None
  if config.tokenizer.path:
    tok = load_tokenizer(config.tokenizer.path)
  elif tok is None and saved_tok:
    tok = load_tokenizer(saved_tok)
  elif tok is None and init_tok:
    tok = load_tokenizer(init_tok)
  if tok is None and config.model.pretrained:
    raise ConfigError(f"model.pretrained={config.model.pretrained!r} holds no tokenizer (no tokenizer.model or "
                      "tokenizer.json beside the weights); set tokenizer.path to the checkpoint's tokenizer.model or "
                      "tokenizer.json")
  if tok is None:
    texts = [render_item(a, names) for c, names in zip(cats, kept) for a in c.catalog.attributes]
    texts.append("\n".join([PROMPT_HEADER, FIRST_ITEM, NEXT_ITEM]))
    log.info("training a SentencePiece tokenizer (vocabulary %d) on %d item texts ...", config.tokenizer.vocab_size,
             len(texts))
    tok = _from_process_zero(train_tokenizer(texts, config.tokenizer.vocab_size))
    log.info("trained a SentencePiece tokenizer on %d item texts (vocabulary %d)", len(texts), tok.vocab_size)
  if cfg is None:
    if os.path.exists(saved_cfg) or from_init:
      path = saved_cfg if os.path.exists(saved_cfg) else init_cfg
      with open(path, encoding="utf-8") as f:
        try:
          cfg = ModelConfig.from_dict(json.load(f))
        except ConfigError as e:  # a model this version does not know: name the file
          raise ConfigError(f"{path}: {e}") from None
    else:
      cfg = model_config.preset(config.model.preset, vocab_size=tok.vocab_size, bos_id=tok.bos_id,
                                eos_id=tok.eos_id, pad_id=tok.pad_id)
  if tok.vocab_size > cfg.vocab_size:
    raise ConfigError(f"tokenizer has {tok.vocab_size} pieces but the model vocabulary is {cfg.vocab_size}")
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.model.compute_dtype]
  offsets, bias = bool(config.model.get("item_id_offsets", False)), bool(config.model.get("item_bias", False))
  num_item_ids = sum(len(c.catalog) for c in cats) if offsets or bias else 0
  model = TwoTower(cfg, config.model.projection_dim, dtype, jnp.float32, config.model.remat,
                   config.model.scan_layers, config.model.attention, num_item_ids=num_item_ids,
                   id_offsets=offsets, id_bias=bias)
  return RunParts(cats, tok, cfg, model, ExampleEncoder(tok, cats, spec), pretrained)


def save_run_files(workdir: str, parts: RunParts, config) -> None:
  """The tokenizer file(s), model_config.json and config.json: what evaluation and export read back."""
  os.makedirs(workdir, exist_ok=True)
  parts.tokenizer.save_to(workdir)
  with open(os.path.join(workdir, "model_config.json"), "w", encoding="utf-8") as f:
    json.dump(parts.model_cfg.to_dict(), f, indent=1)
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    f.write(config.to_json_best_effort(indent=1))
  if parts.model.num_item_ids:  # which item each row of the learned per-item tables is (model/item_ids.py)
    from calrec_jax.model.item_ids import write_layout
    write_layout(workdir, parts.categories)


def _check_same_model(config, init_dir: str) -> None:
  """A run initialised from another trains that run's model: a config naming another one is an error, not a
  silent switch."""
  recorded = (load_run_config(init_dir) or {}).get("model", {})
  for key in ("pretrained", "preset"):
    if key not in recorded or (key == "preset" and (recorded.get("pretrained") or config.model.pretrained)):
      continue  # a pretrained model's preset is its own
    if str(recorded[key]) != str(config.model[key]):
      from calrec_jax.errors import ConfigError
      raise ConfigError(f"model.{key}={config.model[key]!r}, but ckpt.init_from={init_dir} trained "
                        f"model.{key}={recorded[key]!r}; a stage continues its init run's model: set "
                        f"model.{key}={recorded[key]!r}, or another ckpt.init_from")


def load_run_config(workdir: str) -> dict | None:
  """The config.json that `save_run_files` wrote (as a dict); None when there is none or it is unreadable."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    log.warning("%s is unreadable (%s); not comparing with the recorded run", path, e)
    return None
