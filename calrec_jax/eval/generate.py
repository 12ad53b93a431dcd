"""Batched sampling and beam search with the KV cache: left-padded prefill, then one token per step inside
`lax.while_loop`; prompt rows optionally sharded over the training mesh."""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from calrec_jax.eval.constrained import CatalogTrie, advance, constrain_logits
from calrec_jax.model.decoder import Decoder, init_cache
from calrec_jax.model.sharding import gather_to_host, place_host_array


def _top_p_mask(sorted_logits: jax.Array, top_p: float) -> jax.Array:
  """sorted_logits [B, K] descending -> the same with everything past the top_p nucleus at -inf."""
  cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
  keep = (cum - jax.nn.softmax(sorted_logits, axis=-1)) < top_p  # the token that crosses top_p is kept
  return jnp.where(keep, sorted_logits, -jnp.inf)


def sample_token(logits: jax.Array, key: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
  """One token per row of logits [B, V]: greedy at temperature 0, else sampled after top-k / top-p filtering.

  With top-k, only the k candidates are filtered and sampled (no pass over the whole vocabulary after
  `lax.top_k`), which is most of the cost of a decode step on CPU for 262k-token vocabularies.
  """
  if temperature == 0.0:
    return jnp.argmax(logits, -1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_k:
    vals, idx = jax.lax.top_k(logits, top_k)  # [B, k] descending
    if top_p < 1.0:
      vals = _top_p_mask(vals, top_p)
    choice = jax.random.categorical(key, vals, axis=-1)
    return jnp.take_along_axis(idx, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
  if top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    vals = _top_p_mask(jnp.take_along_axis(logits, order, axis=-1), top_p)
    choice = jax.random.categorical(key, vals, axis=-1)
    return jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def prefill(decoder: Decoder, params, tokens: jax.Array, prompt_mask: jax.Array, max_new_tokens: int
            ) -> tuple[jax.Array, dict, jax.Array, jax.Array]:
  """One pass over left-padded prompts [B, P] into a KV cache with room for `max_new_tokens` more: (hidden state
  at the last prompt position [B, D], cache, key mask [B, P + max_new_tokens], next positions [B])."""
  b, p = tokens.shape
  positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0).astype(jnp.int32)  # [B, P]
  cache = init_cache(decoder.cfg, b, p + max_new_tokens, decoder.dtype)
  key_mask = jnp.concatenate([prompt_mask, jnp.ones((b, max_new_tokens), bool)], axis=1)  # [B, S]
  hidden, cache = decoder.apply({"params": params}, tokens, positions, key_mask, cache, 0)
  return hidden[:, -1], cache, key_mask, positions[:, -1] + 1


@functools.partial(jax.jit, static_argnames=("decoder", "max_new_tokens", "temperature", "top_k", "top_p",
                                             "num_samples", "trie_width"))
def _generate(decoder: Decoder, params, tokens, prompt_mask, stop_ids, rng, max_new_tokens: int,
              temperature: float, top_k: int, top_p: float, num_samples: int = 1, trie=None, trie_width: int = 0):
  """tokens, prompt_mask: [B, P] left-padded prompts -> new tokens [B * num_samples, max_new_tokens], prompt-major
  (rows i*N .. i*N+N-1 are prompt i's samples; pad after a stop).

  Each prompt is prefilled ONCE; its KV cache, last logits and positions are then copied to its N sample rows
  (as beam search does), so the prompt costs one prefill instead of N. With a catalog `trie` (CatalogTrie
  arrays), every step samples only tokens that continue a catalog item text.
  """
  b, p = tokens.shape
  cfg = decoder.cfg
  hidden, cache, key_mask, next_pos = prefill(decoder, params, tokens, prompt_mask, max_new_tokens)
  last = decoder.apply({"params": params}, hidden, method=Decoder.logits)  # [B, V]
  rep = lambda x: jnp.repeat(x, num_samples, axis=0)  # noqa: E731  [B, ...] -> [B*N, ...]
  cache = jax.tree_util.tree_map(rep, cache)
  key_mask, last, next_pos = rep(key_mask), rep(last), rep(next_pos)
  b = b * num_samples

  def cond(carry):
    t, _, _, _, done, _, _, _ = carry
    return (t < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    t, logits, cache, pos, done, out, key, node = carry
    key, sub = jax.random.split(key)
    if trie is not None:
      logits = constrain_logits(logits, trie, node, trie_width)
    tok = jnp.where(done, cfg.pad_id, sample_token(logits, sub, temperature, top_k, top_p))
    if trie is not None:
      node = advance(trie, node, tok, trie_width)
    out = out.at[:, t].set(tok)
    done = done | jnp.isin(tok, stop_ids)
    h, cache = decoder.apply({"params": params}, tok[:, None], pos[:, None], key_mask, cache, p + t)
    logits = decoder.apply({"params": params}, h[:, -1], method=Decoder.logits)
    return t + 1, logits, cache, pos + 1, done, out, key, node

  out = jnp.full((b, max_new_tokens), cfg.pad_id, jnp.int32)
  carry = (0, last, cache, next_pos, jnp.zeros((b,), bool), out, rng, jnp.zeros((b,), jnp.int32))
  return jax.lax.while_loop(cond, body, carry)[5]


@functools.partial(jax.jit, static_argnames=("decoder", "max_new_tokens", "num_beams"))
def _beam_search(decoder: Decoder, params, tokens, prompt_mask, stop_ids, max_new_tokens: int, num_beams: int):
  """tokens, prompt_mask: [B, P] -> (beams [B, K, max_new_tokens], log-probs [B, K]), best beam first.

  A beam that emits a stop token is finished: it keeps its score and emits padding. Beams are ranked by the sum
  of token log-probabilities (a finished short beam is not penalised for its length).
  """
  b, p = tokens.shape
  k, cfg = num_beams, decoder.cfg
  hidden, cache, key_mask, pos = prefill(decoder, params, tokens, prompt_mask, max_new_tokens)
  logits = decoder.apply({"params": params}, hidden, method=Decoder.logits)  # [B, V]
  rep = lambda x: jnp.repeat(x, k, axis=0)  # noqa: E731  [B, ...] -> [B*K, ...]
  cache = jax.tree_util.tree_map(rep, cache)
  key_mask, logits, pos = rep(key_mask), rep(logits), rep(pos)
  scores = jnp.tile(jnp.asarray([0.0] + [-jnp.inf] * (k - 1), jnp.float32), (b, 1))  # [B, K]
  v = logits.shape[-1]
  base = (jnp.arange(b) * k)[:, None]  # [B, 1] first row of each prompt in [B*K]

  def cond(carry):
    t, _, _, _, done, _, _ = carry
    return (t < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    t, logits, cache, scores, done, out, pos = carry
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B*K, V]
    frozen = jnp.full((v,), -jnp.inf).at[cfg.pad_id].set(0.0)  # a finished beam only extends with padding
    logp = jnp.where(done[:, None], frozen[None], logp)
    cand = (scores.reshape(-1, 1) + logp).reshape(b, k * v)  # [B, K*V]
    scores, flat = jax.lax.top_k(cand, k)  # [B, K]
    parent = (base + flat // v).reshape(-1)  # [B*K] rows the new beams extend
    tok = (flat % v).reshape(-1).astype(jnp.int32)
    cache = jax.tree_util.tree_map(lambda x: x[parent], cache)
    out = out[parent].at[:, t].set(tok)
    was_done = done[parent]
    done = was_done | jnp.isin(tok, stop_ids)
    h, cache = decoder.apply({"params": params}, tok[:, None], pos[:, None], key_mask, cache, p + t)
    logits = decoder.apply({"params": params}, h[:, -1], method=Decoder.logits)
    return t + 1, logits, cache, scores, done, out, pos + 1

  out = jnp.full((b * k, max_new_tokens), cfg.pad_id, jnp.int32)
  carry = (0, logits, cache, scores, jnp.zeros((b * k,), bool), out, pos)
  _, _, _, scores, _, out, _ = jax.lax.while_loop(cond, body, carry)
  return out.reshape(b, k, max_new_tokens), scores


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


def _shard_rows(mesh: Mesh | None, *arrays: np.ndarray) -> tuple[list, int]:
  """Pad the leading (row) dim to a multiple of the mesh's batch shards and place the rows over data x fsdp."""
  if mesh is None:
    return [jnp.asarray(a) for a in arrays], arrays[0].shape[0]
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  n = arrays[0].shape[0]
  padded = -(-n // shards) * shards
  sh = NamedSharding(mesh, P(("data", "fsdp")))
  out = []
  for a in arrays:
    a = np.concatenate([a, np.repeat(a[-1:], padded - n, axis=0)]) if padded > n else a
    out.append(place_host_array(a, sh))  # every process holds the same prompts; each places its rows
  return out, n


def _strip(row: np.ndarray, stops: set[int]) -> list[int]:
  ids = []
  for t in row:
    if int(t) in stops:
      break
    ids.append(int(t))
  return ids


def generate(decoder: Decoder, params, prompts: Sequence[Sequence[int]], num_samples: int, max_new_tokens: int,
             stop_ids: Sequence[int], seed: int = 0, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             beam_search: bool = False, mesh: Mesh | None = None, shared_prefill: bool = True,
             trie: CatalogTrie | None = None) -> list[list[list[int]]]:
  """For each prompt, `num_samples` continuations (token ids up to, excluding, the first stop token).

  Sampling draws them independently (temperature 0: greedy); `beam_search` returns the `num_samples` best beams,
  best first. With a `mesh`, prompt rows are split over its data x fsdp axes and params keep their shardings.
  `shared_prefill=False` prefills every sample row separately (same samples for the same seed, N times the
  prefill work). `trie`: catalog-constrained sampling (every finished sample is a catalog item's text; the
  trie's stop token must be among `stop_ids`).
  """
  stops = set(int(s) for s in stop_ids)
  stop_arr = jnp.asarray(sorted(stops), jnp.int32)
  if beam_search and trie is not None:
    raise ValueError("catalog-constrained decoding samples; it cannot be combined with beam search")
  if beam_search:
    toks, mask = left_pad(prompts, decoder.cfg.pad_id)
    (toks, mask), n = _shard_rows(mesh, toks, mask)
    beams, _ = _beam_search(decoder, params, toks, mask, stop_arr, max_new_tokens, num_samples)
    beams = np.asarray(gather_to_host(beams))[:n]  # [B, K, L]
    return [[_strip(row, stops) for row in beams[i]] for i in range(len(prompts))]
  if shared_prefill:  # one prefill per prompt, its cache copied to the N sample rows
    toks, mask = left_pad(prompts, decoder.cfg.pad_id)
    (toks, mask), n = _shard_rows(mesh, toks, mask)
    n_rows, per_prompt = n * num_samples, num_samples
  else:  # the prompt repeated N times, each copy prefilled (the reference the shared path must equal)
    toks, mask = left_pad([x for x in prompts for _ in range(num_samples)], decoder.cfg.pad_id)
    (toks, mask), n_rows = _shard_rows(mesh, toks, mask)
    per_prompt = 1
  out = np.asarray(gather_to_host(_generate(
      decoder, params, toks, mask, stop_arr, jax.random.PRNGKey(seed), max_new_tokens, float(temperature),
      int(top_k), float(top_p), per_prompt, trie.arrays() if trie is not None else None,
      trie.width if trie is not None else 0)))[:n_rows]  # rows generated on every host, gathered
  return [[_strip(row, stops) for row in out[i * num_samples:(i + 1) * num_samples]] for i in range(len(prompts))]
