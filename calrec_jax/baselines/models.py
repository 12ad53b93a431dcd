"""ID-based sequential recommenders, laid out as RecBole 1.2.1 builds them (so its hyper-parameters transfer).

Both map item histories [B, L] (item index + 1, 0 = pad, left-aligned) and their lengths [B] to a sequence
representation [B, E]; scores over the catalog are its dot product with the item embedding table
(`item_scores`), trained with full-softmax cross-entropy (RecBole's `loss_type: CE`).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

_normal = nn.initializers.normal(0.02)  # RecBole's initializer_range


def _last(x: jax.Array, lengths: jax.Array) -> jax.Array:
  """x [B, L, E] at position lengths - 1 -> [B, E]."""
  return jnp.take_along_axis(x, jnp.maximum(lengths - 1, 0)[:, None, None], axis=1)[:, 0]


class SASRec(nn.Module):
  """Self-attentive sequential recommendation (Kang & McAuley 2018): post-LN causal transformer over item ids."""
  num_items: int          # catalog size (the embedding table has num_items + 1 rows: row 0 is padding)
  max_len: int = 50
  hidden: int = 64
  layers: int = 2
  heads: int = 2
  inner: int = 256
  dropout: float = 0.5
  attn_dropout: float = 0.5
  layer_norm_eps: float = 1e-12

  def setup(self):
    self.item_embedding = nn.Embed(self.num_items + 1, self.hidden, embedding_init=_normal)

  def item_table(self) -> jax.Array:
    return self.item_embedding.embedding[1:]  # [I, E]

  @nn.compact
  def __call__(self, items: jax.Array, lengths: jax.Array, deterministic: bool = True) -> jax.Array:
    b, length = items.shape
    dense = lambda n, name: nn.Dense(n, kernel_init=_normal, name=name)  # noqa: E731
    norm = lambda name: nn.LayerNorm(epsilon=self.layer_norm_eps, name=name)  # noqa: E731
    pos = self.param("position_embedding", _normal, (self.max_len, self.hidden))
    x = self.item_embedding(items) + pos[None, :length]  # [B, L, E]
    x = nn.Dropout(self.dropout)(norm("input_norm")(x), deterministic)
    causal = jnp.tril(jnp.ones((length, length), bool))
    allowed = causal[None, None] & (items > 0)[:, None, None, :]  # [B, 1, Q, K]
    bias = jnp.where(allowed, 0.0, -10000.0)  # RecBole's additive mask
    dh = self.hidden // self.heads
    for i in range(self.layers):
      split = lambda t: t.reshape(b, length, self.heads, dh)  # noqa: E731  [B, L, H, Dh]
      q, k, v = (split(dense(self.hidden, f"layer{i}_{n}")(x)) for n in ("query", "key", "value"))
      scores = jnp.einsum("BQHD,BKHD->BHQK", q, k) / jnp.sqrt(dh) + bias
      probs = nn.Dropout(self.attn_dropout)(jax.nn.softmax(scores, -1), deterministic)
      ctx = jnp.einsum("BHQK,BKHD->BQHD", probs, v).reshape(b, length, self.hidden)
      ctx = nn.Dropout(self.dropout)(dense(self.hidden, f"layer{i}_attn_out")(ctx), deterministic)
      x = norm(f"layer{i}_attn_norm")(x + ctx)
      ff = dense(self.hidden, f"layer{i}_ff_out")(jax.nn.gelu(dense(self.inner, f"layer{i}_ff_in")(x),
                                                              approximate=False))
      x = norm(f"layer{i}_ff_norm")(x + nn.Dropout(self.dropout)(ff, deterministic))
    return _last(x, lengths)  # [B, E]


class GRU4Rec(nn.Module):
  """Session-based recommendation with a GRU (Hidasi et al. 2016; RecBole's CE variant)."""
  num_items: int
  max_len: int = 50
  embedding: int = 64
  hidden: int = 128
  dropout: float = 0.3

  def setup(self):
    self.item_embedding = nn.Embed(self.num_items + 1, self.embedding,
                                   embedding_init=nn.initializers.xavier_normal())
    self.rnn = nn.RNN(nn.GRUCell(self.hidden, kernel_init=nn.initializers.xavier_uniform(),
                                 recurrent_kernel_init=nn.initializers.orthogonal()))
    self.out = nn.Dense(self.embedding, kernel_init=nn.initializers.xavier_normal())
    self.embedding_dropout = nn.Dropout(self.dropout)

  def item_table(self) -> jax.Array:
    return self.item_embedding.embedding[1:]  # [I, E]

  def __call__(self, items: jax.Array, lengths: jax.Array, deterministic: bool = True) -> jax.Array:
    x = self.embedding_dropout(self.item_embedding(items), deterministic)  # [B, L, E]
    h = self.rnn(x)  # [B, L, H]; left-aligned rows: position lengths-1 never sees padding
    return self.out(_last(h, lengths))  # [B, E]


def item_scores(model: nn.Module, params, items: jax.Array, lengths: jax.Array, deterministic: bool = True,
                rngs=None) -> jax.Array:
  """Scores of every catalog item [B, I] (dot product with the item table, as RecBole's full sort)."""
  seq = model.apply({"params": params}, items, lengths, deterministic, rngs=rngs)
  table = model.apply({"params": params}, method=model.item_table)
  return jnp.einsum("BE,IE->BI", seq, table)


def build_model(name: str, num_items: int, cfg) -> nn.Module:
  """`cfg`: the method's config section (configs/compare/*.py: sasrec / gru4rec)."""
  if name == "sasrec":
    return SASRec(num_items, cfg.max_len, cfg.hidden, cfg.layers, cfg.heads, cfg.inner, cfg.dropout,
                  cfg.attn_dropout)
  if name == "gru4rec":
    return GRU4Rec(num_items, cfg.max_len, cfg.embedding, cfg.hidden, cfg.dropout)
  raise ValueError(f"unknown ID baseline {name!r}; choose 'sasrec' or 'gru4rec'")
