"""Decoder building blocks: RMSNorm, rotary embeddings, grouped-query attention with KV cache, gated MLP.

Shape letters: B batch, T query length, S key length (cache), D d_model, N query heads, K kv heads,
G = N // K query heads per kv head, H head_dim, F d_ff.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from calrec_jax.model.config import ModelConfig
from calrec_jax.model.linear import dense, project
from calrec_jax.model.softmax_attention import NEG_INF, attend
from calrec_jax.model.partitioning import constrain
from calrec_jax.model.rms_norm import rms_norm

Array = jax.Array


def _param(module: nn.Module, name: str, shape, axes, dtype, init=None):
  init = init or nn.initializers.normal(stddev=0.02)
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


class RMSNorm(nn.Module):
  """x / rms(x) * (offset + scale), computed in float32."""
  eps: float
  offset: float = 0.0
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    init = nn.initializers.zeros if self.offset else nn.initializers.ones
    scale = _param(self, "scale", (x.shape[-1],), ("norm",), self.param_dtype, init)
    return rms_norm(x, scale, self.eps, self.offset)


def rope_frequencies(cfg: ModelConfig, local: bool) -> Array:
  """Inverse frequencies [H/2], with linear or Llama-3 scaling on global layers."""
  h = cfg.head_dim
  theta = cfg.rope_local_theta if local else cfg.rope_theta
  inv = 1.0 / (theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
  if local or not cfg.rope_scaling:
    return inv
  if cfg.rope_scaling == "linear":
    return inv / cfg.rope_factor
  if cfg.rope_scaling == "llama3":
    low_wl = cfg.rope_original_max_position / cfg.rope_low_freq_factor
    high_wl = cfg.rope_original_max_position / cfg.rope_high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = jnp.where(wavelen > low_wl, inv / cfg.rope_factor, inv)
    smooth = (cfg.rope_original_max_position / wavelen - cfg.rope_low_freq_factor) / (
        cfg.rope_high_freq_factor - cfg.rope_low_freq_factor)
    smoothed = (1 - smooth) * scaled / cfg.rope_factor + smooth * scaled
    medium = (wavelen >= high_wl) & (wavelen <= low_wl)
    return jnp.where(medium, smoothed, scaled)
  raise ValueError(f"unknown rope_scaling {cfg.rope_scaling!r}")


def rope_tables(positions: Array, inv_freq: Array) -> tuple[Array, Array]:
  """(sin, cos) of positions [B, T] * inv_freq [H/2], each [B, T, H/2], computed once into memory.

  Left to itself, XLA:CPU fuses sin and cos into every consumer and evaluates them again for each head and each
  use, forward and backward (a quarter of the attention's elementwise time in the `small` step), and it drops
  optimization barriers before fusing. A while loop is a fusion boundary: its operands are materialised. The
  loop runs once, or never where positions[0, 0] is absurdly negative; it yields the tables either way. Other
  backends compute them plainly.
  """
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
  tables = (jnp.sin(angles), jnp.cos(angles))
  if jax.default_backend() != "cpu":
    return tables

  def again(carry):
    i, a, _ = carry
    return i + 1, a, (jnp.sin(a), jnp.cos(a))

  once = (positions[0, 0] > -2 ** 30).astype(jnp.int32)      # 1, which XLA cannot fold away
  return jax.lax.while_loop(lambda carry: carry[0] < once, again, (jnp.int32(0), angles, tables))[2]


def apply_rope(x: Array, tables: tuple[Array, Array]) -> Array:
  """Rotate-half RoPE. x: [B, T, N, H]; tables: `rope_tables` of its positions."""
  sin, cos = tables[0][:, :, None, :], tables[1][:, :, None, :]
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class Attention(nn.Module):
  """Causal GQA self-attention; sliding-window on local layers; optional KV cache.

  Visibility of key s to query t: key valid, pos[s] <= pos[t], and (local) pos[t] - pos[s] < window.
  `kernel` picks how the cache-free (training) pass computes it: 'einsum' (`softmax_attention.attend`: einsums
  with a written-out backward), 'xla' (`jax.nn.dot_product_attention` with the same mask) or 'cudnn' (its fused
  flash kernel on NVIDIA GPUs, bfloat16 only; it masks by index, so it needs what training batches are:
  positions 0..T-1 and keys padded on the right). Decoding with a KV cache always takes plain einsums.
  """
  cfg: ModelConfig
  local: bool
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  kernel: str = "einsum"

  @nn.compact
  def __call__(self, x: Array, positions: Array, key_mask: Array, rope: tuple[Array, Array],
               cache: dict | None = None, cache_index: Array | None = None,
               local_flag: Array | None = None) -> tuple[Array, dict | None]:
    """rope: this layer's `rope_tables` of `positions` (the decoder computes them once for all layers).
    local_flag: a traced bool that replaces the static `local` (one scanned block serving both kinds)."""
    cfg = self.cfg
    d, n, k, h = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    wq = _param(self, "q_proj", (d, n, h), ("embed", "heads", "head_dim"), self.param_dtype)
    wk = _param(self, "k_proj", (d, k, h), ("embed", "kv_heads", "head_dim"), self.param_dtype)
    wv = _param(self, "v_proj", (d, k, h), ("embed", "kv_heads", "head_dim"), self.param_dtype)
    wo = _param(self, "o_proj", (n, h, d), ("heads", "head_dim", "embed"), self.param_dtype)
    x = x.astype(self.dtype)
    q = project(x, wq.astype(self.dtype))                    # [B, T, N, H]
    key = project(x, wk.astype(self.dtype))                  # [B, T, K, H]
    val = project(x, wv.astype(self.dtype))
    if cfg.attention_bias:  # Qwen 2
      zeros = nn.initializers.zeros
      q = q + _param(self, "q_bias", (n, h), ("heads", "head_dim"), self.param_dtype, zeros).astype(self.dtype)
      key = key + _param(self, "k_bias", (k, h), ("kv_heads", "head_dim"), self.param_dtype, zeros).astype(self.dtype)
      val = val + _param(self, "v_bias", (k, h), ("kv_heads", "head_dim"), self.param_dtype, zeros).astype(self.dtype)
    if cfg.qk_norm:  # Gemma 3 (scale 1 + w), Qwen 3 (scale w)
      q = RMSNorm(cfg.norm_eps, cfg.norm_offset, self.param_dtype, name="q_norm")(q)
      key = RMSNorm(cfg.norm_eps, cfg.norm_offset, self.param_dtype, name="k_norm")(key)
    q = apply_rope(q, rope)
    key = apply_rope(key, rope)
    q = constrain(q, ("activation_batch", "activation_length", "activation_heads", None))

    new_cache = None
    key_pos = positions
    if cache is not None:  # write this step's keys at cache_index, attend over the whole cache
      idx = (0, cache_index, 0, 0)
      key = jax.lax.dynamic_update_slice(cache["k"], key.astype(cache["k"].dtype), idx)
      val = jax.lax.dynamic_update_slice(cache["v"], val.astype(cache["v"].dtype), idx)
      new_cache = {"k": key, "v": val}
      key_pos = cache["pos"]

    if cache is None and self.kernel != "einsum":
      out = self._fused(q, key, val, positions, key_mask, local_flag)  # [B, T, N, H]
      return project(out, wo.astype(self.dtype), n_in=2), None
    b, t = q.shape[:2]
    qg = q.reshape(b, t, k, n // k, h)
    visible = key_visibility(key_mask, key_pos, positions)  # [B, T, S]
    visible &= self._window(positions, key_pos, local_flag)
    if cache is None:  # training / prefill: the fused forward and backward of softmax_attention
      out = attend(qg, key.astype(self.dtype), val.astype(self.dtype), visible, cfg.attn_scale)
      return project(out.reshape(b, t, n, h), wo.astype(self.dtype), n_in=2), None
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", qg, key.astype(self.dtype),
                        preferred_element_type=jnp.float32) * cfg.attn_scale
    logits = jnp.where(visible[:, None, None], logits, NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, val.astype(self.dtype)).reshape(b, t, n, h)
    return project(out, wo.astype(self.dtype), n_in=2), new_cache

  def _window(self, positions: Array, key_pos: Array, local_flag: Array | None) -> Array | bool:
    """[B, T, S] keys inside the sliding window (all of them on global layers)."""
    if not self.cfg.sliding_window or (local_flag is None and not self.local):
      return True
    inside = positions[:, :, None] - key_pos[:, None, :] < self.cfg.sliding_window
    return inside if local_flag is None else inside | ~local_flag

  def _fused(self, q: Array, key: Array, val: Array, positions: Array, key_mask: Array,
             local_flag: Array | None) -> Array:
    """`jax.nn.dot_product_attention` over q [B, T, N, H], key/val [B, S, K, H]; returns [B, T, N, H]."""
    cfg, local = self.cfg, self.local and bool(self.cfg.sliding_window)
    key, val = key.astype(self.dtype), val.astype(self.dtype)
    if self.kernel == "cudnn":  # the window is static in cuDNN: scanned groups keep each block's kind static
      assert local_flag is None, "cudnn attention needs static local/global blocks"
      if jnp.issubdtype(key_mask.dtype, jnp.integer):
        raise ValueError("cudnn attention masks by length: packed rows (segment ids) need model.attention "
                         "einsum or xla")
      lengths = jnp.sum(key_mask, axis=-1, dtype=jnp.int32)  # [B] valid keys, padded on the right
      window = (cfg.sliding_window - 1, 0) if local else None
      return jax.nn.dot_product_attention(q, key, val, scale=cfg.attn_scale, is_causal=True,
                                          key_value_seq_lengths=lengths, local_window_size=window,
                                          implementation="cudnn")
    visible = key_visibility(key_mask, positions, positions)  # [B, T, S]
    visible &= self._window(positions, positions, local_flag)
    return jax.nn.dot_product_attention(q, key, val, mask=visible[:, None], scale=cfg.attn_scale,
                                        implementation="xla")


def key_visibility(key_mask: Array, key_pos: Array, positions: Array) -> Array:
  """[B, T, S]: key s is valid and not after query t. key_mask [B, S] is bool, or integer segment ids of a packed
  row (0: padding; self-attention only, S = T), and then a query sees only the keys of its own segment."""
  causal = key_pos[:, None, :] <= positions[:, :, None]
  if jnp.issubdtype(key_mask.dtype, jnp.integer):
    return (key_mask[:, None, :] > 0) & (key_mask[:, None, :] == key_mask[:, :, None]) & causal
  return key_mask[:, None, :] & causal


class MLP(nn.Module):
  """Gated MLP: down(act(gate(x)) * up(x)); GeGLU (tanh GELU) for Gemma, SwiGLU for Llama."""
  cfg: ModelConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d, f = self.cfg.d_model, self.cfg.d_ff
    gate = _param(self, "gate_proj", (d, f), ("embed", "mlp"), self.param_dtype)
    up = _param(self, "up_proj", (d, f), ("embed", "mlp"), self.param_dtype)
    down = _param(self, "down_proj", (f, d), ("mlp", "embed"), self.param_dtype)
    x = x.astype(self.dtype)
    g = dense(x, gate.astype(self.dtype))                   # [B, T, F]
    g = jax.nn.gelu(g, approximate=True) if self.cfg.traits.mlp_activation == "gelu_tanh" else jax.nn.silu(g)
    hdn = g * dense(x, up.astype(self.dtype))
    hdn = constrain(hdn, ("activation_batch", "activation_length", "activation_mlp"))
    return dense(hdn, down.astype(self.dtype))


class Block(nn.Module):
  """Pre-norm residual block; Gemma adds post-attention and post-MLP norms."""
  cfg: ModelConfig
  local: bool
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  attention: str = "einsum"   # Attention.kernel

  @nn.compact
  def __call__(self, x, positions, key_mask, rope, cache=None, cache_index=None, local_flag=None):
    cfg, off = self.cfg, self.cfg.norm_offset
    norm = lambda name: RMSNorm(cfg.norm_eps, off, self.param_dtype, name=name)  # noqa: E731
    h, new_cache = Attention(cfg, self.local, self.dtype, self.param_dtype, self.attention, name="attn")(
        norm("input_norm")(x), positions, key_mask, rope, cache, cache_index, local_flag)
    if cfg.traits.sandwich_norms:
      h = norm("post_attn_norm")(h)
    x = x + h
    h = MLP(cfg, self.dtype, self.param_dtype, name="mlp")(norm("pre_mlp_norm")(x))
    if cfg.traits.sandwich_norms:
      h = norm("post_mlp_norm")(h)
    x = x + h
    x = constrain(x, ("activation_batch", "activation_length", "activation_embed"))
    return x, new_cache
