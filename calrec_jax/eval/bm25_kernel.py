"""The compiled BM25 kernels: scores summed over the query terms' postings, and top-k with a bounded heap.

numba compiles them to machine code on first use (cached on disk beside this file, or in numba's user cache where
that is read-only). A query's distinct terms add count x weight to the documents in their postings, in order of
first occurrence; the most frequent terms are kept as dense rows, added with vector instructions instead of
scattered. Top-k: a size-k heap keeps the best (score desc, index asc), and the documents no query term reaches
(score 0) enter only when fewer than k documents score above 0.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(inline="always")
def _worse(s_a, i_a, s_b, i_b):
  """Whether (s_a, i_a) ranks below (s_b, i_b): lower score, or the same score and a higher document index."""
  return s_a < s_b or (s_a == s_b and i_a > i_b)


@numba.njit(inline="always")
def _sift_down(hs, hi, size, pos):
  """Restores the min-heap (worst at the root) below pos."""
  while True:
    child = 2 * pos + 1
    if child >= size:
      return
    if child + 1 < size and _worse(hs[child + 1], hi[child + 1], hs[child], hi[child]):
      child += 1
    if not _worse(hs[child], hi[child], hs[pos], hi[pos]):
      return
    hs[pos], hs[child] = hs[child], hs[pos]
    hi[pos], hi[child] = hi[child], hi[pos]
    pos = child


@numba.njit(inline="always")
def _offer(hs, hi, size, k, s, d):
  """Offers document d with score s to the heap of the k best; returns the new size."""
  if size < k:
    pos = size
    hs[pos], hi[pos] = s, d
    while pos > 0:  # sift up
      parent = (pos - 1) // 2
      if not _worse(hs[pos], hi[pos], hs[parent], hi[parent]):
        break
      hs[pos], hs[parent] = hs[parent], hs[pos]
      hi[pos], hi[parent] = hi[parent], hi[pos]
      pos = parent
    return size + 1
  if _worse(hs[0], hi[0], s, d):
    hs[0], hi[0] = s, d
    _sift_down(hs, hi, size, 0)
  return size


@numba.njit(inline="always")
def _accumulate(indptr, indices, data, dense_row, dense, terms, counts, lo, hi, acc, seen, touched, track):
  """Adds count * weight of each query term (in query order) to acc [N]; frequent terms add their dense row.

  With track, the documents reached are marked in seen and listed in touched (returns how many); adding a dense
  row's zeros leaves a score bit-identical to skipping them, so both paths give the same values.
  """
  n_touched = 0
  for j in range(lo, hi):
    t, c = terms[j], counts[j]
    r = dense_row[t]
    if r >= 0:
      row = dense[r]
      for d in range(acc.shape[0]):
        acc[d] += c * row[d]
      continue
    for p in range(indptr[t], indptr[t + 1]):
      d = indices[p]
      if track and not seen[d]:
        seen[d] = True
        touched[n_touched] = d
        n_touched += 1
      acc[d] += c * data[p]
  return n_touched


@numba.njit(cache=True, nogil=True)
def scores_csr(indptr, indices, data, dense_row, dense, num_docs, terms, counts, offsets, out):
  """out [Q, N]: every document's score for every query (the same sums as top_k_csr)."""
  seen = np.zeros(1, np.bool_)
  touched = np.empty(1, np.int64)
  for q in range(offsets.shape[0] - 1):
    _accumulate(indptr, indices, data, dense_row, dense, terms, counts, offsets[q], offsets[q + 1], out[q], seen,
                touched, False)


@numba.njit(cache=True, nogil=True)
def top_k_csr(indptr, indices, data, dense_row, dense, num_docs, terms, counts, offsets, k, out_ids, out_scores):
  """Top-k documents of every query.

  indptr [V+1], indices [nnz], data [nnz]: the CSR [V, N] per-(term, doc) weights; dense_row [V]: each term's row
  in dense [F, N] (its weights with zeros, for the most frequent terms) or -1; terms, counts: the queries' distinct
  term rows and how often each occurs, concatenated, query q being [offsets[q]:offsets[q + 1]]; out_ids [Q, k]
  int64 and out_scores [Q, k] float64 receive each query's documents by score desc, index asc.

  A query that reaches few documents ranks only those (plus the lowest-index unreached ones, score 0, when they
  can enter); one with a dense term or many postings ranks all documents in one pass.
  """
  acc = np.zeros(num_docs)                    # [N] running scores
  seen = np.zeros(num_docs, np.bool_)         # [N] reached by a posting (sparse path)
  touched = np.empty(num_docs, np.int64)      # [N] the reached documents, first-touch order
  hs = np.empty(k)                            # [k] heap scores (worst at the root)
  hi = np.empty(k, np.int64)                  # [k] heap document indices
  for q in range(offsets.shape[0] - 1):
    lo, up = offsets[q], offsets[q + 1]
    postings = 0
    full = False
    for j in range(lo, up):
      t = terms[j]
      full = full or dense_row[t] >= 0
      postings += indptr[t + 1] - indptr[t]
    full = full or 4 * postings > num_docs
    size = 0
    if full:
      _accumulate(indptr, indices, data, dense_row, dense, terms, counts, lo, up, acc, seen, touched, False)
      for d in range(num_docs):
        s = acc[d]
        if size == k and not _worse(hs[0], hi[0], s, d):
          continue
        size = _offer(hs, hi, size, k, s, d)
      acc[:] = 0.0
    else:
      n_touched = _accumulate(indptr, indices, data, dense_row, dense, terms, counts, lo, up, acc, seen, touched,
                              True)
      for j in range(n_touched):
        d = touched[j]
        size = _offer(hs, hi, size, k, acc[d], d)
      if size < k or hs[0] <= 0.0:  # unreached documents score 0: the lowest indices may still enter
        added, d = 0, 0
        while added < k and d < num_docs:
          if not seen[d]:
            size = _offer(hs, hi, size, k, 0.0, d)
            added += 1
          d += 1
      for j in range(n_touched):
        d = touched[j]
        acc[d] = 0.0
        seen[d] = False
    for j in range(size - 1, -1, -1):  # pop the worst into the last free slot: best first
      out_scores[q, j], out_ids[q, j] = hs[0], hi[0]
      hs[0], hi[0] = hs[j], hi[j]
      _sift_down(hs, hi, j, 0)
