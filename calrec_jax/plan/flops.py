"""Matmul FLOPs a traced function runs, counted from its jaxpr with every loop body times its trip count.

XLA's `cost_analysis()` counts a while loop's body once, so a step whose LM loss scans the vocabulary in chunks
(16 chunks for Gemma 3's 262k vocabulary) reports a fraction of its LM-head FLOPs. This count is what MFU
figures divide by; `estimate.step_flops` predicts the same number from the config alone (checked in the tests).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
from jax.extend import core as jcore


def dot_general_flops(eqn) -> float:
  """2 * batch * M * N * K of one dot_general equation."""
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
  lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
  contract = math.prod(lhs[i] for i in lhs_contract)
  batch = math.prod(lhs[i] for i in lhs_batch)
  m = math.prod(d for i, d in enumerate(lhs) if i not in lhs_contract and i not in lhs_batch)
  n = math.prod(d for i, d in enumerate(rhs) if i not in rhs_contract and i not in rhs_batch)
  return 2.0 * batch * m * n * contract


def _sub_jaxprs(eqn) -> list[jcore.Jaxpr]:
  subs = []
  for value in eqn.params.values():
    for item in value if isinstance(value, (list, tuple)) else [value]:
      if isinstance(item, jcore.ClosedJaxpr):
        subs.append(item.jaxpr)
      elif isinstance(item, jcore.Jaxpr):
        subs.append(item)
  return subs


def jaxpr_matmul_flops(jaxpr: jcore.Jaxpr) -> float:
  """Matmul FLOPs of `jaxpr`: scan bodies count `length` times, a cond its costliest branch. A while loop has no
  static trip count, so one whose body multiplies matrices raises ValueError rather than be miscounted."""
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += dot_general_flops(eqn)
      continue
    counts = [jaxpr_matmul_flops(sub) for sub in _sub_jaxprs(eqn)]
    if not counts:
      continue
    if name == "scan":
      total += eqn.params["length"] * sum(counts)
    elif name == "cond":
      total += max(counts)
    elif name == "while":
      if any(counts):
        raise ValueError("a while loop multiplies matrices; its trip count is not static, so its FLOPs are unknown")
    else:  # pjit, custom_jvp/vjp, checkpoint, ...: called once
      total += sum(counts)
  return total


def matmul_flops(fn: Callable, *args: Any) -> float:
  """Matmul FLOPs of one call fn(*args); args may be jax.ShapeDtypeStruct trees (nothing is computed)."""
  return jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args).jaxpr)
