"""The CALRec objective as one object: named loss terms looked up in a registry, each weighted by `loss.w_<name>`.

L = sum over terms of w_name * term_name; the registered terms are calrec-method.md §3's
w_nig * L_NIG + w_tt * InfoNCE(v_T|U, v_T) + w_ut * InfoNCE(v_U, v_T).

A term is one of two kinds, which decides how gradient accumulation evaluates it:
- a *token* term reads the LM hidden states of the rows it is given; each microbatch divides by the whole batch's
  weight, so the microbatches' values add up to the batch's (evaluated per microbatch);
- an *embedding* term reads the whole batch's [R, E] embeddings at once, so its negatives span the batch or the
  catalog's bank (evaluated once, on the embeddings cached by a first pass).
`Objective.token_loss` and `Objective.embedding_loss` are the only places terms are combined; the plain step and
gradient accumulation (train/step.py) both call them. A new term is one `register_term` call plus its
`loss.w_<name>` key in configs/base.py (config_check validates every registered weight).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from calrec_jax.errors import ConfigError
from calrec_jax.model.item_ids import rows_of, with_offsets
from calrec_jax.train.losses import bank_info_nce, chunked_lm_loss, info_nce

Array = jax.Array
EMBEDDINGS = ("v_u", "v_t_given_u", "v_t")  # the towers' [R, E] outputs that embedding terms read


@dataclasses.dataclass(frozen=True)
class LossConfig:
  weights: tuple[tuple[str, float], ...] = (("nig", 1.0), ("tt", 0.5), ("ut", 0.5))  # (term name, weight)
  temperature: float = 0.05
  symmetric: bool = False
  vocab_chunk: int = 16_384
  lm_vocab: tuple[int, ...] = ()  # sorted token ids L_NIG's softmax runs over (empty: the whole vocabulary)
  bank_excluded: tuple[int, ...] = ()  # global item ids never used as bank negatives (a cold-start split's new items)


@dataclasses.dataclass(frozen=True)
class TokenInputs:
  """What a token term reads: the rows' LM hidden states [R, Lt, D], labels [R, Lt] and weights [R, Lt], the
  output embedding [V, D], the model's final-logit softcap, and the whole batch's weight sum (None: these rows')."""
  lm_hidden: Array
  labels: Array
  weights: Array
  out_embedding: Array
  softcap: float
  denominator: Array | None


@dataclasses.dataclass(frozen=True)
class EmbeddingInputs:
  """What an embedding term reads: the whole batch's embeddings ({name: [R, E]}, L2-normalised), target ids [R],
  which rows are real [R], the item bank [I, E] (loss.negatives='catalog') or None, the learned item
  identities [I, E] (model.item_id_offsets, model/item_ids.py) or None, the fresh item-tower vectors of
  the step's sampled catalog items [M, E] with their global ids [M] (loss.sampled_negatives) or None, and the
  learned item bias [I] (model.item_bias) or None."""
  embeddings: dict[str, Array]
  target_id: Array
  valid: Array
  bank: Array | None
  item_offsets: Array | None = None
  sampled_key: Array | None = None
  sampled_ids: Array | None = None
  item_bias: Array | None = None


@dataclasses.dataclass(frozen=True)
class Term:
  name: str                                                         # metrics loss_<name>, acc_<name>
  kind: str                                                         # 'token' | 'embedding'
  fn: Callable[[Any, LossConfig], tuple[Array, Array]]              # (inputs, config) -> (loss, accuracy)


TERMS: dict[str, Term] = {}


def register_term(name: str, kind: str, fn: Callable[[Any, LossConfig], tuple[Array, Array]]) -> None:
  """Adds a loss term, weighted by the config key `loss.w_<name>`."""
  if kind not in ("token", "embedding"):
    raise ValueError(f"loss term {name!r}: kind must be 'token' or 'embedding', not {kind!r}")
  TERMS[name] = Term(name, kind, fn)


def _next_item_generation(x: TokenInputs, lc: LossConfig) -> tuple[Array, Array]:
  """L_NIG over the whole vocabulary, or over `lc.lm_vocab` (the softmax restricted to the tokens that item texts
  use: the rows of the output embedding are gathered and the labels renumbered; every label is in it)."""
  w_out, labels = x.out_embedding, x.labels
  if lc.lm_vocab:
    vocab = jnp.asarray(lc.lm_vocab, jnp.int32)                                        # [V']
    w_out = jnp.take(w_out, vocab, axis=0)                                             # [V', D]
    labels = jnp.minimum(jnp.searchsorted(vocab, labels), vocab.shape[0] - 1)          # padding: weight 0
  return chunked_lm_loss(x.lm_hidden, w_out, labels, x.weights, lc.vocab_chunk, x.softcap, x.denominator)


def info_nce_term(query: str, key: str) -> Callable[[EmbeddingInputs, LossConfig], tuple[Array, Array]]:
  """InfoNCE(query, key) between two tower outputs: against the other rows' targets, or, with a bank, against
  every item of the catalog. With learned item identities, the item tower's vectors (`v_t`, fresh or banked) carry
  their item's offset, and with a learned item bias each item's logits carry its bias; the step's sampled items
  (fresh item-tower vectors) join the bank's straight-through keys."""
  def term(x: EmbeddingInputs, lc: LossConfig) -> tuple[Array, Array]:
    q, k = x.embeddings[query], x.embeddings[key]
    item_keyed = key == "v_t"
    offsets = x.item_offsets if item_keyed else None
    bias = x.item_bias if item_keyed else None
    if x.bank is not None:
      sampled = (x.sampled_key, x.sampled_ids) if item_keyed else (None, None)
      return bank_info_nce(q, k, x.target_id, x.valid, x.bank, lc.temperature, lc.bank_excluded, offsets, *sampled,
                           bias=bias)
    if offsets is not None:
      k = with_offsets(k, offsets, x.target_id)
    key_bias = None if bias is None else rows_of(bias, x.target_id)                        # [R]
    return info_nce(q, k, x.target_id, x.valid, lc.temperature, lc.symmetric, key_bias)
  return term


register_term("nig", "token", _next_item_generation)
register_term("tt", "embedding", info_nce_term("v_t_given_u", "v_t"))
register_term("ut", "embedding", info_nce_term("v_u", "v_t"))


def loss_config(section, lm_vocab: tuple[int, ...] = (), bank_excluded: tuple[int, ...] = ()) -> LossConfig:
  """LossConfig from the config's `loss` section: one weight per registered term (`w_<name>`); `lm_vocab` from
  `catalog_vocabulary` when loss.lm_vocab is 'catalog'; `bank_excluded`: items the training catalog lacks."""
  unknown = [k for k in section.keys() if k.startswith("w_") and k[2:] not in TERMS]
  if unknown:
    raise ConfigError(f"loss.{unknown[0]}: no loss term {unknown[0][2:]!r} (registered: {', '.join(TERMS)}); "
                      "remove the key or register the term (train/objective.py)")
  weights = tuple((name, float(section.get(f"w_{name}", 0.0))) for name in TERMS)
  return LossConfig(weights, section.temperature, section.symmetric, section.vocab_chunk, tuple(lm_vocab),
                    tuple(sorted(bank_excluded)))


class Objective:
  """The weighted sum of the configured terms, split by kind (see the module docstring)."""

  def __init__(self, lc: LossConfig):
    missing = [n for n, _ in lc.weights if n not in TERMS]
    if missing:
      raise ConfigError(f"loss term {missing[0]!r} is not registered (registered: {', '.join(TERMS)})")
    self.lc = lc
    self.terms = [(TERMS[n], w) for n, w in lc.weights]

  def _combine(self, kind: str, inputs) -> tuple[Array, dict[str, Array]]:
    total, metrics = jnp.zeros((), jnp.float32), {}
    for term, weight in self.terms:
      if term.kind == kind:
        value, acc = term.fn(inputs, self.lc)
        total = total + weight * value
        metrics[f"loss_{term.name}"], metrics[f"acc_{term.name}"] = value, acc
    return total, metrics

  def metric_names(self, kind: str) -> list[str]:
    """The metrics `token_loss` or `embedding_loss` returns (kind 'token' or 'embedding')."""
    return [f"{m}_{t.name}" for t, _ in self.terms if t.kind == kind for m in ("loss", "acc")]

  def token_loss(self, x: TokenInputs) -> tuple[Array, dict[str, Array]]:
    """Weighted sum of the token terms on these rows, and each term's loss_/acc_ metrics."""
    return self._combine("token", x)

  def embedding_loss(self, x: EmbeddingInputs) -> tuple[Array, dict[str, Array]]:
    """Weighted sum of the embedding terms over the whole batch, and each term's loss_/acc_ metrics."""
    return self._combine("embedding", x)
