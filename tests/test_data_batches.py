"""Rendering, tokenization, truncation, masks, bucketing, mixture proportions and iterator save/restore."""
import numpy as np
import pytest

from calrec_jax.data.iterators import MixtureIterator, mixture_probabilities
from calrec_jax.data.text import render_item, render_prompt


def test_render_item_and_prompt():
  text = render_item({"title": "Shoe GOO&amp;reg; <b>Glue</b>", "brand": "", "price": "$5.99", "category": "Home"})
  assert text == "Title: Shoe GOO® Glue, Category: Home, Brand: Unknown, Price: $5.99."
  assert render_item({"title": "X"}, ("title",)) == "Title: X."
  p = render_prompt(["A.", "B."])
  assert p == ("This is a summary of the user's purchase history.\nThe first purchased item is as follows:\nA.\n"
               "The next purchased item is as follows:\nB.\nThe next purchased item is as follows:\n")


def test_prompt_tokens_decode_to_the_template(synthetic_parts):
  cats, tok, enc = synthetic_parts
  seq = cats[0].sequences[0]
  ids, kept = enc.prompt_tokens(0, seq[:2])
  assert kept == 2
  assert tok.decode(ids[1:]) == render_prompt([enc.item_text(0, i) for i in seq[:2]])


def test_truncation_drops_oldest_items(synthetic_parts):
  cats, tok, enc = synthetic_parts
  hist = cats[0].sequences[0][:5] * 3  # 15 items > max_history=6 and > max_len
  ids, kept = enc.prompt_tokens(0, hist)
  assert kept <= 6 and len(ids) + enc.spec.target_len <= enc.spec.max_len
  text = tok.decode(ids[1:])
  assert text.endswith(render_prompt([enc.item_text(0, i) for i in hist[-kept:]]).split("\n", 1)[1])


def test_masks_and_lm_targets(synthetic_parts):
  cats, tok, enc = synthetic_parts
  seq = cats[0].sequences[3]
  ex = enc.encode(0, seq[:3], seq[3])
  b = enc.collate([ex], 2)
  n_p, n_g = len(ex["prompt"]), len(ex["target"])
  assert b["tokens"].shape[1] in enc.buckets
  assert b["input_mask"][0].sum() == n_p + n_g and not b["input_mask"][1].any()
  assert b["history_mask"][0].sum() == n_p - 1 and not (b["history_mask"][0] & b["target_mask"][0]).any()
  assert tok.decode(b["tokens"][0][b["target_mask"][0]]) == enc.item_text(0, seq[3])
  # position lm_positions[j] predicts lm_labels[j] == the next token of the joint sequence
  for j in range(n_g):
    assert b["tokens"][0, b["lm_positions"][0, j] + 1] == b["lm_labels"][0, j]
  assert b["lm_labels"][0, n_g - 1] == tok.eos_id and b["lm_weights"][0].sum() == n_g
  assert tok.decode(b["item_tokens"][0][b["item_text_mask"][0]]) == enc.item_text(0, seq[3])
  assert b["example_weight"].tolist() == [1.0, 0.0]
  assert b["target_id"][0] == seq[3]


def test_bucketing_limits_shapes(synthetic_parts):
  cats, tok, enc = synthetic_parts
  it = MixtureIterator(enc, 8, seed=0)
  shapes = {next(it)["tokens"].shape for _ in range(20)}
  assert shapes <= {(8, b) for b in enc.buckets}


def test_mixture_proportions(synthetic_parts):
  cats, tok, enc = synthetic_parts
  it = MixtureIterator(enc, 64, alpha=0.3, seed=1)
  expected = mixture_probabilities([120, 40], 0.3)
  counts = np.zeros(2)
  for _ in range(60):
    for c, _ in it.next_global_choice():
      counts[c] += 1
  observed = counts / counts.sum()
  sd = np.sqrt(expected * (1 - expected) / counts.sum())
  assert np.all(np.abs(observed - expected) < 4 * sd)
  assert not np.allclose(expected, [0.75, 0.25])  # alpha matters: proportional would be 0.75/0.25


def test_iterator_save_restore_gives_same_batches(synthetic_parts):
  cats, tok, enc = synthetic_parts
  a = MixtureIterator(enc, 8, seed=3)
  for _ in range(7):
    next(a)
  state = a.get_state()
  expect = [next(a) for _ in range(3)]
  b = MixtureIterator(enc, 8, seed=3)
  b.set_state(state)
  for e in expect:
    got = next(b)
    for k in e:
      np.testing.assert_array_equal(got[k], e[k])


def test_epochs_visit_every_training_example(synthetic_parts):
  cats, tok, enc = synthetic_parts
  it = MixtureIterator(enc, 10, alpha=0.0, seed=0)
  order = [[], []]
  while min(len(o) for o in order) < max(len(e) for e in it.examples):
    for c, row in it.next_global_choice():
      order[c].append(row)
  for c in range(2):
    n = len(it.examples[c])
    assert sorted(order[c][:n]) == list(range(n))  # one epoch = every example exactly once


def test_per_host_shards_partition_the_global_batch(synthetic_parts):
  cats, tok, enc = synthetic_parts
  full = next(MixtureIterator(enc, 8, seed=5))
  halves = [next(MixtureIterator(enc, 8, seed=5, process_index=i, process_count=2)) for i in range(2)]
  np.testing.assert_array_equal(np.concatenate([h["target_id"] for h in halves]), full["target_id"])


def test_max_len_too_small_is_a_config_error(synthetic_parts):
  from calrec_jax.data.examples import ExampleEncoder, ExampleSpec
  from calrec_jax.errors import ConfigError
  cats, tok, _ = synthetic_parts
  with pytest.raises(ConfigError, match="data.max_len=40"):
    ExampleEncoder(tok, cats, ExampleSpec(max_len=40, max_item_tokens=64, length_buckets=()))
