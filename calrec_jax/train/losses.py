"""CALRec losses (calrec-method.md §3), all in float32.

L = w_nig * L_NIG + w_tt * InfoNCE(v_T|U, v_T) + w_ut * InfoNCE(v_U, v_T)
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from calrec_jax.model.linear import dense
from calrec_jax.model.pooling import l2_normalize

Array = jax.Array


def chunked_lm_loss(hidden: Array, out_embedding: Array, labels: Array, weights: Array, chunk: int,
                    softcap: float = 0.0, denominator: Array | None = None) -> tuple[Array, Array]:
  """Mean token cross-entropy and token accuracy without materialising [B, L, V] logits.

  hidden: [B, L, D] at the positions that predict `labels` [B, L]; out_embedding: [V, D]; weights: [B, L].
  `denominator` (default: the weight sum here) lets microbatches divide by the whole batch's weight sum.
  The vocabulary is scanned in chunks of `chunk` rows with an online logsumexp and a running first argmax; each
  chunk's logits and exp are rebuilt in the backward pass when there is more than one, so memory is
  O(B * L * chunk). The label's logit is one [D] dot product per position from its gathered embedding row,
  outside the loop.
  """
  v, d = out_embedding.shape
  chunk = min(chunk, v)
  n_chunks = -(-v // chunk)
  pad = n_chunks * chunk - v
  w = jnp.pad(out_embedding, ((0, pad), (0, 0))).reshape(n_chunks, chunk, d)
  h = hidden.astype(w.dtype)

  def cap(z):
    return jnp.tanh(z / softcap) * softcap if softcap else z

  def chunk_stats(wc, start, m):
    """One chunk's max, first argmax, new shift and sum of exp(logits - shift) ([B, L] each)."""
    z = cap(dense(h, wc, True, jnp.float32))                                            # [B, L, C]
    if pad:
      z = jnp.where(start + jnp.arange(chunk) < v, z, -jnp.inf)
    cmax, carg = _max_and_first_argmax(jax.lax.stop_gradient(z))
    m_new = jnp.maximum(m, cmax)  # the logsumexp's shift: any value gives the same result and gradient
    return cmax, carg, m_new, jnp.exp(z - m_new[..., None]).sum(-1)
  if n_chunks > 1:  # keep only the chunk's inputs for the backward pass, not its [B, L, C] logits or exp
    chunk_stats = jax.checkpoint(chunk_stats)

  def body(carry, xs):
    m, s, best, best_id = carry
    wc, start = xs
    cmax, carg, m_new, s_chunk = chunk_stats(wc, start, m)
    s = s * jnp.exp(m - m_new) + s_chunk
    better = cmax > best
    return (m_new, s, jnp.where(better, cmax, best), jnp.where(better, start + carg, best_id)), None

  b, l = labels.shape
  init = (jnp.full((b, l), -jnp.inf), jnp.zeros((b, l)), jnp.full((b, l), -jnp.inf), jnp.zeros((b, l), jnp.int32))
  starts = jnp.arange(n_chunks, dtype=jnp.int32) * chunk
  (m, s, _, best_id), _ = jax.lax.scan(body, init, (w, starts))
  label_rows = jnp.take(out_embedding, labels, axis=0, mode="clip").astype(w.dtype)    # [B, L, D]
  label_logit = cap(jnp.einsum("BLD,BLD->BL", h, label_rows, preferred_element_type=jnp.float32))
  nll = m + jnp.log(s) - label_logit  # [B, L]
  denom = jnp.maximum(weights.sum() if denominator is None else denominator, 1.0)
  loss = (nll * weights).sum() / denom
  acc = ((best_id == labels) * weights).sum() / denom
  return loss, acc


def _max_and_first_argmax(z: Array, block: int = 128) -> tuple[Array, Array]:
  """Max of z [..., C] over its last dim and the first index holding it, in one pass over z.

  The max is taken per block of `block` entries, then over the blocks; the first block holding the max is then
  searched alone. (jnp.argmax is a variadic reduce that XLA:CPU runs several times slower than a max, and a
  where + min over the whole chunk writes an index array as large as z.)"""
  c = z.shape[-1]
  b = math.gcd(c, block)
  blocks = z.reshape(*z.shape[:-1], c // b, b)                                          # [..., C/b, b]
  block_max = blocks.max(-1)                                                            # [..., C/b]
  zmax = block_max.max(-1)                                                              # [...]
  first_block = jnp.argmax(block_max == zmax[..., None], axis=-1)                       # [...]
  rows = jnp.take_along_axis(blocks, first_block[..., None, None], axis=-2)[..., 0, :]  # [..., b]
  within = jnp.argmax(rows == zmax[..., None], axis=-1)
  return zmax, (first_block * b + within).astype(jnp.int32)


def info_nce(query: Array, key: Array, target_ids: Array, valid: Array, temperature: float,
             symmetric: bool = False, key_bias: Array | None = None) -> tuple[Array, Array]:
  """InfoNCE over the GLOBAL batch: row i's positive is key i; other rows with the same target are not negatives.

  query, key: [B, E] L2-normalised; target_ids, valid: [B]; `key_bias` [B]: a score added to every logit of key
  j, (q_i . k_j + key_bias_j) / temperature (a learned item bias, model/item_ids.py). Under jit with
  batch-sharded inputs, the [B, B] similarity spans all devices and hosts (XLA inserts the all-gather).
  """
  q, k = query.astype(jnp.float32), key.astype(jnp.float32)
  sim = jnp.einsum("IE,JE->IJ", q, k)                                                   # [B, B]
  if key_bias is not None:
    sim = sim + key_bias.astype(jnp.float32)[None, :]
  logits = sim / temperature
  same = target_ids[:, None] == target_ids[None, :]
  eye = jnp.eye(q.shape[0], dtype=bool)
  allowed = (~same | eye) & valid[None, :]
  logits = jnp.where(allowed, logits, -1e9)

  def one_way(lg):
    logp = jax.nn.log_softmax(lg, axis=-1)
    nll = -jnp.diagonal(logp)
    acc = (lg.argmax(-1) == jnp.arange(lg.shape[0])).astype(jnp.float32)
    n = jnp.maximum(valid.sum(), 1)
    return (nll * valid).sum() / n, (acc * valid).sum() / n

  loss, acc = one_way(logits)
  if symmetric:
    loss_t, _ = one_way(logits.T)
    loss = 0.5 * (loss + loss_t)
  return loss, acc


def bank_info_nce(query: Array, key: Array, target_ids: Array, valid: Array, bank: Array, temperature: float,
                  excluded: tuple[int, ...] = (), offsets: Array | None = None, sampled_key: Array | None = None,
                  sampled_ids: Array | None = None, bias: Array | None = None) -> tuple[Array, Array]:
  """InfoNCE of each row against EVERY catalog item: row i's positive is its target; the negatives are all other
  items. Every item is scored with its `bank` vector, and the batch's targets pass their gradient through their
  fresh `key` rows (a straight-through key: bank value, fresh gradient). Scoring the positives with fresh vectors
  and the rest with stale ones would let the model tell targets apart by freshness alone. With an up-to-date bank
  this is the full-catalog softmax, values and gradients.

  query, key: [N, E] L2-normalised; target_ids [N] global item ids (-1 for padding); valid [N]; bank [I, E];
  `excluded`: item ids that are no negatives (items the training catalog lacks; never a target); `offsets` [I, E]:
  learned item identities (model/item_ids.py), every item's key then being normalize(key + offsets[item]), so that
  every row of the table gets its gradient from every query. `sampled_key` [M, E] / `sampled_ids` [M] (-1: none):
  fresh vectors of more catalog items (mixed negative sampling), straight-through like the targets' keys, so that
  items outside the batch get a gradient as negatives too; the loss value is unchanged. `bias` [I]: a learned score
  per item (model/item_ids.py), the logits being (q . key_item + bias_item) / temperature.
  """
  q, k = query.astype(jnp.float32), key.astype(jnp.float32)
  bank = jax.lax.stop_gradient(bank.astype(jnp.float32))
  i = bank.shape[0]
  ids = jnp.where(valid, target_ids, i)                       # padding points past the bank (dropped below)
  key_ids, key_valid = ids, valid
  if sampled_key is not None:  # the targets first: an item that is both keeps its target's key
    k = jnp.concatenate([k, sampled_key.astype(jnp.float32)])                                # [N + M, E]
    key_valid = jnp.concatenate([valid, sampled_ids >= 0])
    key_ids = jnp.concatenate([ids, jnp.where(sampled_ids >= 0, sampled_ids, i)])
  m_keys = key_ids.shape[0]
  same = (key_ids[:, None] == key_ids[None, :]) & key_valid[:, None] & key_valid[None, :]   # [N+M, N+M]
  first = key_valid & ~jnp.any(same & jnp.tril(jnp.ones((m_keys, m_keys), bool), k=-1), axis=1)  # one key per item
  through = jnp.where(first[:, None], k - jax.lax.stop_gradient(k), 0.0)                     # [N+M, E] zeros
  keys = bank.at[key_ids].add(through, mode="drop")                                          # [I, E]
  if offsets is not None:
    keys = l2_normalize(keys + offsets.astype(jnp.float32))
  sim = jnp.einsum("NE,IE->NI", q, keys)                                                     # [N, I]
  if bias is not None:
    sim = sim + bias.astype(jnp.float32)[None, :]
  logits = sim / temperature
  if excluded:
    logits = logits.at[:, jnp.asarray(excluded, jnp.int32)].set(-jnp.inf)
  safe = jnp.minimum(ids, i - 1)
  pos_logit = jnp.take_along_axis(logits, safe[:, None], axis=1)[:, 0]
  nll = jax.nn.logsumexp(logits, axis=1) - pos_logit
  acc = (jnp.argmax(logits, axis=1) == safe).astype(jnp.float32)
  m = jnp.maximum(valid.sum(), 1)
  return (nll * valid).sum() / m, (acc * valid).sum() / m
