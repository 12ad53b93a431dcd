"""Hugging Face <-> calrec_jax parameter mapping: one table of (our path, HF name, transforms).

Our layout (decoder params): embedding [V, D]; layers_i/attn/{q,k,v}_proj [D, N|K, H], o_proj [N, H, D],
{q,k}_norm/scale [H]; layers_i/mlp/{gate,up}_proj [D, F], down_proj [F, D]; layers_i/<norm>/scale [D];
final_norm/scale [D]; lm_head [D, V] when untied. HF stores Linear weights as [out, in].
"""
from __future__ import annotations

import glob
import json
import os
from typing import Callable

import numpy as np

from calrec_jax.errors import WeightImportError
from calrec_jax.model.config import ModelConfig, from_hf_config

Transform = Callable[[np.ndarray], np.ndarray]
HF_PREFIXES = ("model.language_model.", "language_model.model.", "model.")


def mapping_table(cfg: ModelConfig) -> list[tuple[tuple[str, ...], str, Transform, Transform]]:
  """(our path, HF name, HF->ours, ours->HF) for every tensor of the config."""
  d, n, k, h = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  ident = lambda w: w  # noqa: E731
  tr = lambda w: np.ascontiguousarray(w.T)  # noqa: E731
  rows = [(("embedding",), "embed_tokens.weight", ident, ident), (("final_norm", "scale"), "norm.weight", ident, ident)]
  if not cfg.tie_embeddings:
    rows.append((("lm_head",), "lm_head.weight", tr, tr))
  norms = ({"input_norm": "input_layernorm", "post_attn_norm": "post_attention_layernorm",
            "pre_mlp_norm": "pre_feedforward_layernorm", "post_mlp_norm": "post_feedforward_layernorm"}
           if cfg.traits.sandwich_norms else {"input_norm": "input_layernorm", "pre_mlp_norm": "post_attention_layernorm"})
  for i in range(cfg.n_layers):
    L, hf = f"layers_{i}", f"layers.{i}"
    rows += [
        ((L, "attn", "q_proj"), f"{hf}.self_attn.q_proj.weight", lambda w: w.T.reshape(d, n, h),
         lambda w: w.reshape(d, n * h).T.copy()),
        ((L, "attn", "k_proj"), f"{hf}.self_attn.k_proj.weight", lambda w: w.T.reshape(d, k, h),
         lambda w: w.reshape(d, k * h).T.copy()),
        ((L, "attn", "v_proj"), f"{hf}.self_attn.v_proj.weight", lambda w: w.T.reshape(d, k, h),
         lambda w: w.reshape(d, k * h).T.copy()),
        ((L, "attn", "o_proj"), f"{hf}.self_attn.o_proj.weight", lambda w: w.T.reshape(n, h, d),
         lambda w: w.reshape(n * h, d).T.copy()),
        ((L, "mlp", "gate_proj"), f"{hf}.mlp.gate_proj.weight", tr, tr),
        ((L, "mlp", "up_proj"), f"{hf}.mlp.up_proj.weight", tr, tr),
        ((L, "mlp", "down_proj"), f"{hf}.mlp.down_proj.weight", tr, tr),
    ]
    rows += [((L, ours, "scale"), f"{hf}.{theirs}.weight", ident, ident) for ours, theirs in norms.items()]
    if cfg.qk_norm:
      rows += [((L, "attn", "q_norm", "scale"), f"{hf}.self_attn.q_norm.weight", ident, ident),
               ((L, "attn", "k_norm", "scale"), f"{hf}.self_attn.k_norm.weight", ident, ident)]
    if cfg.attention_bias:
      rows += [((L, "attn", f"{x}_bias"), f"{hf}.self_attn.{x}_proj.bias", lambda w, m=m: w.reshape(m, h),
                lambda w: w.reshape(-1).copy()) for x, m in (("q", n), ("k", k), ("v", k))]
  return rows


def _strip_prefix(name: str) -> str:
  for p in HF_PREFIXES:
    if name.startswith(p):
      return name[len(p):]
  return name


def expected_shapes(cfg: ModelConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  import jax
  import jax.numpy as jnp
  from calrec_jax.model.decoder import Decoder
  t = jnp.zeros((1, 2), jnp.int32)
  shapes = jax.eval_shape(lambda: Decoder(cfg).init(jax.random.PRNGKey(0), t, t, t > -1))["params"]
  import flax.linen as nn
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(nn.meta.unbox(shapes))[0]:
    flat[tuple(p.key for p in path)] = tuple(leaf.shape)
  return flat


def from_hf_tensors(tensors: dict[str, np.ndarray], cfg: ModelConfig, source: str = "") -> dict:
  """HF-named tensors -> our nested decoder params (float32); strict about missing/unexpected/shape."""
  by_name = {_strip_prefix(k): v for k, v in tensors.items()}
  shapes = expected_shapes(cfg)
  params: dict = {}
  used = set()
  for path, name, to_ours, _ in mapping_table(cfg):
    if name not in by_name:
      raise WeightImportError(f"{source}: missing tensor {name!r} (needed for {'/'.join(path)})")
    w = to_ours(np.asarray(by_name[name], dtype=np.float32))
    if tuple(w.shape) != shapes[path]:
      raise WeightImportError(f"{source}: tensor {name!r} has shape {tuple(by_name[name].shape)} -> "
                              f"{tuple(w.shape)}, the config needs {shapes[path]}")
    node = params
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = w
    used.add(name)
  ignorable = ("rotary_emb", "lm_head.weight") if cfg.tie_embeddings else ("rotary_emb",)
  unexpected = [k for k in by_name if k not in used and not k.startswith(ignorable)
                and not k.startswith(("vision_tower", "multi_modal_projector"))]
  if unexpected:
    raise WeightImportError(f"{source}: unexpected tensors {unexpected[:5]} ({len(unexpected)} in all); "
                            "the checkpoint does not match the config")
  return params


def to_hf_tensors(params: dict, cfg: ModelConfig) -> dict[str, np.ndarray]:
  out = {}
  for path, name, _, to_hf in mapping_table(cfg):
    node = params
    for p in path:
      node = node[p]
    out["model." + name if not name.startswith("lm_head") else name] = to_hf(np.asarray(node, np.float32))
  return out


def hf_config_dict(cfg: ModelConfig) -> dict:
  """A config.json that transformers reads back as the same architecture."""
  base = {"vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers,
          "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
          "intermediate_size": cfg.d_ff, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
          "tie_word_embeddings": cfg.tie_embeddings, "bos_token_id": cfg.bos_id, "eos_token_id": cfg.eos_id,
          "pad_token_id": cfg.pad_id, "torch_dtype": "float32", "max_position_embeddings": 32768}
  if cfg.rope_scaling:
    base["rope_scaling"] = {"rope_type": cfg.rope_scaling, "factor": cfg.rope_factor}
    if cfg.rope_scaling == "llama3":
      base["rope_scaling"].update(low_freq_factor=cfg.rope_low_freq_factor, high_freq_factor=cfg.rope_high_freq_factor,
                                  original_max_position_embeddings=cfg.rope_original_max_position)
  if cfg.is_gemma:
    base.update(model_type="gemma3_text", architectures=["Gemma3ForCausalLM"], hidden_activation="gelu_pytorch_tanh",
                rope_local_base_freq=cfg.rope_local_theta, sliding_window=cfg.sliding_window,
                layer_types=["sliding_attention" if t == "local" else "full_attention" for t in cfg.layer_types],
                query_pre_attn_scalar=int(cfg.query_pre_attn_scalar), final_logit_softcapping=cfg.final_logit_softcap or None,
                attn_logit_softcapping=None)
  elif cfg.family in ("qwen3", "qwen2"):
    name = {"qwen3": "Qwen3", "qwen2": "Qwen2"}[cfg.family]
    base.update(model_type=cfg.family, architectures=[f"{name}ForCausalLM"], hidden_act="silu",
                attention_bias=cfg.attention_bias, use_sliding_window=False)
  else:
    base.update(model_type="llama", architectures=["LlamaForCausalLM"], hidden_act="silu")
  return base


def load_hf_checkpoint(path: str) -> tuple[ModelConfig, dict]:
  """A HF directory (config.json + one or several *.safetensors) -> (config, decoder params)."""
  from safetensors.numpy import load_file
  cfg = from_hf_config(path)
  files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
  if not files:
    raise WeightImportError(f"{path}: no *.safetensors files")
  tensors = {}
  for f in files:
    try:
      tensors.update(load_file(f))
    except Exception as e:  # noqa: BLE001
      raise WeightImportError(f"{f}: unreadable safetensors file ({e})") from None
  return cfg, from_hf_tensors(tensors, cfg, path)


def export_hf_checkpoint(params: dict, cfg: ModelConfig, out_dir: str, tokenizer=None) -> None:
  """Write config.json + model.safetensors (+ the tokenizer files) that transformers and this project load."""
  from safetensors.numpy import save_file
  os.makedirs(out_dir, exist_ok=True)
  tensors_path = os.path.join(out_dir, "model.safetensors")
  save_file(to_hf_tensors(params, cfg), tensors_path, metadata={"format": "pt"})
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tensors_path, 0o666 & ~umask)  # safetensors writes 0600; readable like every other file written here
  with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(hf_config_dict(cfg), f, indent=1)
  if tokenizer is not None:
    write_hf_tokenizer(tokenizer, cfg, out_dir)


def write_hf_tokenizer(tokenizer, cfg: ModelConfig, out_dir: str) -> None:
  """The tokenizer files with which transformers' AutoTokenizer gives the ids this project uses, BOS included:
  tokenizer.json (+ tokenizer_config.json) as they came, or tokenizer.model with a tokenizer_config.json that
  names the class, the special tokens and add_bos_token (without it transformers adds no <bos> to Gemma)."""
  tokenizer.save_to(out_dir)
  if tokenizer.filename != "tokenizer.model":
    return
  config = dict(tokenizer.special, add_bos_token=bool(tokenizer.add_bos), add_eos_token=False,
                tokenizer_class="GemmaTokenizer" if cfg.is_gemma else "LlamaTokenizer",
                model_max_length=131072, clean_up_tokenization_spaces=False)
  if not cfg.is_gemma:
    config["legacy"] = False
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=1)
  with open(os.path.join(out_dir, "special_tokens_map.json"), "w", encoding="utf-8") as f:
    json.dump(tokenizer.special, f, indent=1)
