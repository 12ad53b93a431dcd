"""A learned fusion: per (user, item), a small network over the signals' standardised scores, their ranks and each
user's confidence in each signal, fitted on the validation split only.

A global weight vector (eval/fusion.py) gives every user the same mix, yet the signals are right for different
users: on Amazon Scientific the union of the dense, BM25 and popularity top-10s holds the validation target for
about twice as many users as any one of them. The features let the mix depend on the user:

  per (user, item), for each signal s:  z_s (the standardised score), -log(1 + rank_s)
  per user, for each signal s:          its top-TOP z-scores (how sharply it singles out a few items)
  per user:                             log(1 + history length)

score = item features . linear + gelu(features @ w1 + b1) . w2, trained with a listwise softmax over the
catalog (the target against every item the ranking may recommend), Adam, weight decay on the hidden layer. The
linear part starts from given weights on the z-scores (eval/fusion_methods.py gives 1 on the signal that ranks
best alone on validation, 0 elsewhere) and the hidden layer near zero, so training starts from that ranking; BAG
fits from different seeds are averaged, which takes out most of the spread a single fit's random start leaves.
Users are processed in chunks of at most FEATURE_BYTES of features and the gradient is summed over the chunks
(one full-batch step: the result does not depend on the chunking). Cost: O(BAG * STEPS * U * I * F * HIDDEN),
plus O(U * I log I) for the ranks.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from calrec_jax.errors import DataError

HIDDEN = 32            # units of the hidden layer
STEPS = 50             # full-batch Adam steps
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-3    # on w1 and w2 (the linear part is free)
TOP = 5                # top z-scores per signal and user, the user's confidence features
FEATURE_BYTES = 256 << 20     # features one chunk of users builds at a time
FEATURE_CACHE_BYTES = 1 << 30  # keep every chunk's features between steps when they fit in this; else rebuild
BAG = 3                # fits from seeds seed .. seed + BAG - 1, averaged (one network: `bagged`)
PARAM_NAMES = ("lin", "w1", "b1", "w2")


def num_features(num_signals: int) -> int:
  return 2 * num_signals + TOP * num_signals + 1


def features(z, history_lengths):
  """z [B, I, S] standardised signals, history_lengths [B] -> [B, I, F] float32 (F = num_features(S))."""
  import jax
  import jax.numpy as jnp
  b, n, s = z.shape
  order = jnp.argsort(-z, axis=1, stable=True)
  ranks = jnp.argsort(order, axis=1, stable=True)                                         # [B, I, S], 0 = best
  log_rank = -jnp.log1p(ranks.astype(jnp.float32))
  k = min(TOP, n)
  top = jax.lax.top_k(jnp.swapaxes(z, 1, 2), k)[0]                                        # [B, S, k]
  top = jnp.pad(top, ((0, 0), (0, 0), (0, TOP - k)))                                     # [B, S, TOP]
  user = jnp.concatenate([top.reshape(b, s * TOP), jnp.log1p(history_lengths.astype(jnp.float32))[:, None]], -1)
  return jnp.concatenate([z, log_rank, jnp.broadcast_to(user[:, None, :], (b, n, user.shape[-1]))], -1)


def _score(params, x):
  """x [B, I, F] -> [B, I]: the linear part reads the per-item features only (a per-user constant cannot change a
  user's ranking, and Adam would turn its zero gradient's rounding noise into steps), the hidden layer all."""
  import jax
  return x[..., :params["lin"].shape[0]] @ params["lin"] + jax.nn.gelu(x @ params["w1"] + params["b1"]) @ params["w2"]


def _chunk_nll(params, x, allowed, targets, weight):
  """Summed -log softmax(target) over the chunk's users (x [B, I, F], allowed [B, I], targets [B], weight [B])."""
  import jax
  import jax.numpy as jnp
  s = jnp.where(allowed, _score(params, x), -1e9)
  ll = jax.nn.log_softmax(s, axis=-1)[jnp.arange(len(targets)), targets]
  return -(weight * ll).sum()


@functools.lru_cache(maxsize=None)
def _jitted():
  import jax
  return (jax.jit(features), jax.jit(jax.value_and_grad(_chunk_nll)),
          jax.jit(lambda p, z, h: _score(p, features(z, h))))


def _chunk_users(num_items: int, num_signals: int) -> int:
  return max(1, FEATURE_BYTES // (num_items * num_features(num_signals) * 4))


def _stack(signals: dict[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
  return np.stack([np.asarray(signals[n], np.float32) for n in names], -1)               # [U, I, S]


def _padded(a: np.ndarray, rows: int, value=0) -> np.ndarray:
  """`a` with its first axis padded to `rows` with `value`."""
  if len(a) == rows:
    return a
  pad = np.full((rows - len(a),) + a.shape[1:], value, a.dtype)
  return np.concatenate([a, pad])


def init_params(start: Sequence[float], seed: int) -> dict[str, np.ndarray]:
  """The starting point: the linear part `start` [S] on the signals' z-scores (0 on the other features), the
  hidden layer near zero."""
  import jax
  f = num_features(len(start))
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  lin = np.zeros(2 * len(start), np.float32)  # on z and -log(1 + rank)
  lin[:len(start)] = np.asarray(start, np.float32)
  return {"lin": lin, "w1": np.asarray(jax.random.normal(k1, (f, HIDDEN)), np.float32) / np.sqrt(f),
          "b1": np.zeros(HIDDEN, np.float32), "w2": np.asarray(jax.random.normal(k2, (HIDDEN,)), np.float32) * 0.01}


def fit(signals: dict[str, np.ndarray], targets: np.ndarray, excluded: np.ndarray | None,
        history_lengths: np.ndarray, start: Sequence[float], seed: int = 0, steps: int = STEPS
        ) -> dict[str, np.ndarray]:
  """Parameters fitted on VALIDATION rows: signals {name: standardised [U, I]}, targets [U], excluded [U, I] bool
  or None, history_lengths [U]; `start` [S]: the linear part's first weights on the signals. A user whose target
  is excluded (a repeat purchase the ranking can never show) carries no weight."""
  import jax.numpy as jnp
  import optax
  names = list(signals)
  z = _stack(signals, names)
  u, n, s = z.shape
  targets = np.asarray(targets, np.int32)
  allowed = ~excluded if excluded is not None else np.ones((u, n), bool)
  weight = allowed[np.arange(u), targets].astype(np.float32)
  total = max(float(weight.sum()), 1.0)
  history_lengths = np.asarray(history_lengths, np.float32)
  build, value_and_grad, _ = _jitted()
  b = min(_chunk_users(n, s), u)
  chunks = []
  for lo in range(0, u, b):  # every chunk padded to b users (one compilation); padded users weigh 0
    chunks.append((_padded(z[lo:lo + b], b), _padded(history_lengths[lo:lo + b], b),
                   _padded(allowed[lo:lo + b], b, True), _padded(targets[lo:lo + b], b),
                   _padded(weight[lo:lo + b], b) / total))
  cache = len(chunks) * b * n * num_features(s) * 4 <= FEATURE_CACHE_BYTES
  built = [build(c[0], c[1]) for c in chunks] if cache else None
  params = {k: jnp.asarray(v) for k, v in init_params(start, seed).items()}
  opt = optax.adam(LEARNING_RATE)
  state = opt.init(params)
  for _ in range(steps):
    grads = None
    for i, (zc, hc, ac, tc, wc) in enumerate(chunks):
      x = built[i] if cache else build(zc, hc)
      _, g = value_and_grad(params, x, ac, tc, wc)
      grads = g if grads is None else {k: grads[k] + g[k] for k in g}
    grads = {**grads, "w1": grads["w1"] + 2 * WEIGHT_DECAY * params["w1"],
             "w2": grads["w2"] + 2 * WEIGHT_DECAY * params["w2"]}
    updates, state = opt.update(grads, state)
    params = optax.apply_updates(params, updates)
  return {k: np.asarray(v, np.float32) for k, v in params.items()}


def bagged(fits: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """One network whose scores are the mean of `fits`' scores: the linear parts averaged, the hidden layers side by
  side (hidden width K * HIDDEN) with their output weights divided by K."""
  k = len(fits)
  return {"lin": np.mean([f["lin"] for f in fits], 0), "w1": np.concatenate([f["w1"] for f in fits], 1),
          "b1": np.concatenate([f["b1"] for f in fits]), "w2": np.concatenate([f["w2"] for f in fits]) / k}


def scores(params: dict[str, np.ndarray], signals: dict[str, np.ndarray], names: Sequence[str],
           history_lengths: np.ndarray) -> np.ndarray:
  """[U, I] float32 fused scores of the standardised `signals` (in the fitted order `names`)."""
  z = _stack(signals, names)
  u, n, s = z.shape
  _, _, fused = _jitted()
  b = min(_chunk_users(n, s), max(u, 1))
  h = np.asarray(history_lengths, np.float32)
  out = [np.asarray(fused(params, _padded(z[lo:lo + b], b), _padded(h[lo:lo + b], b)))[:min(b, u - lo)]
         for lo in range(0, u, b)]
  return np.concatenate(out) if out else np.zeros((0, n), np.float32)


def params_to_json(params: dict[str, np.ndarray]) -> dict:
  return {k: np.asarray(params[k], np.float64).round(8).tolist() for k in PARAM_NAMES}


def params_from_json(doc, num_signals: int, where: str) -> dict[str, np.ndarray]:
  """Stored parameters, checked against the shapes `num_signals` signals need; a damaged entry is a DataError."""
  f = num_features(num_signals)
  if not isinstance(doc, dict):
    raise DataError("the learned fusion's params are not a mapping; evaluate the run again", where)
  hidden = len(doc["b1"]) if isinstance(doc.get("b1"), list) and doc["b1"] else HIDDEN
  shapes = {"lin": (2 * num_signals,), "w1": (f, hidden), "b1": (hidden,), "w2": (hidden,)}
  out = {}
  for k, shape in shapes.items():
    try:
      a = np.asarray(doc[k], np.float32)
    except (KeyError, TypeError, ValueError):
      raise DataError(f"the learned fusion's params lack a numeric {k!r}; evaluate the run again", where) from None
    if a.shape != shape or not np.isfinite(a).all():
      raise DataError(f"the learned fusion's {k!r} has shape {a.shape} (want {shape}, finite) for {num_signals} "
                      "signals; evaluate the run again", where)
    out[k] = a
  return out
