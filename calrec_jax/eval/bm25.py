"""Okapi BM25 with exactly rank-bm25's `BM25Okapi` scores, as one sparse matrix product per query batch.

rank-bm25: idf(t) = ln(N - df + 0.5) - ln(df + 0.5); a negative idf is replaced by epsilon * mean(idf);
score(q, d) = sum over query tokens (repeats count) of idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * |d| / avgdl)).
Here the per-(term, doc) weights are precomputed once as a CSR [V, N] matrix; a query's scores are the sum of its
tokens' rows (one bincount), and top-k selection partitions before sorting.
"""
from __future__ import annotations

import collections
import json
import re

import numpy as np
import scipy.sparse as sp

_TOKEN = re.compile(r"\w+", re.UNICODE)


def tokenize(text: str) -> list[str]:
  """The tokenisation shared by the index and the queries: lower-cased word characters."""
  return _TOKEN.findall(text.lower())


class BM25Index:
  def __init__(self, corpus_tokens: list[list[str]], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25):
    if not corpus_tokens:
      raise ValueError("BM25 needs at least one document (the catalog is empty)")
    self.k1, self.b, self.epsilon = k1, b, epsilon
    self.vocab: dict[str, int] = {}
    rows, cols, vals = [], [], []
    doc_len = np.zeros(len(corpus_tokens), np.float64)
    for d, toks in enumerate(corpus_tokens):
      doc_len[d] = len(toks)
      for term, tf in collections.Counter(toks).items():
        rows.append(d)
        cols.append(self.vocab.setdefault(term, len(self.vocab)))
        vals.append(tf)
    n = len(corpus_tokens)
    tf = sp.csr_matrix((np.asarray(vals, np.float64), (rows, cols)), shape=(n, len(self.vocab)))
    df = np.bincount(cols, minlength=len(self.vocab)).astype(np.float64)
    idf = np.log(n - df + 0.5) - np.log(df + 0.5)
    mean_idf = idf.sum() / len(idf) if len(idf) else 0.0
    idf = np.where(idf < 0, self.epsilon * mean_idf, idf)
    avgdl = doc_len.sum() / n
    norm = k1 * (1 - b + b * doc_len / avgdl)  # [N]
    coo = tf.tocoo()
    w = idf[coo.col] * coo.data * (k1 + 1) / (coo.data + norm[coo.row])
    self.weights = sp.csr_matrix((w, (coo.row, coo.col)), shape=tf.shape).T.tocsr()  # [V, N]
    self.num_docs = n

  @classmethod
  def from_texts(cls, texts: list[str], **kw) -> "BM25Index":
    return cls([tokenize(t) for t in texts], **kw)

  def _score_row(self, tokens: list[str]) -> np.ndarray:
    """[N] scores of one query: the weight rows of its tokens (repeats count) summed with one bincount."""
    w = self.weights
    rows = [self.vocab[t] for t in tokens if t in self.vocab]
    if not rows:
      return np.zeros(self.num_docs)
    starts, ends = w.indptr[rows], w.indptr[np.asarray(rows) + 1]
    idx = np.concatenate([w.indices[a:b] for a, b in zip(starts, ends)])
    val = np.concatenate([w.data[a:b] for a, b in zip(starts, ends)])
    return np.bincount(idx, weights=val, minlength=self.num_docs)

  def scores(self, queries: list[list[str]]) -> np.ndarray:
    """[Q, N] scores of tokenised queries against every document."""
    return np.stack([self._score_row(q) for q in queries]) if queries else np.zeros((0, self.num_docs))

  def top_k(self, queries: list[list[str]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(doc indices [Q, k], scores [Q, k]) by score, ties broken by lower doc index."""
    k = min(k, self.num_docs)
    ids = np.zeros((len(queries), k), np.int64)
    out = np.zeros((len(queries), k))
    for i, q in enumerate(queries):
      s = self._score_row(q)
      if k < self.num_docs:  # every doc scoring at least the k-th best, then an exact (score, index) sort
        kth = np.partition(s, self.num_docs - k)[self.num_docs - k]
        cand = np.flatnonzero(s >= kth)
      else:
        cand = np.arange(self.num_docs)
      order = cand[np.lexsort((cand, -s[cand]))][:k]
      ids[i], out[i] = order, s[order]
    return ids, out

  def save(self, path: str) -> None:
    sp.save_npz(path + ".weights.npz", self.weights)
    with open(path + ".json", "w", encoding="utf-8") as f:
      json.dump({"k1": self.k1, "b": self.b, "epsilon": self.epsilon, "vocab": self.vocab}, f)

  @classmethod
  def load(cls, path: str) -> "BM25Index":
    self = cls.__new__(cls)
    with open(path + ".json", encoding="utf-8") as f:
      meta = json.load(f)
    self.k1, self.b, self.epsilon, self.vocab = meta["k1"], meta["b"], meta["epsilon"], meta["vocab"]
    self.weights = sp.load_npz(path + ".weights.npz").tocsr()
    self.num_docs = self.weights.shape[1]
    return self
