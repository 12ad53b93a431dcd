"""BM25 against rank-bm25, the quasi-round-robin merge, metrics on hand-computed cases, generation."""
import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from calrec_jax.eval.bm25 import BM25Index, tokenize
from calrec_jax.eval.merge import merge_generations, order_generations, quasi_round_robin
from calrec_jax.eval.metrics import rank_of, ranking_metrics


def test_bm25_equals_rank_bm25_on_scientific(scientific_dir):
  from calrec_jax.data import recbole
  from calrec_jax.data.text import render_item
  data = recbole.load_recbole(scientific_dir, "Scientific")
  docs = [tokenize(render_item(a)) for a in data.catalog.attributes]
  ref = BM25Okapi(docs, k1=1.5, b=0.75, epsilon=0.25)
  ours = BM25Index(docs)
  queries = [docs[i][:12] for i in range(0, 1500, 50)] + [["glue", "glue", "gorilla"], ["unknown"], ["zzzz"]]
  got = ours.scores(queries)
  for q, row in zip(queries, got):
    np.testing.assert_allclose(row, ref.get_scores(q), atol=1e-6)


def test_bm25_negative_idf_floor_and_save_load(tmp_path):
  docs = [["a", "b"], ["a", "c"], ["a", "d"], ["e"]]  # 'a' has df > N/2 -> negative idf -> epsilon * mean
  ref = BM25Okapi(docs)
  idx = BM25Index(docs)
  np.testing.assert_allclose(idx.scores([["a", "e"]])[0], ref.get_scores(["a", "e"]), atol=1e-9)
  idx.save(str(tmp_path / "ix"))
  np.testing.assert_allclose(BM25Index.load(str(tmp_path / "ix")).scores([["a"]]), idx.scores([["a"]]))
  with pytest.raises(ValueError, match="catalog is empty"):
    BM25Index([])


def test_bm25_top_k_ranks_negative_scores_below_untouched_documents(tmp_path):
  """With a negative mean idf the floor itself is negative: documents holding the query term score below 0, so
  documents no query term reaches (score 0) come first, and a saved and loaded index ranks the same."""
  docs = [["a", "b", "c"], ["a", "b", "c"], ["a", "b", "c"], ["a", "b"], ["d"]]
  ref = BM25Okapi(docs)
  assert ref.get_scores(["a"]).min() < 0
  index = BM25Index(docs)
  index.save(str(tmp_path / "ix"))
  queries = [["a"], ["a", "d"], ["c", "c"], ["zzz"], []]
  for ix in (index, BM25Index.load(str(tmp_path / "ix"))):
    for k in (1, 3, 5):
      ids, scores = ix.top_k(queries, k)
      for q, query in enumerate(queries):
        full = ref.get_scores(query)
        expect = np.lexsort((np.arange(len(docs)), -np.round(full, 9)))[:k]
        assert ids[q].tolist() == expect.tolist(), (query, k)
        np.testing.assert_allclose(scores[q], full[expect], atol=1e-9)
  assert index.top_k([["a"]], 2)[0].tolist() == [[4, 0]]


def test_quasi_round_robin_order_dedup_exclusion():
  ranked = [[1, 2, 3], [4, 1, 5], [6, 7, 8]]
  # round 2: list 0 gives 2, list 1 gives 1 (taken: skipped), list 2 gives 7
  assert quasi_round_robin(ranked, [0, 1, 2], 5) == [1, 4, 6, 2, 7]
  assert quasi_round_robin(ranked, [2, 0], 3, exclude={6}) == [1, 7, 2]
  # two identical generations outrank a single one; then best score decides
  assert order_generations(["x", "y", "x", "z"], [1.0, 9.0, 2.0, 10.0]) == [0, 3, 1]
  top = merge_generations(["x", "", "x", "y"], np.array([[1, 2], [9, 9], [1, 2], [3, 4]]),
                          np.array([[5.0, 1], [0, 0], [5.0, 1], [9.0, 1]]), 3)
  assert top == [1, 3, 2]


def test_metrics_hand_computed():
  m = ranking_metrics([1, 3, 0, 12], ks=(1, 5, 10, 20))
  assert m["users"] == 4 and m["recall@1"] == 0.25 and m["recall@5"] == 0.5 and m["recall@20"] == 0.75
  assert m["ndcg@5"] == pytest.approx((1 + 1 / np.log2(4)) / 4)
  assert m["ndcg@20"] == pytest.approx((1 + 1 / np.log2(4) + 1 / np.log2(13)) / 4)
  assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 12) / 4)
  assert rank_of(7, [3, 7]) == 2 and rank_of(9, [3, 7]) == 0


def test_greedy_generation_with_cache_equals_argmax_recompute():
  import jax
  import jax.numpy as jnp
  from calrec_jax.eval.generate import generate
  from calrec_jax.model.config import preset
  from calrec_jax.model.decoder import Decoder
  cfg = preset("tiny", vocab_size=64)
  dec = Decoder(cfg)
  prompts = [[2, 5, 9, 11, 4], [2, 7, 3]]
  t = jnp.zeros((1, 4), jnp.int32)
  params = dec.init(jax.random.PRNGKey(3), t, t, t > -1)["params"]
  got = generate(dec, params, prompts, 1, 6, stop_ids=[-1], temperature=0.0)
  for p, g in zip(prompts, got):
    seq = list(p)
    for _ in range(6):
      x = jnp.asarray([seq])
      h, _ = dec.apply({"params": params}, x, jnp.arange(len(seq))[None], x > -1)
      seq.append(int(dec.apply({"params": params}, h[0, -1], method=Decoder.logits).argmax()))
    assert g[0] == seq[len(p):]


def tiny_decoder(vocab=64, seed=3, scale=8.0):
  """A tiny random decoder with weights scaled up so that next-token distributions are peaked (no near-ties)."""
  import jax
  import jax.numpy as jnp
  from calrec_jax.model.config import preset
  from calrec_jax.model.decoder import Decoder
  dec = Decoder(preset("tiny", vocab_size=vocab))
  t = jnp.zeros((1, 4), jnp.int32)
  params = dec.init(jax.random.PRNGKey(seed), t, t, t > -1)["params"]
  return dec, jax.tree_util.tree_map(lambda x: x * scale if x.ndim > 1 else x, params)


def reference_beam_search(dec, params, prompt, k, steps, stops, pad):
  """Beam search by full recomputation (no cache), one prompt; returns beams best first with their scores."""
  import jax
  import jax.numpy as jnp
  from calrec_jax.model.decoder import Decoder
  beams = [(list(prompt), 0.0, False)]
  for _ in range(steps):
    cands = []
    for seq, score, done in beams:
      if done:
        cands.append((seq + [pad], score, True))
        continue
      x = jnp.asarray([seq])
      h, _ = dec.apply({"params": params}, x, jnp.arange(len(seq))[None], x > -1)
      logp = np.asarray(jax.nn.log_softmax(dec.apply({"params": params}, h[0, -1], method=Decoder.logits)))
      cands += [(seq + [v], score + float(logp[v]), v in stops) for v in range(len(logp))]
    beams = sorted(cands, key=lambda c: -c[1])[:k]  # stable: ties keep (beam, token) order
  out = []
  for seq, score, _ in beams:
    gen = []
    for t in seq[len(prompt):]:
      if t in stops:
        break
      gen.append(t)
    out.append((gen, score))
  return out


def test_beam_search_with_cache_equals_recomputed_reference():
  from calrec_jax.eval.generate import generate
  dec, params = tiny_decoder()
  prompts = [[2, 5, 9, 11, 4], [2, 7, 3]]
  stops = [1, 17]
  got = generate(dec, params, prompts, 4, 5, stop_ids=stops, beam_search=True)
  for p, beams in zip(prompts, got):
    ref = reference_beam_search(dec, params, p, 4, 5, set(stops), dec.cfg.pad_id)
    assert beams == [g for g, _ in ref]
  # one beam is greedy decoding
  assert generate(dec, params, prompts, 1, 5, stop_ids=stops, beam_search=True) == \
      generate(dec, params, prompts, 1, 5, stop_ids=stops, temperature=0.0)


def test_sampling_is_seeded_and_respects_top_k():
  import jax
  from calrec_jax.eval.generate import generate
  dec, params = tiny_decoder(scale=1.0)
  prompts = [[2, 5, 9], [2, 7, 3, 8]]
  a = generate(dec, params, prompts, 3, 6, stop_ids=[-1], seed=5, temperature=1.0, top_k=2)
  assert a == generate(dec, params, prompts, 3, 6, stop_ids=[-1], seed=5, temperature=1.0, top_k=2)
  assert a != generate(dec, params, prompts, 3, 6, stop_ids=[-1], seed=6, temperature=1.0, top_k=2)
  # top_k=1 sampling is greedy decoding whatever the seed
  assert generate(dec, params, prompts, 2, 6, stop_ids=[-1], seed=9, top_k=1) == \
      generate(dec, params, prompts, 2, 6, stop_ids=[-1], temperature=0.0)
  del jax


def test_merge_ignores_empty_and_unmatched_generations():
  ranked = np.asarray([[3, 1, 2], [0, 1, 2], [5, 4, 2]])
  scores = np.asarray([[2.0, 1.0, 0.5], [0.0, 0.0, 0.0], [1.5, 0.0, 0.0]])
  # generation 1 matches nothing (all scores 0); generation 2 retrieves only item 5
  assert merge_generations(["a b", "zzz", "c"], ranked, scores, 10) == [3, 5, 1, 2]
  assert merge_generations(["", "  ", "zzz"], ranked, np.zeros((3, 3)), 10) == []


def test_bm25_top_k_orders_by_score_then_document_index():
  docs = [["red", "pen"], ["red", "pen"], ["blue", "pen"], ["red"], ["green", "ink"], ["red", "pen"]]
  index = BM25Index(docs)
  queries = [["red", "pen"], ["ink"], ["nothing"], []]
  ids, scores = index.top_k(queries, 4)
  full = index.scores(queries)
  for q in range(len(queries)):
    expect = sorted(range(len(docs)), key=lambda d: (-full[q, d], d))[:4]
    assert ids[q].tolist() == expect
    np.testing.assert_array_equal(scores[q], full[q, expect])
  assert ids[0][:3].tolist() == [0, 1, 5]  # equal scores: lower index first
  assert index.top_k([["red"]], 50)[0].shape == (1, len(docs))


def test_bm25_top_k_equals_the_full_ranking_on_a_zipf_corpus():
  """top_k's partition-then-sort selection gives exactly the full ranking (score desc, index asc) on a skewed corpus
  with a field name in most documents, repeated query tokens and unknown tokens."""
  rng = np.random.default_rng(0)
  words = [f"w{i}" for i in range(400)]
  p = 1.0 / np.arange(1, 401) ** 1.1
  p /= p.sum()
  docs = [list(rng.choice(words, size=rng.integers(3, 30), p=p)) for _ in range(3000)]
  docs = [[str(w) for w in d] + (["title"] if i % 3 else []) for i, d in enumerate(docs)]  # a field name
  queries = [[str(w) for w in rng.choice(words, size=rng.integers(1, 25), p=p)] for _ in range(300)]
  queries += [["title"], ["title", "title", "w399"], ["w5", "w5", "w5"], ["unknown"], []]
  index = BM25Index(docs)
  ids, scores = index.top_k(queries, 20)
  full = index.scores(queries)
  ref = BM25Okapi(docs)
  for q, row in enumerate(full):
    expect = np.lexsort((np.arange(len(docs)), -row))[:20]
    assert ids[q].tolist() == expect.tolist(), q
    np.testing.assert_array_equal(scores[q], row[expect])
    if q % 30 == 0:
      np.testing.assert_allclose(row, ref.get_scores(queries[q]), atol=1e-6)


@pytest.mark.parametrize("top_k,top_p,allowed", [(2, 1.0, [0, 1]), (0, 0.5, [0, 1]), (3, 0.35, [0]), (0, 1.0, [0, 1, 2, 3])])
def test_sample_token_draws_from_the_filtered_distribution(top_k, top_p, allowed):
  import jax
  import jax.numpy as jnp
  from calrec_jax.eval.generate import sample_token
  probs = np.asarray([0.4, 0.3, 0.2, 0.1])
  logits = jnp.asarray(np.log(probs)[[3, 0, 2, 1]][None].repeat(20000, 0))  # shuffled token order
  order = [1, 3, 2, 0]  # token ids of probs[0..3]
  toks = np.asarray(sample_token(logits, jax.random.PRNGKey(0), 1.0, top_k, top_p))
  counts = np.bincount(toks, minlength=4)[order] / len(toks)
  expect = np.zeros(4)
  expect[allowed] = probs[allowed] / probs[allowed].sum()
  np.testing.assert_allclose(counts, expect, atol=0.015)


@pytest.mark.parametrize("kw", [dict(temperature=1.0), dict(temperature=0.8, top_k=5), dict(temperature=1.0, top_p=0.9)])
def test_shared_prefill_sampling_equals_per_row_prefill_for_the_same_keys(kw):
  from calrec_jax.eval.generate import generate
  dec, params = tiny_decoder(scale=1.0)  # unscaled: flat distributions, so samples differ between rows
  prompts = [[2, 5, 9, 11, 4], [2, 7, 3], [2, 9, 9, 9, 9, 9, 1]]
  shared = generate(dec, params, prompts, 4, 8, stop_ids=[1], seed=3, shared_prefill=True, **kw)
  per_row = generate(dec, params, prompts, 4, 8, stop_ids=[1], seed=3, shared_prefill=False, **kw)
  assert shared == per_row
  assert len({tuple(s) for s in shared[0]}) > 1  # the N samples of one prompt are not copies of each other


def test_attributes_unknown_for_nearly_every_item_are_not_rendered():
  from calrec_jax.data.text import render_item, rendered_attributes
  items = [{"title": f"Pen {i}", "category": "Office", "brand": "Acme" if i % 2 else "", "price": ""}
           for i in range(100)]
  items[0]["price"] = "$3.00"  # 1% of the items: below the 5% default
  attrs = rendered_attributes(items, ("title", "category", "brand", "price"))
  assert attrs == ("title", "category", "brand")
  assert render_item(items[1], attrs) == "Title: Pen 1, Category: Office, Brand: Acme."
  assert render_item(items[2], attrs) == "Title: Pen 2, Category: Office, Brand: Unknown."
  assert rendered_attributes(items, ("title", "price"), min_coverage=0.0) == ("title", "price")
  assert rendered_attributes([{"title": ""}], ("title", "brand")) == ("title",)  # the title is always kept


def test_office_items_render_without_a_price(tmp_path):
  """The real Office data has no prices: its item texts (targets, BM25 documents, item tower) leave Price out."""
  import os
  from calrec_jax.data import recbole
  from calrec_jax.data.examples import ExampleEncoder, ExampleSpec
  from calrec_jax.data.tokenizer import train_tokenizer
  office = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
                        "amazon2014-office")
  if not os.path.exists(os.path.join(office, "Office.item2index")):
    pytest.skip("shared Office data not present")
  data = recbole.load_recbole(office, "Office")
  tok = train_tokenizer([a["title"] for a in data.catalog.attributes], 2000)
  enc = ExampleEncoder(tok, [data], ExampleSpec(max_len=256, length_buckets=(256,)))
  assert enc.attributes == [("title", "category", "brand")]
  assert "Price" not in enc.item_text(0, 0) and enc.item_text(0, 0).startswith("Title: ")


@pytest.mark.parametrize("kw", [dict(temperature=1.0), dict(temperature=0.7, top_k=3), dict(temperature=0.0)])
def test_constrained_decoding_never_leaves_the_catalog(kw):
  from calrec_jax.eval.constrained import CatalogTrie
  from calrec_jax.eval.generate import generate
  dec, params = tiny_decoder(scale=1.0)
  rng = np.random.default_rng(0)
  catalog = [rng.integers(3, 64, size=rng.integers(1, 7)).tolist() for _ in range(30)] + [[5, 6], [5, 6, 7]]
  trie = CatalogTrie.build(catalog, stop_id=1)
  prompts = [[2, 5, 9, 11, 4], [2, 7, 3], [2, 9, 9, 9, 9, 9, 8]]
  out = generate(dec, params, prompts, 16, 10, stop_ids=[1, 2], seed=0, trie=trie, **kw)
  samples = [tuple(g) for per_prompt in out for g in per_prompt]
  assert set(samples) <= {tuple(c) for c in catalog}  # every sample is a complete catalog item
  if kw["temperature"]:
    assert len(set(samples)) > 5  # and sampling still explores the catalog
  free = generate(dec, params, prompts, 16, 10, stop_ids=[1, 2], seed=0, **kw)
  assert not {tuple(g) for p in free for g in p} <= {tuple(c) for c in catalog}  # unconstrained leaves it
  with pytest.raises(ValueError, match="beam search"):
    generate(dec, params, prompts, 2, 4, stop_ids=[1], trie=trie, beam_search=True)


def test_generations_are_stored_as_visible_text():
  """Byte tokens of a weakly trained model (control, zero-width, replacement characters) never reach the
  stored generations or the BM25 query; ordinary punctuation and non-ASCII letters stay."""
  from calrec_jax.data.text import visible_text
  assert visible_text("\x01Nitrile \u200bgloves\ufffd\x1f 100\x7fcount\n") == "Nitrile gloves 100 count"
  assert visible_text("Pipette-Spitzen für Labor, 5 µl") == "Pipette-Spitzen für Labor, 5 µl"
  assert visible_text("\x00\x02\ufeff") == ""


def test_user_tower_from_the_prompt_alone_equals_it_with_the_target_after_the_prompt(tiny_model):
  """Dense retrieval encodes histories without a target (a shorter length bucket); causal attention makes v_U the
  same as in the training layout, where the target follows the prompt."""
  from calrec_jax.model.two_tower import TwoTower
  cats, enc, model, params = tiny_model
  seqs = cats[0].sequences
  rows = [(u, seqs[u][:-1], seqs[u][-1]) for u in range(8)]
  with_target = enc.collate([enc.encode(0, h, t) for _, h, t in rows], 8)
  alone = enc.collate_prompts([enc.prompt_tokens(0, h)[0] for _, h, _ in rows], 8)
  assert alone["tokens"].shape[1] <= with_target["tokens"].shape[1]
  np.testing.assert_array_equal(alone["history_mask"], with_target["history_mask"][:, :alone["tokens"].shape[1]])
  v = [model.apply({"params": params}, b["tokens"], b["positions"], b["input_mask"], b["history_mask"],
                   method=TwoTower.user_embedding) for b in (with_target, alone)]
  np.testing.assert_allclose(np.asarray(v[1]), np.asarray(v[0]), rtol=1e-5, atol=1e-6)
  short = enc.collate_prompts([enc.prompt_tokens(0, seqs[0][:1])[0]], 2)  # one history item: the smallest bucket
  assert short["tokens"].shape == (2, enc.buckets[0]) and short["example_weight"].tolist() == [1.0, 0.0]


def test_dense_user_embeddings_come_back_in_row_order_from_length_sorted_batches(tiny_model):
  import types
  import ml_collections
  from calrec_jax.eval.evaluate import user_embeddings
  from calrec_jax.model.two_tower import TwoTower
  cats, enc, model, params = tiny_model
  seqs = cats[0].sequences
  rows = [(u, seqs[u][:n], seqs[u][n]) for u, n in ((0, 4), (1, 1), (2, 3), (3, 1), (4, 5), (5, 2), (6, 1))]
  parts = types.SimpleNamespace(model=model, encoder=enc)
  config = ml_collections.ConfigDict({"eval": {"batch_size": 3}})
  got = user_embeddings(config, parts, params, rows, 0)
  for r, (_, h, _) in enumerate(rows):  # each history alone
    b = enc.collate_prompts([enc.prompt_tokens(0, h)[0]], 1)
    want = model.apply({"params": params}, b["tokens"], b["positions"], b["input_mask"], b["history_mask"],
                       method=TwoTower.user_embedding)
    np.testing.assert_allclose(got[r], np.asarray(want)[0], rtol=1e-5, atol=1e-6, err_msg=f"row {r}")


def test_sampled_validation_ranks_the_targets_among_a_fixed_item_sample(tiny_model):
  """eval.valid_items: dense metrics over a fixed item sample + the targets equal the whole-catalog scores with every
  item outside the sample removed; with a sample as large as the catalog they equal the whole-catalog metrics."""
  import types
  import ml_collections
  from calrec_jax.data.iterators import eval_rows
  from calrec_jax.eval import validation
  from calrec_jax.eval.evaluate import evaluate_dense, item_embeddings, user_embeddings
  from calrec_jax.eval.fusion import exclusion_mask, target_ranks
  from calrec_jax.eval.metrics import ranking_metrics
  cats, enc, model, params = tiny_model
  parts = types.SimpleNamespace(model=model, encoder=enc, categories=cats, tokenizer=enc.tok)
  n_items = len(cats[0].catalog)
  rows = eval_rows(cats[0].sequences, "valid", 24, seed=0)
  config = ml_collections.ConfigDict({"seed": 0, "eval": {"batch_size": 8, "item_batch_size": 16, "ks": "1,5,10",
                                                          "exclude_history": True, "valid_items": 10}})
  sample = validation.validation_items(config, n_items, [t for _, _, t in rows])
  assert set(t for _, _, t in rows) <= set(sample.tolist()) and len(sample) < n_items
  assert np.array_equal(sample, validation.validation_items(config, n_items, [t for _, _, t in rows]))
  got = validation.sampled_dense_metrics(config, parts, params, rows, 0)
  scores = user_embeddings(config, parts, params, rows, 0) @ item_embeddings(parts, params, 0).T   # [U, I]
  outside = np.ones(n_items, bool)
  outside[sample] = False
  removed = exclusion_mask([h for _, h, _ in rows], n_items) | outside[None, :]
  want = ranking_metrics(target_ranks(scores, np.array([t for _, _, t in rows]), removed, 10).tolist(), [1, 5, 10])
  assert got == pytest.approx(want)
  config.eval.valid_items = n_items
  assert validation.sampled_dense_metrics(config, parts, params, rows, 0) == pytest.approx(
      evaluate_dense(config, parts, params, rows, 0)[0])
