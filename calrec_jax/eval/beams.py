"""Catalog-constrained beam search: a ranked list of catalog items per prompt, straight from the decoder.

Beams follow the catalog trie (eval/constrained.py), so every beam is a prefix of some item text; a beam is
finished as soon as its prefix names one item (the trie's `item_of_node`), and beams are ranked by the sum of
their token log-probabilities (optionally divided by length ** length_penalty). With a sub-vocabulary (the
sorted token ids the catalog's texts use, stop token included), each step scores only those rows of the output
embedding - for Gemma's 262,144-row head and a catalog using a few thousand tokens, most of a decode step's
work - and the softmax is over them (what `loss.lm_vocab='catalog'` trains).
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from calrec_jax.eval.constrained import CatalogTrie, advance, constrain_logits
from calrec_jax.eval.generate import _shard_rows, left_pad, prefill
from calrec_jax.model.decoder import Decoder
from calrec_jax.model.sharding import gather_to_host


def sub_vocabulary_logits(decoder: Decoder, params, hidden: jax.Array, vocab: jax.Array | None) -> jax.Array:
  """Logits [..., V'] over the token ids `vocab` [V'] (all V when None): the full logits' columns `vocab`."""
  return decoder.apply({"params": params}, hidden, vocab, method=Decoder.logits)


@functools.partial(jax.jit, static_argnames=("decoder", "max_new_tokens", "num_beams", "trie_width",
                                             "length_penalty"))
def _catalog_beams(decoder: Decoder, params, tokens, prompt_mask, trie, vocab, max_new_tokens: int, num_beams: int,
                   trie_width: int, length_penalty: float):
  """tokens, prompt_mask: [B, P] left-padded prompts; trie over sub-vocabulary columns (or token ids when `vocab`
  is None) -> (items [B, K] (-1: no item), scores [B, K]), best first."""
  b, p = tokens.shape
  k = num_beams
  hidden, cache, key_mask, pos = prefill(decoder, params, tokens, prompt_mask, max_new_tokens)
  logits = sub_vocabulary_logits(decoder, params, hidden, vocab)                         # [B, V']
  rep = lambda x: jnp.repeat(x, k, axis=0)  # noqa: E731  [B, ...] -> [B*K, ...]
  cache = jax.tree_util.tree_map(rep, cache)
  key_mask, logits, pos = rep(key_mask), rep(logits), rep(pos)
  scores = jnp.tile(jnp.asarray([0.0] + [-jnp.inf] * (k - 1), jnp.float32), (b, 1))  # [B, K] one live beam
  v = logits.shape[-1]
  base = (jnp.arange(b) * k)[:, None]
  item_of_node = trie["item_of_node"]

  def cond(carry):
    t, _, _, _, done, _, _, _ = carry
    return (t < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    t, logits, cache, scores, done, node, length, pos = carry
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)                      # [B*K, V']
    logp = constrain_logits(logp, trie, node, trie_width)
    frozen = jnp.full((v,), -jnp.inf).at[0].set(0.0)  # a finished beam keeps its score: one candidate
    logp = jnp.where(done[:, None], frozen[None], logp)
    cand = (scores.reshape(-1, 1) + logp).reshape(b, k * v)                              # [B, K*V']
    scores, flat = jax.lax.top_k(cand, k)                                               # [B, K]
    parent = (base + flat // v).reshape(-1)                                             # [B*K]
    col = (flat % v).reshape(-1).astype(jnp.int32)
    was_done, node, length = done[parent], node[parent], length[parent]
    cache = jax.tree_util.tree_map(lambda x: x[parent], cache)
    node = jnp.where(was_done, node, advance(trie, node, col, trie_width))
    length = length + (~was_done).astype(jnp.int32)
    done = was_done | (item_of_node[node] >= 0) | ~jnp.isfinite(scores.reshape(-1))
    tok = col if vocab is None else vocab[col]
    h, cache = decoder.apply({"params": params}, tok[:, None], pos[:, None], key_mask, cache, p + t)
    logits = sub_vocabulary_logits(decoder, params, h[:, -1], vocab)
    return t + 1, logits, cache, scores, done, node, length, pos + 1

  zeros = jnp.zeros((b * k,), jnp.int32)
  carry = (0, logits, cache, scores, jnp.zeros((b * k,), bool), zeros, zeros, pos)
  _, _, _, scores, done, node, length, _ = jax.lax.while_loop(cond, body, carry)
  items = jnp.where(done & jnp.isfinite(scores.reshape(-1)), item_of_node[node], -1).reshape(b, k)
  final = scores / jnp.maximum(length, 1).astype(jnp.float32).reshape(b, k) ** length_penalty
  final = jnp.where(items >= 0, final, -jnp.inf)
  order = jnp.argsort(-final, axis=1, stable=True)
  return jnp.take_along_axis(items, order, 1), jnp.take_along_axis(final, order, 1)


class CatalogBeamSearch:
  """Ranks catalog items for prompts by constrained beam search over `item_tokens` (item i's text tokens)."""

  def __init__(self, decoder: Decoder, item_tokens: Sequence[Sequence[int]], stop_id: int,
               sub_vocabulary: bool = True):
    self.decoder = decoder
    self.num_items = len(item_tokens)
    self.max_item_len = max((len(t) for t in item_tokens), default=0) + 1
    if sub_vocabulary:
      vocab = np.asarray(sorted({int(x) for t in item_tokens for x in t} | {int(stop_id)}), np.int32)   # [V']
      to_col = {int(x): i for i, x in enumerate(vocab)}
      self.trie = CatalogTrie.build([[to_col[int(x)] for x in t] for t in item_tokens], to_col[int(stop_id)])
      self.vocab = jnp.asarray(vocab)
    else:
      self.trie = CatalogTrie.build(item_tokens, stop_id)
      self.vocab = None

  def search(self, params, prompts: Sequence[Sequence[int]], num_beams: int, max_new_tokens: int | None = None,
             length_penalty: float = 0.0, mesh=None) -> tuple[np.ndarray, np.ndarray]:
    """(items [B, K] item indices, -1 where a beam named none; scores [B, K]), best first; `max_new_tokens`
    defaults to the longest item text + its stop token (every beam can finish)."""
    toks, mask = left_pad(prompts, self.decoder.cfg.pad_id)
    (toks, mask), n = _shard_rows(mesh, toks, mask)
    t = self.trie
    trie = {**t.arrays(), "item_of_node": jnp.asarray(t.item_of_node)}
    items, scores = _catalog_beams(self.decoder, params, toks, mask, trie, self.vocab,
                                   max_new_tokens or self.max_item_len, num_beams, t.width, float(length_penalty))
    return np.asarray(gather_to_host(items))[:n], np.asarray(gather_to_host(scores))[:n]
