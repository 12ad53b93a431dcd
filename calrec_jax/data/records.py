"""The one internal representation of a category: a catalog and chronological user sequences.

Every source (raw Amazon files, RecBole atomic files, the TFDS builder, the synthetic generator) produces a
`CategoryData`; data/prepared_folder.py writes and reads its prepared form on disk. Sequences are a list of lists
or a `SequenceStore` (flat arrays, memory-mapped from a prepared folder); the splits and statistics here are
computed from the sequence lengths, in array operations.
"""
from __future__ import annotations

import array
import collections.abc
import dataclasses
import json
import os
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from calrec_jax.errors import DataError

ATTRIBUTE_NAMES = ("title", "category", "brand", "price")


@dataclasses.dataclass
class Catalog:
  """Items of one category; an item's index is its position in these lists."""
  item_ids: list[str]
  attributes: list[dict[str, str]]  # per item, keys from ATTRIBUTE_NAMES (missing keys allowed)

  def __len__(self) -> int:
    return len(self.item_ids)


class SequenceStore(collections.abc.Sequence):
  """Users' item sequences as two flat arrays (memory-mapped when read from a prepared folder): user u's items are
  items[offsets[u]:offsets[u + 1]], oldest first. Indexing a user gives a list; nothing per event is held."""

  def __init__(self, offsets: np.ndarray, items: np.ndarray):
    self.offsets, self.items = offsets, items  # [users + 1] int64, [events] int32

  def __len__(self) -> int:
    return len(self.offsets) - 1

  def __getitem__(self, u):
    if isinstance(u, slice):
      return [self[k] for k in range(*u.indices(len(self)))]
    if u < 0:
      u += len(self)
    if not 0 <= u < len(self):
      raise IndexError(u)
    return self.items[self.offsets[u]:self.offsets[u + 1]].tolist()

  def __eq__(self, other) -> bool:
    return isinstance(other, collections.abc.Sequence) and len(self) == len(other) and all(
        a == list(b) for a, b in zip(self, other))

  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)


class SequenceStoreBuilder:
  """Appends one user's sequence at a time into flat arrays (4 bytes an event, no Python object per event)."""

  def __init__(self):
    self._items, self._offsets = array.array("i"), array.array("q", [0])

  def append(self, items: Iterable[int]) -> None:
    self._items.extend(items)
    self._offsets.append(len(self._items))

  def build(self) -> SequenceStore:
    items = np.frombuffer(self._items, np.int32) if len(self._items) else np.zeros(0, np.int32)
    return SequenceStore(np.frombuffer(self._offsets, np.int64), items)


def sequence_lengths(sequences) -> np.ndarray:
  """[users] int64 lengths of a SequenceStore or a list of lists."""
  if isinstance(sequences, SequenceStore):
    return sequences.lengths().astype(np.int64)
  return np.fromiter((len(s) for s in sequences), np.int64, count=len(sequences))


@dataclasses.dataclass
class CategoryData:
  """One category: catalog, per-user chronological item-index sequences, and provenance counts."""
  name: str
  catalog: Catalog
  user_ids: list[str]
  sequences: list[list[int]] | SequenceStore
  skipped: dict[str, int] = dataclasses.field(default_factory=dict)
  new_items: frozenset[int] = frozenset()  # cold-start split (data/cold_start.py): items training never sees

  def num_interactions(self) -> int:
    return int(sequence_lengths(self.sequences).sum())


# ----------------------------------------------------------------------------- leave-one-out splits
def split_examples(sequences, split: str) -> list[tuple[int, int]]:
  """(user index, target position) pairs of a leave-one-out split.

  'test': the last item; 'valid': the second-to-last; 'train': every earlier item except the first
  (each training target is predicted from all items before it). Users need >= 3 items.
  """
  return [tuple(r) for r in split_positions(sequence_lengths(sequences), split).tolist()]


def split_positions(lengths: np.ndarray, split: str) -> np.ndarray:
  """`split_examples` as an [N, 2] int64 array (user, target position), computed from the lengths alone."""
  lengths = np.asarray(lengths, np.int64)
  users = np.flatnonzero(lengths >= 3)
  n = lengths[users]
  if split == "test":
    return np.stack([users, n - 1], 1)
  if split == "valid":
    return np.stack([users, n - 2], 1)
  if split != "train":
    raise ValueError(f"unknown split {split!r}; expected 'train', 'valid' or 'test'")
  per_user = n - 3                                               # targets 1 .. n - 3
  first = np.repeat(np.cumsum(per_user) - per_user, per_user)
  return np.stack([np.repeat(users, per_user), np.arange(per_user.sum()) - first + 1], 1)


def item_counts(sequences: Sequence[Sequence[int]], num_items: int, held_out: int = 2) -> np.ndarray:
  """[I] interactions per item in the training part of every sequence (its last `held_out` items removed: the
  validation and test targets are never counted)."""
  if isinstance(sequences, SequenceStore):
    lengths = sequences.lengths()
    keep = np.repeat(np.arange(len(lengths)), lengths)            # the user of each event
    position = np.arange(len(keep)) - sequences.offsets[keep]
    training = position < (lengths - held_out)[keep]
    return np.bincount(sequences.items[training], minlength=num_items).astype(np.float64)
  counts = np.zeros(num_items)
  for seq in sequences:
    np.add.at(counts, np.asarray(seq[:len(seq) - held_out], np.int64), 1)
  return counts


def held_out_targets(sequences, back: int) -> np.ndarray:
  """[users with >= 3 items] the item `back` places from each sequence's end (2: validation, 1: test targets)."""
  if isinstance(sequences, SequenceStore):
    lengths = sequences.lengths()
    users = np.flatnonzero(lengths >= 3)
    return np.asarray(sequences.items[sequences.offsets[users] + lengths[users] - back], np.int64)
  return np.fromiter((s[-back] for s in sequences if len(s) >= 3), np.int64)


def target_popularity(sequences, num_items: int, top: int = 10) -> dict[str, dict[str, float]]:
  """How often training saw each split's held-out items: per split, their mean and median training counts and
  the share among the `top` items training holds most. Validation targets more popular than test targets mean
  that choices made on validation reward popularity more than the test split will."""
  counts = item_counts(sequences, num_items)
  frequent = np.argsort(-counts, kind="stable")[:top]
  frequent = frequent[counts[frequent] > 0]  # an item training never saw is not frequent, however small the catalog
  out = {}
  for split, back in (("valid", 2), ("test", 1)):
    targets = held_out_targets(sequences, back)
    seen = counts[targets]
    out[split] = {"target_count_mean": float(seen.mean()) if len(seen) else 0.0,
                  "target_count_median": float(np.median(seen)) if len(seen) else 0.0,
                  f"target_in_top{top}": float(np.isin(targets, frequent).mean()) if len(seen) else 0.0}
  return out


def with_target_popularity(stats: dict[str, Any], sequences, num_items: int) -> dict[str, Any]:
  """`stats` with `target_popularity` merged into its valid and test entries."""
  for split, values in target_popularity(sequences, num_items).items():
    stats[split].update(values)
  return stats


def statistics(data: CategoryData) -> dict[str, Any]:
  """Users, items, interactions and sequence-length summary, overall and per split."""
  lengths = sequence_lengths(data.sequences)
  stats = statistics_of_lengths(data.name, len(data.catalog), lengths, data.skipped)
  return with_target_popularity(stats, data.sequences, len(data.catalog))


def statistics_of_lengths(name: str, items: int, lengths: np.ndarray, skipped: dict[str, int]) -> dict[str, Any]:
  """`statistics` from the sequence lengths alone ([users] int): the leave-one-out splits of `split_examples` are
  counted, not listed (a user of n >= 3 items has n - 3 training targets at positions 1..n-3, the validation
  target at n - 2 and the test target at n - 1)."""
  lengths = np.asarray(lengths, np.int64)
  stats = {
      "category": name,
      "users": len(lengths),
      "items": items,
      "interactions": int(lengths.sum()),
      "mean_seq_len": float(lengths.mean()) if len(lengths) else 0.0,
      "max_seq_len": int(lengths.max()) if len(lengths) else 0,
      "min_seq_len": int(lengths.min()) if len(lengths) else 0,
  }
  n = lengths[lengths >= 3]
  train = n[n > 3] - 3                                 # targets per user: positions 1 .. n - 3
  per_split = {"train": (int(train.sum()), len(train), int((train * (train + 1) // 2).sum()),
                         int(train.max()) if len(train) else 0),
               "valid": (len(n), len(n), int((n - 2).sum()), int((n - 2).max()) if len(n) else 0),
               "test": (len(n), len(n), int((n - 1).sum()), int((n - 1).max()) if len(n) else 0)}
  for split, (examples, users, history_sum, max_history) in per_split.items():
    stats[split] = {"examples": examples, "users": users,
                    "mean_history": history_sum / examples if examples else 0.0, "max_history": max_history}
  stats["skipped"] = dict(skipped)
  return stats


def format_statistics(stats_list: list[dict[str, Any]]) -> str:
  """A plain-text table of `statistics` for several categories."""
  head = (f"{'category':<24}{'users':>8}{'items':>8}{'inter.':>9}{'mean len':>9}{'max len':>8}"
          f"{'train ex':>10}{'valid':>7}{'test':>7}")
  lines = [head, "-" * len(head)]
  for s in stats_list:
    lines.append(f"{s['category'][:23]:<24}{s['users']:>8}{s['items']:>8}{s['interactions']:>9}"
                 f"{s['mean_seq_len']:>9.2f}{s['max_seq_len']:>8}{s['train']['examples']:>10}"
                 f"{s['valid']['examples']:>7}{s['test']['examples']:>7}")
    if "target_count_mean" in s["test"]:
      lines.append("  held-out items, times training saw them: " + "; ".join(
          f"{split} mean {s[split]['target_count_mean']:.1f} (median {s[split]['target_count_median']:g}, "
          f"{100 * s[split]['target_in_top10']:.1f}% in the top 10)" for split in ("valid", "test")))
    if s.get("skipped"):
      skips = ", ".join(f"{k}={v}" for k, v in sorted(s["skipped"].items()) if v)
      if skips:
        lines.append(f"  skipped: {skips}")
  return "\n".join(lines)


def validate(data: CategoryData, source: str) -> None:
  """Raise DataError if the category cannot be trained or evaluated on."""
  check_sequences(data.name, data.user_ids, sequence_lengths(data.sequences), len(data.catalog), source)
  n = len(data.catalog)
  if isinstance(data.sequences, SequenceStore):
    bad = np.flatnonzero((data.sequences.items < 0) | (data.sequences.items >= n))
    outside = [int(np.searchsorted(data.sequences.offsets, bad[0], side="right")) - 1] if len(bad) else []
  else:
    outside = [u for u, seq in enumerate(data.sequences) if min(seq) < 0 or max(seq) >= n][:1]
  if outside:
    raise DataError(f"user {data.user_ids[outside[0]]!r} refers to an item index outside the catalog", source)


def check_sequences(name: str, user_ids: list[str], lengths: np.ndarray, items: int, source: str) -> None:
  """DataError if no user is left, the catalog is empty, or a user has fewer than 3 items."""
  if not len(lengths):
    raise DataError(f"category {name!r} has no users left after filtering "
                    "(lower data.kcore / min_sequence_length, or check the input files)", source)
  if items == 0:
    raise DataError(f"category {name!r} has an empty catalog", source)
  short = np.flatnonzero(lengths < 3)
  if len(short):
    u = int(short[0])
    raise DataError(f"user {user_ids[u]!r} has {int(lengths[u])} items; leave-one-out needs >= 3", source)


# ----------------------------------------------------------------------------- JSON-lines files
def jsonl_rows(path: str, shape: str = "") -> Iterator[tuple[int, dict | None, str | None]]:
  """(line number, object, problem) of each non-blank line of a JSON-lines file: the object and None, or None and
  what is wrong with the line (not JSON, not an object; `shape`: how a line should look, for that message)."""
  hint = f"; one object per line: {shape}" if shape else ""
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        yield lineno, None, f"malformed JSON ({e.msg}){hint}"
        continue
      if not isinstance(row, dict):
        yield lineno, None, f"expected a JSON object{hint}"
        continue
      yield lineno, row, None


def iter_jsonl(path: str, shape: str = "") -> Iterator[tuple[int, dict]]:
  """(line number, object) of each non-blank line of a JSON-lines file; a line that is not a JSON object is a
  DataError naming the file and line (`shape`: how a line should look, for that message)."""
  for lineno, row, problem in jsonl_rows(path, shape):
    if problem:
      raise DataError(problem, path, lineno)
    yield lineno, row


def read_catalog(path: str) -> Catalog:
  """A catalog JSONL file: {"id": ..., "title": ..., <other attributes>} per line; a missing file, a row without
  an id, a repeated id or an empty file is a DataError naming the file (and line)."""
  if not os.path.isfile(path):
    raise DataError("no such catalog file or prepared category folder", path)
  ids, attrs, seen = [], [], set()
  for n, row in iter_jsonl(path, '{"id": ..., "title": ...}'):
    if "id" not in row:
      raise DataError("a catalog row needs an \"id\"", path, n)
    item_id = str(row.pop("id"))
    if item_id in seen:
      raise DataError(f"item {item_id!r} appears twice", path, n)
    seen.add(item_id)
    ids.append(item_id)
    attrs.append({k: str(v) for k, v in row.items()})
  if not ids:
    raise DataError("the catalog is empty", path)
  return Catalog(ids, attrs)
