"""Review events -> chronological per-user sequences: dedup, title filter, k-core, minimum length.

Events are held as columns (int32 user and item codes, int64 times and line numbers: 24 bytes per review, no
Python object per review) and every filter is an array operation, so preparation grows linearly with the reviews
and a Books-sized category (51M reviews) fits in a few GB.
"""
from __future__ import annotations

import array
import dataclasses

import numpy as np

from calrec_jax.data.records import Catalog, CategoryData, SequenceStore, validate


@dataclasses.dataclass
class ReviewColumns:
  """Reviews as columns; codes index `user_ids` / `item_ids` (first-appearance order)."""
  users: np.ndarray      # [reviews] int32
  items: np.ndarray      # [reviews] int32
  times: np.ndarray      # [reviews] int64 unix seconds
  order: np.ndarray      # [reviews] int64 tie-breaker between equal times (the line number)
  user_ids: list[str]
  item_ids: list[str]
  item_codes: dict[str, int]  # asin -> code

  def __len__(self) -> int:
    return len(self.users)


class ReviewColumnsBuilder:
  """Appends one review at a time into compact arrays (array.array, 4-8 bytes a field)."""

  def __init__(self):
    self._users, self._items = array.array("i"), array.array("i")
    self._times, self._order = array.array("q"), array.array("q")
    self._user_codes: dict[str, int] = {}
    self._item_codes: dict[str, int] = {}

  def add(self, user: str, item: str, time: int, order: int) -> None:
    u = self._user_codes.setdefault(user, len(self._user_codes))
    i = self._item_codes.setdefault(item, len(self._item_codes))
    self._users.append(u)
    self._items.append(i)
    self._times.append(time)
    self._order.append(order)

  def build(self) -> ReviewColumns:
    as_np = lambda a, dt: np.frombuffer(a, dtype=dt) if len(a) else np.zeros(0, dt)  # noqa: E731
    return ReviewColumns(as_np(self._users, np.int32), as_np(self._items, np.int32),
                         as_np(self._times, np.int64), as_np(self._order, np.int64),
                         list(self._user_codes), list(self._item_codes), self._item_codes)


@dataclasses.dataclass
class FilteredSequences:
  """The sequences the filters kept, as flat arrays, with the ids their indices stand for."""
  user_ids: list[str]       # sorted; user u's sequence is sequences[u]
  item_ids: list[str]       # sorted; an item's index is its position here
  sequences: SequenceStore  # item indices, oldest first


def string_ranks(strings: list[str]) -> np.ndarray:
  """[len(strings)] int64: each string's position in sorted order (Python's code-point order)."""
  order = sorted(range(len(strings)), key=strings.__getitem__)
  ranks = np.empty(len(strings), np.int64)
  ranks[np.asarray(order, np.int64)] = np.arange(len(strings), dtype=np.int64)
  return ranks


def kcore_mask(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
  """[events] bool: events left once users and items with fewer than k events are dropped, repeatedly, until every
  one left has >= k."""
  keep = np.ones(len(users), bool)
  if k <= 1 or not len(users):
    return keep
  n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
  while True:
    u, i = users[keep], items[keep]
    ok = (np.bincount(u, minlength=n_users) >= k)[u] & (np.bincount(i, minlength=n_items) >= k)[i]
    if ok.all():
      return keep
    keep[np.flatnonzero(keep)[~ok]] = False


def build_sequences(cols: ReviewColumns, usable_items: np.ndarray, skipped: dict[str, int], kcore: int = 5,
                    dedup: bool = True, min_sequence_length: int = 3,
                    unusable_key: str = "events_item_without_title_or_meta") -> FilteredSequences:
  """Filter and order the reviews: drop events of unusable items ([item codes] bool), sort each user's events by
  (time, order), keep a user's first event of each item, apply the k-core filter, drop users left with fewer than
  `min_sequence_length` items. Users and items are numbered in sorted id order; the counts go to `skipped`."""
  keep = usable_items[cols.items] if len(cols) else np.zeros(0, bool)
  skipped[unusable_key] = int(len(cols) - keep.sum())
  user_rank = string_ranks(cols.user_ids)
  users, items = cols.users[keep], cols.items[keep]
  by_time = np.lexsort((cols.order[keep], cols.times[keep], user_rank[users]))   # user, then time, then line
  users, items = users[by_time], items[by_time]
  if dedup:
    pair = users.astype(np.int64) * max(len(cols.item_ids), 1) + items
    _, first = np.unique(pair, return_index=True)                                 # the first in time order
    first.sort()
    skipped["duplicate_user_item_events"] = int(len(users) - len(first))
    users, items = users[first], items[first]
  n1 = len(users)
  core = kcore_mask(users, items, kcore)
  users, items = users[core], items[core]
  skipped["events_removed_by_kcore"] = int(n1 - len(users))

  counts = np.bincount(users, minlength=len(cols.user_ids)) if len(users) else np.zeros(len(cols.user_ids), int)
  short = (counts > 0) & (counts < min_sequence_length)
  skipped["users_too_short"] = int(short.sum())
  long_enough = ~short[users]
  users, items = users[long_enough], items[long_enough]

  item_rank = string_ranks(cols.item_ids)
  kept_items = np.unique(items)
  kept_items = kept_items[np.argsort(item_rank[kept_items], kind="stable")]          # sorted by asin
  item_index = np.full(len(cols.item_ids), -1, np.int32)
  item_index[kept_items] = np.arange(len(kept_items), dtype=np.int32)
  starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.zeros(0, np.int64)
  offsets = np.r_[starts, len(users)].astype(np.int64)
  return FilteredSequences([cols.user_ids[u] for u in users[starts].tolist()],
                           [cols.item_ids[i] for i in kept_items.tolist()], SequenceStore(offsets, item_index[items]))


def to_category(name: str, seqs: FilteredSequences, attributes: list[dict[str, str]], skipped: dict[str, int],
                source: str = "") -> CategoryData:
  """FilteredSequences + the kept items' attributes (in item order) -> a validated CategoryData."""
  data = CategoryData(name, Catalog(list(seqs.item_ids), attributes), list(seqs.user_ids), seqs.sequences,
                      skipped)
  validate(data, source)
  return data
