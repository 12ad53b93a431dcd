"""Okapi BM25 with exactly rank-bm25's `BM25Okapi` scores, as one sparse matrix product per query batch.

rank-bm25: idf(t) = ln(N - df + 0.5) - ln(df + 0.5); a negative idf is replaced by epsilon * mean(idf);
score(q, d) = sum over query tokens (repeats count) of idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * |d| / avgdl)).
Here the per-(term, doc) weights are precomputed once as a CSR [V, N] matrix (the most frequent terms' rows also
dense); scoring and top-k retrieval run compiled kernels over the query terms' postings (`bm25_kernel`), a
repeated query token adding its weight times its count.
"""
from __future__ import annotations

import collections
import json
import re

import numpy as np
import scipy.sparse as sp

from calrec_jax.eval.bm25_kernel import scores_csr, top_k_csr

_TOKEN = re.compile(r"\w+", re.UNICODE)
DENSE_DF_FRACTION = 16  # terms in >= 1/16 of the documents are also kept dense: adding a row beats scattering


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
    self._build_dense_rows()

  @classmethod
  def from_texts(cls, texts: list[str], **kw) -> "BM25Index":
    return cls([tokenize(t) for t in texts], **kw)

  def _build_dense_rows(self) -> None:
    """Copies the rows of the terms in at least 1/DENSE_DF_FRACTION of the documents into a dense [F, N] array."""
    df = np.diff(self.weights.indptr)
    frequent = np.flatnonzero(df * DENSE_DF_FRACTION >= self.num_docs)
    self.dense_row = np.full(len(df), -1, np.int64)  # [V]
    self.dense_row[frequent] = np.arange(len(frequent))
    self.dense = self.weights[frequent].toarray() if len(frequent) else np.zeros((0, self.num_docs))  # [F, N]

  def _query_terms(self, queries: list[list[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(terms, counts, offsets [Q+1]): each query's distinct known terms in first-occurrence order, concatenated."""
    vocab, terms, counts = self.vocab, [], []
    offsets = np.zeros(len(queries) + 1, np.int64)
    for i, q in enumerate(queries):
      seen: dict[int, int] = {}
      for tok in q:
        r = vocab.get(tok)
        if r is not None:
          seen[r] = seen.get(r, 0) + 1
      terms.extend(seen)
      counts.extend(seen.values())
      offsets[i + 1] = len(terms)
    return np.asarray(terms, np.int64), np.asarray(counts, np.float64), offsets

  def scores(self, queries: list[list[str]]) -> np.ndarray:
    """[Q, N] scores of tokenised queries against every document."""
    out = np.zeros((len(queries), self.num_docs))
    if queries:
      w = self.weights
      scores_csr(w.indptr, w.indices, w.data, self.dense_row, self.dense, self.num_docs, *self._query_terms(queries),
                 out)
    return out

  def top_k(self, queries: list[list[str]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(doc indices [Q, k], scores [Q, k]) by score, ties broken by lower doc index (one compiled call)."""
    k = min(k, self.num_docs)
    ids = np.zeros((len(queries), k), np.int64)
    out = np.zeros((len(queries), k))
    if queries and k > 0:
      w = self.weights
      top_k_csr(w.indptr, w.indices, w.data, self.dense_row, self.dense, self.num_docs, *self._query_terms(queries),
                k, ids, out)
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
    self._build_dense_rows()
    return self
