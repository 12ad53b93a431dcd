"""RMSNorm with its backward pass written out: y = x * rsqrt(mean(x^2) + eps) * (offset + w), in float32.

Autodiff keeps the normalised x as one more array the size of x and reads it back in separate passes for the
input's and the scale's gradients. Here the forward keeps only x and the per-row 1/rms, and the backward forms
dx = r * (g - x_hat * mean(g * x_hat)) with g = dy * (offset + w), and dw = sum(dy * x_hat) over the rows,
recomputing x_hat = x * r inside those passes. Values and gradients equal autodiff's.

Shape letters: D the normalised (last) dim, any leading dims.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def rms_norm(x: Array, scale: Array, eps: float, offset: float) -> Array:
  """x [..., D], scale [D] -> [..., D] in x's dtype."""
  return _rms_norm_fwd(x, scale, eps, offset)[0]


def _inv_rms(x32: Array, eps: float) -> Array:
  return jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)   # [..., 1]


def _rms_norm_fwd(x, scale, eps, offset):
  x32 = x.astype(jnp.float32)
  r = _inv_rms(x32, eps)
  y = (x32 * r * (offset + scale.astype(jnp.float32))).astype(x.dtype)
  return y, (x, r, scale)


def _rms_norm_bwd(eps, offset, res, dy):
  # the barrier keeps XLA from merging x * r here with the forward's and keeping that product in memory
  x, r, scale = jax.lax.optimization_barrier(res)
  x_hat = x.astype(jnp.float32) * r                                          # [..., D]
  dy32 = dy.astype(jnp.float32)
  g = dy32 * (offset + scale.astype(jnp.float32))
  dx = r * (g - x_hat * jnp.mean(g * x_hat, axis=-1, keepdims=True))
  lead = tuple(range(x.ndim - 1))
  dscale = jnp.sum(dy32 * x_hat, axis=lead)
  return dx.astype(x.dtype), dscale.astype(scale.dtype)


rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)
