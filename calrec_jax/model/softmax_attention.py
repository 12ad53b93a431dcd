"""Masked softmax attention for training, with its backward pass written out.

`attend` equals softmax(where(visible, q k^T * scale, NEG_INF)) v in values and gradients, but runs as a few
large batched matmuls in one layout ([B, K, G, T, H] queries against [B, K, S, H] keys) and skips the work that
autodiff of `jax.nn.softmax` adds: the probabilities are normalised once, the backward pass reuses them and uses
the identity dlogits = p * (dp - rowsum(dout * out)) instead of differentiating the max, the exp and the division
separately. On a 2-core CPU this removes most of the attention's elementwise passes over [B, N, T, S]. Every
product asks for the dot's natural [B, K, ...] output and transposes that once: asked for [B, T, K, G, H]
directly, XLA:CPU computed dq as its own transpose from a second, transposed copy of dlogits written element by
element (a third of the attention's elementwise time in the `small` step).

Shape letters: B batch, T queries, S keys, K kv heads, G query heads per kv head, H head dim.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array
NEG_INF = -2.3819763e38  # finite: a row with no visible key gives a uniform softmax, never NaN


def _probs(q: Array, k: Array, visible: Array, scale: float) -> Array:
  """q [B, K, G, T, H], k [B, K, S, H], visible [B, T, S] -> float32 probabilities [B, K, G, T, S]."""
  logits = jnp.einsum("BKGTH,BKSH->BKGTS", q, k, preferred_element_type=jnp.float32) * scale
  logits = jnp.where(visible[:, None, None], logits, NEG_INF)
  m = jnp.max(logits, axis=-1, keepdims=True)
  e = jnp.exp(logits - m)
  return e * (1.0 / jnp.sum(e, axis=-1, keepdims=True))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def attend(q: Array, k: Array, v: Array, visible: Array, scale: float) -> Array:
  """q [B, T, K, G, H], k/v [B, S, K, H], visible [B, T, S] bool -> [B, T, K, G, H] in q's dtype."""
  return _attend_fwd(q, k, v, visible, scale)[0]


def _attend_fwd(q, k, v, visible, scale):
  qt, kt, vt = q.transpose(0, 2, 3, 1, 4), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  p = _probs(qt, kt, visible, scale)                                   # [B, K, G, T, S]
  out = jnp.einsum("BKGTS,BKSH->BKGTH", p.astype(v.dtype), vt).transpose(0, 3, 1, 2, 4)
  return out, (qt, kt, vt, visible, p, out)


def _attend_bwd(scale, res, dout):
  qt, kt, vt, visible, p, out = res
  dot = dout.transpose(0, 2, 3, 1, 4)                                  # [B, K, G, T, H]
  delta = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [B, T, K, G]
  delta = delta.transpose(0, 2, 3, 1)[..., None]                       # [B, K, G, T, 1]
  dv = jnp.einsum("BKGTH,BKGTS->BKHS", dot, p.astype(dout.dtype)).transpose(0, 3, 1, 2)
  dp = jnp.einsum("BKGTH,BKSH->BKGTS", dot, vt, preferred_element_type=jnp.float32)
  ds = jnp.where(visible[:, None, None], p * (dp - delta), 0.0) * scale
  ds = ds.astype(qt.dtype)
  dq = jnp.einsum("BKGTS,BKSH->BKGTH", ds, kt).transpose(0, 3, 1, 2, 4)
  dk = jnp.einsum("BKGTH,BKGTS->BKHS", qt, ds).transpose(0, 3, 1, 2)
  return dq, dk, dv.astype(vt.dtype), None


attend.defvjp(_attend_fwd, _attend_bwd)
