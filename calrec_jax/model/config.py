"""Decoder architecture config: named presets, and configs read from a checkpoint's own metadata."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from calrec_jax.errors import ConfigError, WeightImportError



@dataclasses.dataclass(frozen=True)
class FamilyTraits:
  """What sets a model family apart, one field per architectural fact; a new family is one row of
  FAMILY_TRAITS (and its checkpoint naming in weights.py / gguf_import.py)."""
  mlp_activation: str        # 'gelu_tanh' (Gemma's GeGLU) or 'silu' (SwiGLU)
  sandwich_norms: bool       # RMSNorm after attention and after the MLP too, not only before (Gemma)
  norm_offset: float         # RMSNorm scales by (offset + w): Gemma keeps w - 1
  scale_embeddings: bool     # token embeddings times sqrt(d_model) (Gemma); random init then uses std d ** -0.5
  qk_norm: bool              # RMSNorm of each head's queries and keys before RoPE (Gemma 3, Qwen 3)
  attention_bias: bool       # q/k/v projection biases (Qwen 2 / 2.5)


FAMILY_TRAITS = {
    "llama": FamilyTraits("silu", sandwich_norms=False, norm_offset=0.0, scale_embeddings=False, qk_norm=False,
                          attention_bias=False),
    "gemma3": FamilyTraits("gelu_tanh", sandwich_norms=True, norm_offset=1.0, scale_embeddings=True, qk_norm=True,
                           attention_bias=False),
    "qwen3": FamilyTraits("silu", sandwich_norms=False, norm_offset=0.0, scale_embeddings=False, qk_norm=True,
                          attention_bias=False),
    "qwen2": FamilyTraits("silu", sandwich_norms=False, norm_offset=0.0, scale_embeddings=False, qk_norm=False,
                          attention_bias=True),
}
FAMILIES = tuple(FAMILY_TRAITS)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Every architecture fact the decoder needs. Family-specific behaviour is derived from `family`."""
  family: str                 # 'llama' (Llama 2/3, SmolLM2), 'gemma3', 'qwen3' or 'qwen2' (Qwen 2/2.5)
  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  d_ff: int
  norm_eps: float = 1e-6
  rope_theta: float = 10_000.0          # global layers (all layers for llama)
  rope_local_theta: float = 10_000.0    # gemma3 sliding-window layers
  rope_scaling: str = ""                # '', 'linear' or 'llama3' (global layers)
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0     # llama3 scaling
  rope_high_freq_factor: float = 4.0
  rope_original_max_position: int = 8192
  sliding_window: int = 0               # gemma3 local layers' window (tokens)
  layer_types: tuple[str, ...] = ()     # per layer 'global' or 'local'; empty = all global
  query_pre_attn_scalar: float = 0.0    # attention scale = this ** -0.5 (0: head_dim)
  tie_embeddings: bool = True
  final_logit_softcap: float = 0.0
  bos_id: int = 2
  eos_id: int = 1
  pad_id: int = 0

  def __post_init__(self):
    if self.family not in FAMILY_TRAITS:
      raise ConfigError(f"model family {self.family!r}; choose one of {tuple(FAMILY_TRAITS)}")
    if self.n_heads % self.n_kv_heads:
      raise ConfigError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
    if self.layer_types and len(self.layer_types) != self.n_layers:
      raise ConfigError(f"layer_types has {len(self.layer_types)} entries for {self.n_layers} layers")

  @property
  def traits(self) -> FamilyTraits:
    return FAMILY_TRAITS[self.family]

  @property
  def is_gemma(self) -> bool:  # the Gemma checkpoint formats (HF names, llama.cpp's stored norms, tokenizer class)
    return self.family == "gemma3"

  @property
  def qk_norm(self) -> bool:
    return self.traits.qk_norm

  @property
  def attention_bias(self) -> bool:
    return self.traits.attention_bias

  @property
  def norm_offset(self) -> float:
    return self.traits.norm_offset

  @property
  def attn_scale(self) -> float:
    return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

  def is_local(self, layer: int) -> bool:
    return bool(self.layer_types) and self.layer_types[layer] == "local"

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["layer_types"] = list(self.layer_types)
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise ConfigError(f"unknown model config keys {sorted(unknown)}")
    d = dict(d)
    d["layer_types"] = tuple(d.get("layer_types", ()))
    return cls(**d)


def gemma3_layer_types(n_layers: int, pattern: int = 6) -> tuple[str, ...]:
  """Every `pattern`-th layer is global, the rest sliding-window (Gemma 3: 5 local : 1 global)."""
  return tuple("global" if (i + 1) % pattern == 0 else "local" for i in range(n_layers))


def _gemma3(vocab, d, layers, heads, kv, ff, window, scaling=1.0) -> ModelConfig:
  return ModelConfig("gemma3", vocab, d, layers, heads, kv, 256, ff, 1e-6, 1_000_000.0, 10_000.0,
                     "linear" if scaling != 1.0 else "", scaling, sliding_window=window,
                     layer_types=gemma3_layer_types(layers), query_pre_attn_scalar=256)


PRESETS: dict[str, ModelConfig] = {
    "gemma3-270m": _gemma3(262_144, 640, 18, 4, 1, 2048, 512),
    "gemma3-1b": _gemma3(262_144, 1152, 26, 4, 1, 6912, 512),
    "gemma3-4b": _gemma3(262_208, 2560, 34, 8, 4, 10_240, 1024, scaling=8.0),
    "gemma3-12b": _gemma3(262_208, 3840, 48, 16, 8, 15_360, 1024, scaling=8.0),
    "llama-3.2-1b": ModelConfig("llama", 128_256, 2048, 16, 32, 8, 64, 8192, 1e-5, 500_000.0,
                                rope_scaling="llama3", rope_factor=32.0, tie_embeddings=True,
                                bos_id=128_000, eos_id=128_001, pad_id=128_001),
    "llama-3.2-3b": ModelConfig("llama", 128_256, 3072, 28, 24, 8, 128, 8192, 1e-5, 500_000.0,
                                rope_scaling="llama3", rope_factor=32.0, tie_embeddings=True,
                                bos_id=128_000, eos_id=128_001, pad_id=128_001),
    "qwen3-0.6b": ModelConfig("qwen3", 151_936, 1024, 28, 16, 8, 128, 3072, 1e-6, 1_000_000.0,
                              tie_embeddings=True, bos_id=151_643, eos_id=151_643, pad_id=151_643),
    "qwen3-1.7b": ModelConfig("qwen3", 151_936, 2048, 28, 16, 8, 128, 6144, 1e-6, 1_000_000.0,
                              tie_embeddings=True, bos_id=151_643, eos_id=151_643, pad_id=151_643),
    "llama-3-8b": ModelConfig("llama", 128_256, 4096, 32, 32, 8, 128, 14_336, 1e-5, 500_000.0,
                              tie_embeddings=False, bos_id=128_000, eos_id=128_001, pad_id=128_001),
    "smollm2-135m": ModelConfig("llama", 49_152, 576, 30, 9, 3, 64, 1536, 1e-5, 100_000.0,
                                tie_embeddings=True, bos_id=1, eos_id=2, pad_id=2),
    # Small random-init models for tests, the smoke demo and CPU development.
    "tiny": ModelConfig("gemma3", 2048, 64, 4, 4, 2, 16, 128, 1e-6, 10_000.0, 10_000.0,
                        sliding_window=16, layer_types=gemma3_layer_types(4, 2), query_pre_attn_scalar=16),
    "tiny-llama": ModelConfig("llama", 2048, 64, 2, 4, 2, 16, 128, 1e-5, 10_000.0),
    "small": ModelConfig("gemma3", 8192, 256, 6, 4, 2, 64, 768, 1e-6, 10_000.0, 10_000.0,
                         sliding_window=64, layer_types=gemma3_layer_types(6, 3), query_pre_attn_scalar=64),
}


def preset(name: str, **overrides) -> ModelConfig:
  if name not in PRESETS:
    raise ConfigError(f"model.preset={name!r} is not a preset; choose one of {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


def from_hf_config(path_or_dict) -> ModelConfig:
  """A Hugging Face `config.json` (Gemma3ForCausalLM / Gemma3TextConfig, LlamaForCausalLM, Qwen3ForCausalLM,
  Qwen2ForCausalLM) -> ModelConfig."""
  if isinstance(path_or_dict, dict):
    c, where = path_or_dict, "<dict>"
  else:
    where = os.path.join(path_or_dict, "config.json") if os.path.isdir(path_or_dict) else path_or_dict
    if not os.path.exists(where):
      raise WeightImportError(f"{where}: config.json not found")
    with open(where, encoding="utf-8") as f:
      c = json.load(f)
  c = c.get("text_config", c)  # multimodal Gemma 3 wraps the text config
  mtype = c.get("model_type", "")
  try:
    heads = c["num_attention_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // heads
    common = dict(vocab_size=c["vocab_size"], d_model=c["hidden_size"], n_layers=c["num_hidden_layers"],
                  n_heads=heads, n_kv_heads=c.get("num_key_value_heads", heads), head_dim=head_dim,
                  d_ff=c["intermediate_size"], norm_eps=c.get("rms_norm_eps", 1e-6),
                  bos_id=_first(c.get("bos_token_id"), 2), eos_id=_first(c.get("eos_token_id"), 1),
                  pad_id=_first(c.get("pad_token_id"), 0))
  except KeyError as e:
    raise WeightImportError(f"{where}: config.json lacks {e.args[0]!r}") from None
  rs = c.get("rope_scaling") or {}
  rp = c.get("rope_parameters") or {}  # transformers 5.x layout
  if "full_attention" in rp or "sliding_attention" in rp:
    rs = rp.get("full_attention", {})
    local_theta = rp.get("sliding_attention", {}).get("rope_theta", c.get("rope_local_base_freq", 10_000.0))
    theta = rs.get("rope_theta", c.get("rope_theta", 10_000.0))
  else:
    if rp:
      rs = rp
    theta = rp.get("rope_theta", c.get("rope_theta", 10_000.0))
    local_theta = c.get("rope_local_base_freq", 10_000.0)
  rtype = rs.get("rope_type", rs.get("type", "")) if rs else ""
  rtype = "" if rtype in ("default", None) else rtype
  rope = dict(rope_theta=float(theta), rope_scaling=rtype, rope_factor=float(rs.get("factor", 1.0)),
              rope_low_freq_factor=float(rs.get("low_freq_factor", 1.0)),
              rope_high_freq_factor=float(rs.get("high_freq_factor", 4.0)),
              rope_original_max_position=int(rs.get("original_max_position_embeddings", 8192)))
  if mtype.startswith("gemma3"):
    n = c["num_hidden_layers"]
    types = c.get("layer_types")
    if types:
      types = tuple("local" if t == "sliding_attention" else "global" for t in types)
    else:
      types = gemma3_layer_types(n, c.get("sliding_window_pattern", 6))
    return ModelConfig("gemma3", **common, **rope, rope_local_theta=float(local_theta),
                       sliding_window=c.get("sliding_window") or 0, layer_types=types,
                       query_pre_attn_scalar=float(c.get("query_pre_attn_scalar", head_dim)),
                       tie_embeddings=c.get("tie_word_embeddings", True),
                       final_logit_softcap=float(c.get("final_logit_softcapping") or 0.0))
  if mtype in ("qwen3", "qwen2"):
    if c.get("use_sliding_window"):
      raise WeightImportError(f"{where}: use_sliding_window=true (Qwen sliding-window attention) is not supported")
    if mtype == "qwen3" and c.get("attention_bias"):
      raise WeightImportError(f"{where}: Qwen 3 with attention_bias=true is not supported")
    return ModelConfig(mtype, **common, **rope, tie_embeddings=c.get("tie_word_embeddings", False))
  if mtype in ("llama", "mistral") or "Llama" in str(c.get("architectures")):
    if c.get("attention_bias") or c.get("mlp_bias"):
      raise WeightImportError(f"{where}: attention/MLP biases are not supported")
    return ModelConfig("llama", **common, **rope, tie_embeddings=c.get("tie_word_embeddings", False))
  raise WeightImportError(f"{where}: model_type {mtype!r} is not supported (supported: gemma3, gemma3_text, llama, "
                          "qwen3, qwen2)")


def _first(x, default):
  if isinstance(x, list):
    return x[0] if x else default
  return default if x is None else x
