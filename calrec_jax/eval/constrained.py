"""Catalog-grounded decoding: a prefix trie over the catalog's tokenised item texts, applied as logit masks.

Every sampled continuation follows a path of the trie and ends with the stop token after a complete item text,
so each (finished) sample is the text of a real catalog item. The trie is kept as CSR arrays so that the mask
of a decoding step is one gather + one scatter inside the jitted loop:
  offsets  [nodes + 1]: children of node n are entries offsets[n] .. offsets[n+1]-1
  tokens   [edges + width]: the token of each edge (padded with -1 so a fixed-width slice never runs off)
  children [edges + width]: the node each edge leads to
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass
class CatalogTrie:
  offsets: np.ndarray
  tokens: np.ndarray
  children: np.ndarray
  width: int  # most children of any node (static size of the per-step slice)
  item_of_node: np.ndarray  # [nodes] the item a node names (the only one below it; at a stop: the lowest
  #                           index among items of that text), -1 while several items share the prefix

  @classmethod
  def build(cls, sequences: Sequence[Sequence[int]], stop_id: int) -> "CatalogTrie":
    """Trie of `sequences` (item token ids, no BOS/EOS; item i is sequences[i]), each followed by `stop_id`.
    Node 0 is the root."""
    nodes: list[dict[int, int]] = [{}]
    below: list[set[int]] = [set()]  # the items under each node (at most 2 kept: enough to tell 'one' from 'many')
    for item, seq in enumerate(sequences):
      node = 0
      path = list(seq) + [stop_id]
      for j, t in enumerate(path):
        nxt = nodes[node].get(int(t))
        if nxt is None:
          nxt = nodes[node][int(t)] = len(nodes)
          nodes.append({})
          below.append(set())
        node = nxt
        if len(below[node]) < 2 or j == len(path) - 1:
          below[node].add(item)
    item_of_node = np.full(len(nodes), -1, np.int32)
    for n, items in enumerate(below):
      if len(items) == 1 or (items and not nodes[n]):  # one item below, or a stop leaf (duplicates: the lowest)
        item_of_node[n] = min(items)
    counts = np.asarray([len(n) for n in nodes], np.int32)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    width = int(counts.max())
    tokens = np.full(int(offsets[-1]) + width, -1, np.int32)
    children = np.zeros(int(offsets[-1]) + width, np.int32)
    for n, kids in enumerate(nodes):
      for j, (t, c) in enumerate(sorted(kids.items())):
        tokens[offsets[n] + j], children[offsets[n] + j] = t, c
    return cls(offsets, tokens, children, width, item_of_node)

  def arrays(self) -> dict[str, jax.Array]:
    return {"offsets": jnp.asarray(self.offsets), "tokens": jnp.asarray(self.tokens),
            "children": jnp.asarray(self.children)}


def _edges(trie: dict[str, jax.Array], node: jax.Array, width: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(tokens [R, W], children [R, W], valid [R, W]) of each row's current node."""
  start = trie["offsets"][node]  # [R]
  count = trie["offsets"][node + 1] - start
  take = lambda a: jax.vmap(lambda s: jax.lax.dynamic_slice(a, (s,), (width,)))(start)  # noqa: E731
  valid = jnp.arange(width)[None, :] < count[:, None]
  return take(trie["tokens"]), take(trie["children"]), valid


def constrain_logits(logits: jax.Array, trie: dict[str, jax.Array], node: jax.Array, width: int) -> jax.Array:
  """logits [R, V] with every token that does not continue a catalog item from `node` [R] set to -inf."""
  toks, _, valid = _edges(trie, node, width)
  v = logits.shape[-1]
  rows = jnp.arange(logits.shape[0])[:, None]
  keep = jnp.zeros(logits.shape, bool).at[rows, jnp.where(valid, toks, v)].set(True, mode="drop")
  return jnp.where(keep, logits, -jnp.inf)


def advance(trie: dict[str, jax.Array], node: jax.Array, token: jax.Array, width: int) -> jax.Array:
  """The node each row reaches by emitting `token` [R] (rows whose token is not an edge stay put)."""
  toks, kids, valid = _edges(trie, node, width)
  match = valid & (toks == token[:, None])
  return jnp.where(match.any(-1), kids[jnp.arange(len(node)), jnp.argmax(match, -1)], node)
