"""Matrix products whose backward pass is written out: `dense(x, w)` = x @ w (or x @ w.T).

JAX's transpose rule for a dot emits the weight gradient as a dot followed by a transpose. XLA's CPU backend then
materialises the output gradient a second time in transposed layout, fused into whatever elementwise op
produced it (the GeGLU derivative, the softmax of the LM head), which costs more than the matmul itself. Here
the backward is two plain products whose operands are read in their stored layout: dx = dy @ w.T and
dw = x.T @ dy, contracting over the flattened leading dims. Values and gradients equal the einsum's.

In bfloat16 compute every product accumulates in float32 and is rounded once (`preferred_element_type`): the
form XLA:CPU hands to oneDNN (AMX on Intel CPUs that have it, 3-4x a float32 product there; products that
return bfloat16 or contract the leading dim of their first operand run several times slower). The weight
gradient therefore transposes x first, a copy of the activations, and contracts their last dim.

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
  acc = _accumulation_dtype(x.dtype, w.dtype, out_dtype)
  y = jnp.einsum(spec, x, w, preferred_element_type=acc)
  return y if out_dtype is not None or acc is None else y.astype(jnp.promote_types(x.dtype, w.dtype))


def _accumulation_dtype(a, b, out_dtype):
  """float32 for products of 16-bit floats (the result is rounded once, afterwards); else `out_dtype`."""
  if out_dtype is None and jnp.dtype(a).itemsize == 2 and jnp.dtype(b).itemsize == 2 and \
      jnp.issubdtype(a, jnp.floating) and jnp.issubdtype(b, jnp.floating):
    return jnp.float32
  return out_dtype


def _dense_fwd(x, w, transpose_w, out_dtype):
  return dense(x, w, transpose_w, out_dtype), (x, w)


def _dense_bwd(transpose_w, out_dtype, res, dy):
  x, w = res
  d = x.shape[-1]
  x2 = x.reshape(-1, d)                                     # [M, D]
  dy2 = dy.reshape(-1, dy.shape[-1])                        # [M, F]
  ct = jnp.promote_types(dy.dtype, w.dtype)
  if jnp.dtype(x.dtype).itemsize == 2 and jnp.dtype(w.dtype).itemsize == 2:
    dy2 = dy2.astype(x.dtype)  # 16-bit operands accumulated in float32 (module docstring)
    ct = jnp.float32
  if transpose_w:                                           # w [F, D]
    dx = jnp.einsum("MF,FD->MD", dy2, w, preferred_element_type=ct)
    dw = jnp.einsum("FM,MD->FD", dy2.T, x2, preferred_element_type=ct)
  else:                                                     # w [D, F]
    dx = jnp.einsum("MF,DF->MD", dy2, w, preferred_element_type=ct)
    dw = jnp.einsum("DM,MF->DF", x2.T, dy2, preferred_element_type=ct)
  return dx.reshape(x.shape).astype(x.dtype), dw.astype(w.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)


def project(x: Array, w: Array, n_in: int = 1) -> Array:
  """Contracts the last `n_in` dims of x with the first `n_in` dims of w (any output dims): x [..., *I] @ w [*I, *O]."""
  lead, ins, outs = x.shape[:x.ndim - n_in], w.shape[:n_in], w.shape[n_in:]
  assert x.shape[x.ndim - n_in:] == ins, (x.shape, w.shape)
  k = math.prod(ins)
  y = dense(x.reshape(*lead, k), w.reshape(k, -1))         # [..., prod(O)]
  return y.reshape(*lead, *outs)
