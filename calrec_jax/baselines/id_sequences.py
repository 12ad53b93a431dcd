"""Item-id sequences for ID-based baselines: every training prefix (history -> next item), and eval rows.

Item indices are shifted by one so that 0 is padding; a history is left-aligned in [L] slots (its most recent
`max_len` items, oldest first), as RecBole lays out `item_id_list`.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from calrec_jax.data.records import split_examples

PAD = 0


@dataclasses.dataclass
class IdExamples:
  """histories [N, L] (item index + 1, 0 = pad), lengths [N], targets [N] (item index), users [N]."""
  histories: np.ndarray
  lengths: np.ndarray
  targets: np.ndarray
  users: np.ndarray

  def __len__(self) -> int:
    return len(self.targets)


def id_examples(sequences: list[list[int]], split: str, max_len: int,
                users: list[int] | None = None) -> IdExamples:
  """Rows of a leave-one-out split ('train': every prefix; 'valid'/'test': one per user), optionally only the
  given user indices (in that order)."""
  rows = split_examples(sequences, split)
  if users is not None:
    by_user = {u: t for u, t in rows}
    rows = [(u, by_user[u]) for u in users]
  hist = np.zeros((len(rows), max_len), np.int32)
  lengths = np.zeros(len(rows), np.int32)
  targets = np.zeros(len(rows), np.int32)
  for r, (u, t) in enumerate(rows):
    h = sequences[u][max(0, t - max_len):t]
    hist[r, :len(h)] = np.asarray(h, np.int32) + 1
    lengths[r] = len(h)
    targets[r] = sequences[u][t]
  return IdExamples(hist, lengths, targets, np.asarray([u for u, _ in rows], np.int64))


def full_histories(sequences: list[list[int]], split: str, users: np.ndarray) -> list[list[int]]:
  """Every item before the split's target (not truncated): what history exclusion removes from a ranking."""
  offset = {"test": 1, "valid": 2}[split]
  return [sequences[u][:len(sequences[u]) - offset] for u in users]
