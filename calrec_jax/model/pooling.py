"""Pooling of decoder hidden states into the towers' L2-normalised embeddings, all in float32."""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def masked_mean(hidden: Array, mask: Array) -> Array:
  """Mean of hidden [B, T, D] over positions where mask [B, T]; float32 [B, D]; an empty row gives 0."""
  m = mask.astype(jnp.float32)                                                          # [B, T]
  total = jnp.einsum("BTD,BT->BD", hidden.astype(jnp.float32), m)  # a product: no [B, T, D] broadcast of the mask
  return total / jnp.maximum(m.sum(1), 1.0)[:, None]


def slot_means(hidden: Array, masks: Array) -> Array:
  """Per-slot means of hidden [B, T, D] over masks [B, K, T]: float32 [B, K, D] (an empty slot gives 0)."""
  m = masks.astype(jnp.float32)
  total = jnp.einsum("BTD,BKT->BKD", hidden.astype(jnp.float32), m)
  return total / jnp.maximum(m.sum(-1), 1.0)[..., None]


def l2_normalize(x: Array, eps: float = 1e-6) -> Array:
  return x * jax.lax.rsqrt(jnp.maximum((x * x).sum(-1, keepdims=True), eps * eps))
