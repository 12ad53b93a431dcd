"""Batched sampling with the KV cache: left-padded prefill, then one token per step inside `lax.while_loop`."""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from calrec_jax.model.decoder import Decoder, init_cache


def _filter_logits(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
  """Keep the top-k logits and/or the smallest set whose probability reaches top_p; [B, V] float32."""
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    cutoff_idx = jnp.sum(cum < top_p, axis=-1, keepdims=True)
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_idx, axis=-1)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return logits


@functools.partial(jax.jit, static_argnames=("decoder", "max_new_tokens", "temperature", "top_k", "top_p"))
def _generate(decoder: Decoder, params, tokens, prompt_mask, stop_ids, rng, max_new_tokens: int,
              temperature: float, top_k: int, top_p: float):
  """tokens, prompt_mask: [B, P] left-padded prompts -> new tokens [B, max_new_tokens] (pad after a stop)."""
  b, p = tokens.shape
  cfg = decoder.cfg
  positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0).astype(jnp.int32)  # [B, P]
  cache = init_cache(cfg, b, p + max_new_tokens, decoder.dtype)
  key_mask = jnp.concatenate([prompt_mask, jnp.ones((b, max_new_tokens), bool)], axis=1)  # [B, S]
  hidden, cache = decoder.apply({"params": params}, tokens, positions, key_mask, cache, 0)
  last = decoder.apply({"params": params}, hidden[:, -1], method=Decoder.logits)  # [B, V]
  next_pos = positions[:, -1] + 1

  def pick(logits, key):
    if temperature == 0.0:
      return jnp.argmax(logits, -1).astype(jnp.int32)
    logits = _filter_logits(logits / temperature, top_k, top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)

  def cond(carry):
    t, _, _, _, done, _, _ = carry
    return (t < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    t, logits, cache, pos, done, out, key = carry
    key, sub = jax.random.split(key)
    tok = jnp.where(done, cfg.pad_id, pick(logits, sub))
    out = out.at[:, t].set(tok)
    done = done | jnp.isin(tok, stop_ids)
    h, cache = decoder.apply({"params": params}, tok[:, None], pos[:, None], key_mask, cache, p + t)
    logits = decoder.apply({"params": params}, h[:, -1], method=Decoder.logits)
    return t + 1, logits, cache, pos + 1, done, out, key

  out = jnp.full((b, max_new_tokens), cfg.pad_id, jnp.int32)
  carry = (0, last, cache, next_pos, jnp.zeros((b,), bool), out, rng)
  return jax.lax.while_loop(cond, body, carry)[5]


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, bucket: int = 32) -> tuple[np.ndarray, np.ndarray]:
  """[B, P] tokens and mask, P rounded up to a multiple of `bucket` (few compilations)."""
  p = max(len(x) for x in prompts)
  p = -(-p // bucket) * bucket
  toks = np.full((len(prompts), p), pad_id, np.int32)
  mask = np.zeros((len(prompts), p), bool)
  for i, x in enumerate(prompts):
    toks[i, p - len(x):] = x
    mask[i, p - len(x):] = True
  return toks, mask


def generate(decoder: Decoder, params, prompts: Sequence[Sequence[int]], num_samples: int, max_new_tokens: int,
             stop_ids: Sequence[int], seed: int = 0, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
             ) -> list[list[list[int]]]:
  """For each prompt, `num_samples` continuations (token ids up to, excluding, the first stop token)."""
  rep = [x for x in prompts for _ in range(num_samples)]
  toks, mask = left_pad(rep, decoder.cfg.pad_id)
  out = np.asarray(_generate(decoder, params, jnp.asarray(toks), jnp.asarray(mask),
                             jnp.asarray(list(stop_ids), jnp.int32), jax.random.PRNGKey(seed), max_new_tokens,
                             float(temperature), int(top_k), float(top_p)))
  stops = set(int(s) for s in stop_ids)
  result = []
  for i in range(len(prompts)):
    samples = []
    for row in out[i * num_samples:(i + 1) * num_samples]:
      ids = []
      for t in row:
        if int(t) in stops:
          break
        ids.append(int(t))
      samples.append(ids)
    result.append(samples)
  return result
