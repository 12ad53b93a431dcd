"""The decoder LLM: token embedding -> blocks -> final norm; logits only where asked.

`Decoder.__call__` returns final hidden states [B, T, D] for every position (and the updated KV cache when one
is given); `Decoder.logits` projects chosen hidden states to the vocabulary. Padding and per-example positions
are handled by `key_mask` and `positions`, never by shapes.

With `scan_layers` the cache-free pass runs the blocks as one `jax.lax.scan`, so a deep model compiles one block
instead of every layer: each step gets a layer's weights and whether it is a sliding-window layer (its mask and
RoPE base are chosen inside). cuDNN's kernel needs the window static, so with it the scan runs over repeating
groups of blocks instead (Gemma 3: 5 sliding-window + 1 global). The model's params keep their per-layer layout
(`layers_0`, `layers_1`, ...): weight import/export, exported params and LoRA are the same either way. A train
state stores a scanned model's blocks stacked (`layer_stack`), and the slices the step hands this module fold
back into the stacks built here, so the scan reads the weights as stored.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from calrec_jax.model.config import ModelConfig
from calrec_jax.model.layers import Block, RMSNorm, _param, rope_frequencies, rope_tables
from calrec_jax.model.partitioning import constrain

Array = jax.Array


class Decoder(nn.Module):
  cfg: ModelConfig
  dtype: jnp.dtype = jnp.float32        # compute dtype (bfloat16 for speed; params stay param_dtype)
  param_dtype: jnp.dtype = jnp.float32
  remat: bool = False                   # rematerialise each block in the backward pass
  scan_layers: bool = False             # run the blocks as one jax.lax.scan (see the module docstring)
  attention: str = "einsum"             # Attention.kernel for the cache-free pass: einsum | xla | cudnn

  def setup(self):
    cfg = self.cfg
    self.embedding = _param(self, "embedding", (cfg.vocab_size, cfg.d_model), ("vocab", "embed"),
                            self.param_dtype, nn.initializers.normal(stddev=cfg.d_model ** -0.5 if cfg.traits.scale_embeddings else 0.02))
    block = nn.remat(Block, static_argnums=()) if self.remat else Block
    self.layers = [block(cfg, cfg.is_local(i), self.dtype, self.param_dtype, self.attention, name=f"layers_{i}")
                   for i in range(cfg.n_layers)]
    self.final_norm = RMSNorm(cfg.norm_eps, cfg.norm_offset, self.param_dtype)
    if not cfg.tie_embeddings:
      self.lm_head = _param(self, "lm_head", (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), self.param_dtype)

  def __call__(self, tokens: Array, positions: Array, key_mask: Array, cache: list | None = None,
               cache_index: Array | None = None) -> tuple[Array, list | None]:
    """tokens, positions: [B, T]; key_mask: [B, S] keys that may be attended (S = T without a cache), or, for rows
    that pack several sequences, their int32 segment ids (0: padding; positions restart in each segment).

    cache: per layer {'k', 'v': [B, S, K, H]} plus cache[0]['pos'] shared key positions [B, S].
    """
    x = constrain(self._embed(tokens), ("activation_batch", "activation_length", "activation_embed"))
    new_cache, key_pos = None, None
    if cache is not None:
      new_cache = []
      key_pos = jax.lax.dynamic_update_slice(cache[0]["pos"], positions.astype(jnp.int32), (0, cache_index))
    rope = {local: rope_tables(positions, rope_frequencies(self.cfg, local))  # once per call, not per layer
            for local in {self.cfg.is_local(i) for i in range(self.cfg.n_layers)}}
    first = 0
    if cache is None and self.scan_layers and not self.is_initializing():
      x, first = self._scanned_groups(x, positions, key_mask, rope)
    for i, layer in enumerate(self.layers[first:], start=first):
      layer_cache = None
      if cache is not None:
        layer_cache = {"k": cache[i]["k"], "v": cache[i]["v"], "pos": key_pos}
      x, c = layer(x, positions, key_mask, rope[self.cfg.is_local(i)], layer_cache, cache_index)
      if cache is not None:
        new_cache.append(c)
    if new_cache:
      new_cache[0]["pos"] = key_pos
    return self.final_norm(x), new_cache

  def lower(self, tokens: Array, positions: Array, key_mask: Array, stop: int) -> Array:
    """The residual stream after blocks [0, stop) of a cache-free pass: [B, T, D] in the compute dtype. With
    `upper(., start=stop)` it equals `__call__` (the frozen-layer cache stores it; train/layer_cache.py)."""
    return self._blocks(self._embed(tokens), positions, key_mask, 0, stop)

  def _embed(self, tokens: Array) -> Array:
    """tokens [B, T] -> input embeddings [B, T, D] in the compute dtype (scaled where the family does)."""
    x = jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)
    if self.cfg.traits.scale_embeddings:
      x = x * jnp.asarray(self.cfg.d_model ** 0.5, self.dtype)
    return x

  def upper(self, hidden: Array, positions: Array, key_mask: Array, start: int) -> Array:
    """Blocks [start, L) and the final norm on the residual stream `hidden` [B, T, D] from `lower(., stop=start)`."""
    return self.final_norm(self._blocks(hidden.astype(self.dtype), positions, key_mask, start, self.cfg.n_layers))

  def _blocks(self, x: Array, positions: Array, key_mask: Array, start: int, stop: int) -> Array:
    x = constrain(x, ("activation_batch", "activation_length", "activation_embed"))
    rope = {local: rope_tables(positions, rope_frequencies(self.cfg, local))
            for local in {self.cfg.is_local(i) for i in range(start, stop)}}
    for i in range(start, stop):
      x, _ = self.layers[i](x, positions, key_mask, rope[self.cfg.is_local(i)], None, None)
    return x

  def _scanned_groups(self, x: Array, positions: Array, key_mask: Array,
                      rope: dict[bool, tuple[Array, Array]]) -> tuple[Array, int]:
    """Runs the leading whole groups of blocks as one scan; returns x and the first layer left to run.
    rope: the RoPE tables of each layer kind present (local True / global False)."""
    cfg = self.cfg
    flags = None
    if self.attention == "cudnn" or not cfg.sliding_window:
      period = layer_period(cfg)
    else:  # one block per step; its kind travels with its weights
      period = 1
      flags = jnp.asarray([cfg.is_local(i) for i in range(cfg.n_layers)])  # [L]
    groups = cfg.n_layers // period
    if groups < 2:
      return x, 0
    params = nn.meta.unbox(self.variables["params"])
    # per position j in the group: that block's params stacked over groups, leaves [groups, ...]
    stacked = [jax.tree_util.tree_map(lambda *ws: jnp.stack(ws), *[params[f"layers_{g * period + j}"]
                                                                  for g in range(groups)]) for j in range(period)]

    def tables(j, flag):
      if flag is None or len(rope) == 1:
        return rope[cfg.is_local(j)]
      return tuple(jnp.where(flag, a, b) for a, b in zip(rope[True], rope[False]))

    def run_block(j):
      blk = Block(cfg, cfg.is_local(j), self.dtype, self.param_dtype, self.attention, parent=None)
      fn = lambda p, h, flag: blk.apply({"params": p}, h, positions, key_mask, tables(j, flag),  # noqa: E731
                                        local_flag=flag)[0]
      return jax.checkpoint(fn) if self.remat else fn

    blocks = [run_block(j) for j in range(period)]

    def group(h, xs):
      group_params, flag = xs
      for j in range(period):
        h = blocks[j](group_params[j], h, flag)
      return h, None

    x, _ = jax.lax.scan(group, x, (stacked, flags))
    return x, groups * period

  def output_embedding(self) -> Array:
    """[V, D] matrix whose rows score each vocabulary entry."""
    return self.embedding if self.cfg.tie_embeddings else self.lm_head.T

  def logits(self, hidden: Array, vocab: Array | None = None) -> Array:
    """hidden: [..., D] -> logits [..., V] in float32 (with Gemma's final soft-cap when configured); with
    `vocab` [V'] (token ids), only those columns: [..., V'] (the output embedding's rows gathered first)."""
    w = self.output_embedding()
    if vocab is not None:
      w = jnp.take(w, vocab, axis=0)                                                    # [V', D]
    out = jnp.einsum("...D,VD->...V", hidden.astype(self.dtype), w.astype(self.dtype),
                     preferred_element_type=jnp.float32)
    if self.cfg.final_logit_softcap:
      cap = self.cfg.final_logit_softcap
      out = jnp.tanh(out / cap) * cap
    return out


def layer_period(cfg: ModelConfig) -> int:
  """Smallest group size p whose whole groups repeat the same local/global pattern (1 for all-global models)."""
  kinds = [cfg.is_local(i) for i in range(cfg.n_layers)]
  for p in range(1, cfg.n_layers + 1):
    covered = cfg.n_layers // p * p
    if all(kinds[i] == kinds[i % p] for i in range(covered)):
      return p
  return cfg.n_layers


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=jnp.float32) -> list[dict]:
  """Empty KV cache of `length` slots; positions start at a large value so empty slots are never visible."""
  shape = (batch, length, cfg.n_kv_heads, cfg.head_dim)
  cache = [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(cfg.n_layers)]
  cache[0]["pos"] = jnp.full((batch, length), 2 ** 30, jnp.int32)
  return cache


def count_params(params) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
