"""Score matrices over the whole catalog that need no trained model: BM25 over the texts of a user's last items,
and a popularity prior. Each gives one row per (user, history) and one column per item."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from calrec_jax.data.records import item_counts
from calrec_jax.eval.bm25 import BM25Index, tokenize


def history_queries(texts: Sequence[str], histories: Sequence[Sequence[int]], num_items: int) -> list[list[str]]:
  """Each history's query: the tokens of its last `num_items` item texts."""
  return [tokenize(" ".join(texts[i] for i in h[-num_items:])) for h in histories]


def history_bm25_scores(index: BM25Index, texts: Sequence[str], histories: Sequence[Sequence[int]],
                        num_items: int, batch: int = 256) -> np.ndarray:
  """[U, I] BM25 scores of every item against the texts of each user's last `num_items` items."""
  out = np.zeros((len(histories), index.num_docs), np.float32)
  for start in range(0, len(histories), batch):
    queries = history_queries(texts, histories[start:start + batch], num_items)
    out[start:start + len(queries)] = index.scores(queries)
  return out


def popularity_scores(counts: np.ndarray, users: int) -> np.ndarray:
  """[U, I] log(1 + count), the same row for every user."""
  return np.broadcast_to(np.log1p(counts).astype(np.float32), (users, len(counts)))


MODEL_FREE_SIGNALS = ("bm25_history", "popularity")  # the fusion signals that need no trained model


def model_free_signals(names: Sequence[str], texts: Sequence[str], sequences: Sequence[Sequence[int]],
                       histories: Sequence[Sequence[int]], eval_config, counts: np.ndarray | None = None
                       ) -> dict[str, np.ndarray]:
  """The raw [U, I] matrices of the signals among `names` that need no model ('bm25_history', 'popularity'),
  for these histories; BM25 settings and the query length from `eval_config` (the config's eval section);
  popularity from `counts` [I] when given (an export's), else from the training part of `sequences`."""
  out = {}
  if "bm25_history" in names:
    ec = eval_config
    index = BM25Index.from_texts(list(texts), k1=ec.bm25_k1, b=ec.bm25_b, epsilon=ec.bm25_epsilon)
    out["bm25_history"] = history_bm25_scores(index, texts, histories, ec.fusion_history_items)
  if "popularity" in names:
    counts = item_counts(sequences, len(texts)) if counts is None else counts
    out["popularity"] = popularity_scores(counts, len(histories))
  return out
