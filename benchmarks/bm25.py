"""BM25 retrieval: calrec_jax's BM25Index against rank-bm25 (the reference), rank-bm25-rs and bm25s.

  pip install -e ".[bench]"
  python benchmarks/bm25.py --data=../shared/data/amazon2018-scientific --docs=50000 --queries=1000
  python benchmarks/bm25.py --corpus=zipf --docs=50000 --queries=1000

Corpus: the Scientific item texts, extended to --docs texts by resampling words from their unigram distribution
with the real length distribution (a catalog-like vocabulary and tf/df profile); or (--corpus=zipf) 20-token
documents over a 30,000-word Zipf(1.1) vocabulary. Queries: item texts with 30% of
their words dropped and some replaced, as a generated next-item text would look. Every library gets the same
tokens (calrec_jax's tokeniser, plain Python str). Reported: index time, query throughput for top-20 retrieval
(rank-bm25-rs returns all scores; the timing adds numpy's argpartition top-k, as a user would), and the largest
score difference to rank-bm25 BM25Okapi. BM25Index's index time includes its first query, which loads the
compiled kernel from numba's cache (compiles it, about 3 s, on the first run after an install). rank-bm25 scores one query with a Python loop over all documents per
query token, so it is timed on --slow_queries queries.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def parse_args():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data", default="../shared/data/amazon2018-scientific")
  p.add_argument("--name", default="Scientific")
  p.add_argument("--corpus", choices=["catalog", "zipf"], default="catalog")
  p.add_argument("--docs", type=int, default=50_000)
  p.add_argument("--queries", type=int, default=1_000)
  p.add_argument("--slow_queries", type=int, default=50, help="queries timed for rank-bm25 (pure Python)")
  p.add_argument("--k", type=int, default=20)
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args()


def build_corpus(args) -> tuple[list[list[str]], list[list[str]]]:
  rng = np.random.default_rng(args.seed)
  if args.corpus == "zipf":
    words = np.asarray([f"w{i}" for i in range(30_000)])
    probs = 1.0 / np.arange(1, 30_001) ** 1.1
    probs /= probs.sum()
    lengths, real = np.asarray([20]), []
  else:
    from calrec_jax.data.recbole import load_recbole
    from calrec_jax.data.text import render_item
    from calrec_jax.eval.bm25 import tokenize
    cat = load_recbole(args.data, args.name)
    real = [tokenize(render_item(a)) for a in cat.catalog.attributes]
    words, counts = np.unique([w for d in real for w in d], return_counts=True)
    probs = counts / counts.sum()
    lengths = np.asarray([len(d) for d in real])
  docs = list(real)
  words = [str(w) for w in words]  # plain str tokens for every library (numpy strings send some to slow paths)
  while len(docs) < args.docs:
    docs.append([words[j] for j in rng.choice(len(words), size=int(rng.choice(lengths)), p=probs)])
  docs = docs[:args.docs]
  queries = []
  for i in rng.choice(len(docs), size=args.queries, replace=False):
    d = [w for w in docs[i] if rng.random() > 0.3]
    d += [words[j] for j in rng.choice(len(words), size=max(1, len(docs[i]) // 8), p=probs)]
    queries.append(d)
  return docs, queries


def timed(fn):
  t0 = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t0


def main():
  args = parse_args()
  from rank_bm25 import BM25Okapi
  from calrec_jax.eval.bm25 import BM25Index
  docs, queries = build_corpus(args)
  nq = len(queries)
  print(f"corpus ({args.corpus}): {len(docs):,} documents, mean {np.mean([len(d) for d in docs]):.1f} tokens; {nq:,} queries, "
        f"mean {np.mean([len(q) for q in queries]):.1f} tokens; top-{args.k}\n")
  rows = []

  ref, t_ref_index = timed(lambda: BM25Okapi(docs))
  slow = queries[:args.slow_queries]
  ref_scores, t_ref = timed(lambda: np.stack([ref.get_scores(q) for q in slow]))
  rows.append(("rank-bm25 BM25Okapi (reference)", t_ref_index, len(slow) / t_ref, 0.0))

  def index_ours():  # the index, plus the first call that loads (or, once per install, compiles) the kernel
    ix = BM25Index(docs)
    ix.top_k(queries[:1], args.k)
    return ix
  ours, t_index = timed(index_ours)
  _, t_query = timed(lambda: ours.top_k(queries, args.k))
  diff = float(np.abs(ours.scores(slow) - ref_scores).max())
  rows.append(("calrec_jax BM25Index", t_index, nq / t_query, diff))

  try:
    import rank_bm25_rs
    rs, t_rs_index = timed(lambda: rank_bm25_rs.BM25Okapi(docs))

    def rs_top_k():  # all scores per query, then the same top-k selection (argpartition) a user would add
      for q in queries:
        sc = np.asarray(rs.get_scores(q))
        np.argpartition(-sc, args.k)[:args.k]
    _, t_rs = timed(rs_top_k)
    rs_scores = np.stack([np.asarray(rs.get_scores(q)) for q in slow])
    rows.append(("rank-bm25-rs BM25Okapi (+ argpartition top-k)", t_rs_index, nq / t_rs,
                 float(np.abs(rs_scores - ref_scores).max())))
  except ImportError:
    print("(rank-bm25-rs not installed: pip install rank-bm25-rs)")

  try:
    import bm25s
    def index_bm25s():
      m = bm25s.BM25(k1=1.5, b=0.75, method="robertson")
      m.index(docs, show_progress=False)
      return m
    bm, t_bm_index = timed(index_bm25s)
    _, t_bm = timed(lambda: bm.retrieve(queries, k=args.k, show_progress=False, n_threads=1))
    bm_scores = np.stack([bm.get_scores(q) for q in slow])
    rows.append(("bm25s (method=robertson)", t_bm_index, nq / t_bm, float(np.abs(bm_scores - ref_scores).max())))
  except ImportError:
    print("(bm25s not installed: pip install bm25s)")

  base = rows[0][2]
  print("| library | index s | queries/s | vs rank-bm25 | max abs score diff to rank-bm25 |")
  print("|---|---:|---:|---:|---:|")
  for name, ti, qps, d in rows:
    print(f"| {name} | {ti:.2f} | {qps:,.1f} | {qps / base:,.0f}x | {d:.2e} |")
  print(f"\n{os.cpu_count()} CPU cores; rank-bm25 timed on {len(slow)} queries (all scores), the others on {nq} "
        f"with top-{args.k} selection; every library gets the same plain str tokens")


if __name__ == "__main__":
  main()
