"""GGUF files (llama.cpp) -> ModelConfig + decoder params + tokenizer, dequantised with the `gguf` package.

GGUF tensor names map to HF names, then the HF table applies. Two llama.cpp conventions are undone:
Llama q/k rows are permuted for interleaved RoPE, and Gemma norm weights are stored as (1 + w).
"""
from __future__ import annotations

import os
import re

import numpy as np

from calrec_jax.errors import WeightImportError
from calrec_jax.model.config import ModelConfig, gemma3_layer_types
from calrec_jax.model.weights import from_hf_tensors

GGUF_TO_HF = {
    "token_embd.weight": "embed_tokens.weight", "output_norm.weight": "norm.weight", "output.weight": "lm_head.weight",
}
BLOCK = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
GEMMA_NORMS = {"attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
               "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm"}
LLAMA_NORMS = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def open_gguf(path: str):
  """gguf.GGUFReader over `path`, parsing its header from a plain ndarray view of the memory map.

  The reader slices its np.memmap once per value of every metadata array (Gemma-3's 262,144 vocabulary strings,
  scores and types: about 1M slices); a memmap subclass pays Python-level bookkeeping on each, a plain view over the
  same mapping does not: the same fields and tensors, about 3x faster (benchmarks/gguf_read.py)."""
  import gguf

  class _PlainViewReader(gguf.GGUFReader):
    @property
    def data(self):
      return self._data

    @data.setter
    def data(self, mapped):  # set once in GGUFReader.__init__ (np.memmap); the view keeps the mapping alive
      self._data = np.asarray(mapped).view(np.ndarray)

  return _PlainViewReader(path)


def _field(reader, key, default=None):
  f = reader.fields.get(key)
  return default if f is None else f.contents()


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
  """Inverse of llama.cpp's `permute` of q/k rows (interleaved -> rotate-half RoPE)."""
  rows = w.shape[0]
  return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_config(reader, path: str) -> ModelConfig:
  arch = _field(reader, "general.architecture")
  if arch not in ("gemma3", "llama"):
    raise WeightImportError(f"{path}: GGUF architecture {arch!r} is not supported (gemma3, llama)")
  g = lambda k, d=None: _field(reader, f"{arch}.{k}", d)  # noqa: E731
  tokens = reader.fields.get("tokenizer.ggml.tokens")
  vocab = g("vocab_size") or (len(tokens.data) if tokens is not None else None)
  heads = g("attention.head_count")
  d = g("embedding_length")
  head_dim = g("attention.key_length") or d // heads
  n_layers = g("block_count")
  has_output = any(t.name == "output.weight" for t in reader.tensors)
  common = dict(vocab_size=int(vocab), d_model=int(d), n_layers=int(n_layers), n_heads=int(heads),
                n_kv_heads=int(g("attention.head_count_kv", heads)), head_dim=int(head_dim),
                d_ff=int(g("feed_forward_length")), norm_eps=float(g("attention.layer_norm_rms_epsilon", 1e-6)),
                rope_theta=float(g("rope.freq_base", 10_000.0)), tie_embeddings=not has_output,
                bos_id=int(_field(reader, "tokenizer.ggml.bos_token_id", 2)),
                eos_id=int(_field(reader, "tokenizer.ggml.eos_token_id", 1)),
                pad_id=int(_field(reader, "tokenizer.ggml.padding_token_id", 0)))
  if arch == "gemma3":
    scaling = _field(reader, "gemma3.rope.scaling.factor")
    return ModelConfig("gemma3", **common, rope_local_theta=10_000.0, sliding_window=int(g("attention.sliding_window", 512)),
                       layer_types=gemma3_layer_types(int(n_layers)), query_pre_attn_scalar=float(head_dim),
                       rope_scaling="linear" if scaling and scaling != 1.0 else "", rope_factor=float(scaling or 1.0))
  return ModelConfig("llama", **common)


def load_gguf(path: str) -> tuple[ModelConfig, dict, "object"]:
  """(config, decoder params float32, Tokenizer or None) of a GGUF file."""
  import gguf
  from calrec_jax.model.gguf_tokenizer import tokenizer_from_gguf
  if not os.path.exists(path):
    raise WeightImportError(f"{path}: GGUF file not found")
  try:
    reader = open_gguf(path)
  except Exception as e:  # noqa: BLE001
    raise WeightImportError(f"{path}: not a readable GGUF file ({e})") from None
  cfg = read_config(reader, path)
  norms = GEMMA_NORMS if cfg.traits.sandwich_norms else LLAMA_NORMS
  tensors = {}
  for t in reader.tensors:
    w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    w = w.reshape([int(x) for x in reversed(t.shape)])  # GGUF lists dims fastest-first
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", t.name)
    if m:
      layer, part = m.groups()
      if part in norms:
        name = f"layers.{layer}.{norms[part]}.weight"
      elif part in BLOCK:
        name = f"layers.{layer}.{BLOCK[part]}.weight"
      else:
        raise WeightImportError(f"{path}: unexpected tensor {t.name!r}")
      if part in norms or part in ("attn_q_norm", "attn_k_norm"):
        w = w - cfg.norm_offset  # llama.cpp stores a norm as the scale it applies: offset + w
      if not cfg.is_gemma and part == "attn_q":
        w = _unpermute(w, cfg.n_heads)
      if not cfg.is_gemma and part == "attn_k":
        w = _unpermute(w, cfg.n_kv_heads)
    elif t.name in GGUF_TO_HF:
      name = GGUF_TO_HF[t.name]
      if t.name == "output_norm.weight":
        w = w - cfg.norm_offset
    elif t.name == "rope_freqs.weight":
      continue
    else:
      raise WeightImportError(f"{path}: unexpected tensor {t.name!r}")
    tensors[name] = w
  tok = tokenizer_from_gguf(reader, path)
  if tok is None and _field(reader, "tokenizer.ggml.model") == "gpt2":  # byte-level BPE (SmolLM2, Llama 3, Qwen)
    from calrec_jax.data.hf_tokenizer import tokenizer_from_gguf_bpe
    tok = tokenizer_from_gguf_bpe(reader, path)
  return cfg, from_hf_tensors(tensors, cfg, path), tok
