"""Catalog-constrained beam search: the sub-vocabulary head equals the full logits restricted, and with as many
beams as items the search is exhaustive, so its items and scores equal every item's teacher-forced score."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from calrec_jax.eval.beams import CatalogBeamSearch, sub_vocabulary_logits
from calrec_jax.eval.constrained import CatalogTrie
from calrec_jax.model.decoder import Decoder
from test_eval import tiny_decoder

STOP = 1
PROMPTS = [[2, 5, 9, 11, 4], [2, 7, 3], [2, 9, 9, 9, 9, 9, 8]]


def catalog():
  rng = np.random.default_rng(0)
  items = [rng.integers(3, 40, size=rng.integers(1, 6)).tolist() for _ in range(14)]
  return items + [[5, 6], [5, 6, 7], [5, 6, 7, 8], [12, 13], [12, 13]]  # prefixes of each other, and a duplicate


def naming_length(trie: CatalogTrie, item_tokens, stop) -> tuple[int, int]:
  """(tokens emitted until a prefix names an item, the item it names) along this item's path."""
  node = 0
  for j, t in enumerate(list(item_tokens) + [stop]):
    start, end = trie.offsets[node], trie.offsets[node + 1]
    node = int(trie.children[start + list(trie.tokens[start:end]).index(t)])
    if trie.item_of_node[node] >= 0:
      return j + 1, int(trie.item_of_node[node])
  raise AssertionError("a path that never names an item")


def teacher_forced(dec, params, prompt, tokens, vocab):
  """Sum of log p(token) over `tokens` after `prompt`, the softmax over `vocab` (None: every token)."""
  seq = list(prompt) + list(tokens)
  x = jnp.asarray([seq])
  h, _ = dec.apply({"params": params}, x, jnp.arange(len(seq))[None], x > -1)
  logits = np.asarray(dec.apply({"params": params}, h[0], method=Decoder.logits), np.float64)     # [T, V]
  cols = np.arange(logits.shape[1]) if vocab is None else np.asarray(vocab)
  sub = logits[:, cols]
  logp = sub - np.log(np.exp(sub - sub.max(1, keepdims=True)).sum(1, keepdims=True)) - sub.max(1, keepdims=True)
  where = {int(c): i for i, c in enumerate(cols)}
  return sum(logp[len(prompt) - 1 + j, where[t]] for j, t in enumerate(tokens))


def test_the_sub_vocabulary_head_equals_the_full_logits_restricted():
  dec, params = tiny_decoder(scale=1.0)
  h = jax.random.normal(jax.random.PRNGKey(0), (3, dec.cfg.d_model))
  vocab = jnp.asarray([1, 4, 9, 30, 63], jnp.int32)
  full = dec.apply({"params": params}, h, method=Decoder.logits)
  np.testing.assert_allclose(sub_vocabulary_logits(dec, params, h, vocab), full[:, vocab], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sub_vocabulary", [True, False])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_exhaustive_beams_equal_every_items_teacher_forced_score(sub_vocabulary, length_penalty):
  dec, params = tiny_decoder(scale=1.0)
  items = catalog()
  search = CatalogBeamSearch(dec, items, STOP, sub_vocabulary=sub_vocabulary)
  vocab = sorted({t for it in items for t in it} | {STOP}) if sub_vocabulary else None
  got_items, got_scores = search.search(params, PROMPTS, num_beams=len(items), length_penalty=length_penalty)
  trie = CatalogTrie.build(items, STOP)
  named = {}
  for i, it in enumerate(items):
    n, item = naming_length(trie, it, STOP)
    named[item] = (list(it) + [STOP])[:n]
  first = sorted({tuple(it): i for i, it in reversed(list(enumerate(items)))}.values())
  assert sorted(named) == first and len(first) < len(items)  # a duplicated text names its lowest item only
  for p, prompt in enumerate(PROMPTS):
    ref = {i: teacher_forced(dec, params, prompt, toks, vocab) / len(toks) ** length_penalty
           for i, toks in named.items()}
    order = sorted(ref, key=lambda i: -ref[i])
    found = [int(i) for i in got_items[p] if i >= 0]
    assert found == order
    np.testing.assert_allclose(got_scores[p][:len(found)], [ref[i] for i in order], rtol=1e-4, atol=1e-4)


def test_few_beams_keep_the_best_items_and_name_real_items_only():
  dec, params = tiny_decoder(scale=1.0)
  items = catalog()
  search = CatalogBeamSearch(dec, items, STOP)
  all_items, _ = search.search(params, PROMPTS, num_beams=len(items))
  top4, scores = search.search(params, PROMPTS, num_beams=4)
  for p in range(len(PROMPTS)):
    assert set(top4[p]) <= set(range(len(items))) and len(set(top4[p])) == 4
    assert top4[p][0] == all_items[p][0]  # the best item survives a narrow search
    assert np.all(np.diff(scores[p]) <= 0)
