"""Matrix products whose backward pass is written out: `dense(x, w)` = x @ w (or x @ w.T).

JAX's transpose rule for a dot emits the weight gradient as a dot followed by a transpose. XLA's CPU backend then
materialises the output gradient a second time in transposed layout, fused into whatever elementwise op
produced it (the GeGLU derivative, the softmax of the LM head), which costs more than the matmul itself. Here
the backward is two plain products whose operands are read in their stored layout: dx = dy @ w.T and
dw = x.T @ dy, contracting over the flattened leading dims. Values and gradients equal the einsum's.

Shape letters: M the flattened leading dims of x, D the contracted dim, F the output dim.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

Array = jax.Array


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def dense(x: Array, w: Array, transpose_w: bool = False, out_dtype=None) -> Array:
  """x [..., D] @ w [D, F] (w [F, D] with transpose_w) -> [..., F], accumulated and returned in `out_dtype`."""
  spec = "...D,FD->...F" if transpose_w else "...D,DF->...F"
  return jnp.einsum(spec, x, w, preferred_element_type=out_dtype)


def _dense_fwd(x, w, transpose_w, out_dtype):
  return dense(x, w, transpose_w, out_dtype), (x, w)


def _dense_bwd(transpose_w, out_dtype, res, dy):
  x, w = res
  d = x.shape[-1]
  x2 = x.reshape(-1, d)                                     # [M, D]
  dy2 = dy.reshape(-1, dy.shape[-1])                        # [M, F]
  ct = jnp.promote_types(dy.dtype, w.dtype)
  if transpose_w:                                           # w [F, D]
    dx = jnp.einsum("MF,FD->MD", dy2, w, preferred_element_type=ct)
    dw = jnp.einsum("MF,MD->FD", dy2, x2, preferred_element_type=ct)
  else:                                                     # w [D, F]
    dx = jnp.einsum("MF,DF->MD", dy2, w, preferred_element_type=ct)
    dw = jnp.einsum("MD,MF->DF", x2, dy2, preferred_element_type=ct)
  return dx.reshape(x.shape).astype(x.dtype), dw.astype(w.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)


def project(x: Array, w: Array, n_in: int = 1) -> Array:
  """Contracts the last `n_in` dims of x with the first `n_in` dims of w (any output dims): x [..., *I] @ w [*I, *O]."""
  lead, ins, outs = x.shape[:x.ndim - n_in], w.shape[:n_in], w.shape[n_in:]
  assert x.shape[x.ndim - n_in:] == ins, (x.shape, w.shape)
  k = math.prod(ins)
  y = dense(x.reshape(*lead, k), w.reshape(k, -1))         # [..., prod(O)]
  return y.reshape(*lead, *outs)
