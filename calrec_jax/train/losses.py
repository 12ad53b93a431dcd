"""CALRec losses (calrec-method.md §3), all in float32.

L = w_nig * L_NIG + w_tt * InfoNCE(v_T|U, v_T) + w_ut * InfoNCE(v_U, v_T)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from calrec_jax.model.linear import dense

Array = jax.Array


def chunked_lm_loss(hidden: Array, out_embedding: Array, labels: Array, weights: Array, chunk: int,
                    softcap: float = 0.0, denominator: Array | None = None) -> tuple[Array, Array]:
  """Mean token cross-entropy and token accuracy without materialising [B, L, V] logits.

  hidden: [B, L, D] at the positions that predict `labels` [B, L]; out_embedding: [V, D]; weights: [B, L].
  `denominator` (default: the weight sum here) lets microbatches divide by the whole batch's weight sum.
  The vocabulary is scanned in chunks of `chunk` rows with an online logsumexp; each chunk is rematerialised
  in the backward pass, so memory is O(B * L * chunk).
  """
  v, d = out_embedding.shape
  chunk = min(chunk, v)
  n_chunks = -(-v // chunk)
  pad = n_chunks * chunk - v
  w = jnp.pad(out_embedding, ((0, pad), (0, 0))).reshape(n_chunks, chunk, d)
  h = hidden.astype(w.dtype)

  @jax.checkpoint
  def chunk_logits(wc, start):
    z = dense(h, wc, True, jnp.float32)  # [B, L, C]
    if softcap:
      z = jnp.tanh(z / softcap) * softcap
    ids = start + jnp.arange(chunk)
    return jnp.where(ids < v, z, -jnp.inf), ids

  def body(carry, xs):
    m, s, label_logit, best, best_id = carry
    wc, start = xs
    z, ids = chunk_logits(wc, start)
    m_new = jnp.maximum(m, z.max(-1))
    s = s * jnp.exp(m - m_new) + jnp.exp(z - m_new[..., None]).sum(-1)
    hit = ids[None, None, :] == labels[..., None]
    label_logit = label_logit + jnp.where(hit, z, 0.0).sum(-1)
    cmax, carg = z.max(-1), start + z.argmax(-1)
    better = cmax > best
    return (m_new, s, label_logit, jnp.where(better, cmax, best), jnp.where(better, carg, best_id)), None

  b, l = labels.shape
  init = (jnp.full((b, l), -jnp.inf), jnp.zeros((b, l)), jnp.zeros((b, l)), jnp.full((b, l), -jnp.inf),
          jnp.zeros((b, l), jnp.int32))
  starts = jnp.arange(n_chunks, dtype=jnp.int32) * chunk
  (m, s, label_logit, _, best_id), _ = jax.lax.scan(body, init, (w, starts))
  nll = m + jnp.log(s) - label_logit  # [B, L]
  denom = jnp.maximum(weights.sum() if denominator is None else denominator, 1.0)
  loss = (nll * weights).sum() / denom
  acc = ((best_id == labels) * weights).sum() / denom
  return loss, acc


def info_nce(query: Array, key: Array, target_ids: Array, valid: Array, temperature: float,
             symmetric: bool = False) -> tuple[Array, Array]:
  """InfoNCE over the GLOBAL batch: row i's positive is key i; other rows with the same target are not negatives.

  query, key: [B, E] L2-normalised; target_ids, valid: [B]. Under jit with batch-sharded inputs, the [B, B]
  similarity spans all devices and hosts (XLA inserts the all-gather).
  """
  q, k = query.astype(jnp.float32), key.astype(jnp.float32)
  logits = jnp.einsum("IE,JE->IJ", q, k) / temperature  # [B, B]
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


def masked_mean(hidden: Array, mask: Array) -> Array:
  """Mean of hidden [B, T, D] over positions where mask [B, T]; float32 [B, D]; an empty row gives 0."""
  m = mask.astype(jnp.float32)[..., None]
  return (hidden.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1.0)


def l2_normalize(x: Array, eps: float = 1e-6) -> Array:
  return x * jax.lax.rsqrt(jnp.maximum((x * x).sum(-1, keepdims=True), eps * eps))
