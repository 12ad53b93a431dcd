"""Preparation of one raw Amazon category as Apache Beam transforms, for data beyond one machine.

The same steps as data/amazon_raw.py + data/sequences.py, with the same results (a test compares the prepared
folders byte for byte): read the reviews and the metadata, drop events of items without a title, keep each user's
first event of an item, apply the k-core filter, order each user's items by (time, line) and drop users left with
fewer than `min_sequence_length` items. Beam runs it on one machine (its local runner) or on a cluster (Dataflow,
Flink, Spark) unchanged; data/tfds_amazon.py uses it as a TFDS Beam builder.

A gzip file is read by one worker (gzip is not splittable); every later step is spread by key. The k-core filter is
unrolled into `kcore_rounds` rounds (a Beam graph has no loops): a user or item with fewer than k events is dropped
in each round, and a last check fails the pipeline, naming the setting, if the filter had not converged.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from calrec_jax.data import amazon_raw
from calrec_jax.errors import DataError

NAMESPACE = "calrec"
FILTER_COUNTS = ("events_item_without_title_or_meta", "duplicate_user_item_events", "events_removed_by_kcore",
                 "users_too_short")


def _count(name: str, n: int = 1) -> None:
  if n:
    Metrics.counter(NAMESPACE, name).inc(n)


def read_reviews(path: str, skip_malformed: bool) -> Iterator[tuple[str, str, int, int]]:
  """(user, item, time, line) of every review line; reading problems raise or are counted as in amazon_raw."""
  skipped: dict[str, int] = {}
  cols = amazon_raw.read_reviews(path, skipped, skip_malformed)
  for name, n in skipped.items():
    _count(name, n)
  users, items = cols.user_ids, cols.item_ids
  for u, i, t, line in zip(cols.users.tolist(), cols.items.tolist(), cols.times.tolist(), cols.order.tolist()):
    yield users[u], items[i], t, line


def read_meta(path: str, skip_malformed: bool) -> Iterator[tuple[str, dict[str, str]]]:
  """(asin, attributes) of each asin's first metadata row, as amazon_raw.iter_meta."""
  skipped: dict[str, int] = {}
  yield from amazon_raw.iter_meta(path, skipped, skip_malformed)
  for name, n in skipped.items():
    _count(name, n)


def _titled_events(joined: tuple[str, dict[str, list]], require_title: bool) -> Iterator[tuple[str, str, int, int]]:
  """Events of one item, kept when the item has metadata (and a title when `require_title`)."""
  _, groups = joined
  meta = groups["meta"]
  ok = bool(meta) and (bool(meta[0]["title"]) or not require_title)
  events = groups["events"]
  if not ok:
    _count("events_item_without_title_or_meta", sum(1 for _ in events))
    return
  yield from events


def _first_event(pair: tuple[tuple[str, str], Iterable[tuple[int, int]]]) -> tuple[str, str, int, int]:
  """A user's first event of an item (the smallest (time, line)); the others are counted as duplicates."""
  (user, item), times = pair
  times = list(times)
  _count("duplicate_user_item_events", len(times) - 1)
  t, line = min(times)
  return user, item, t, line


def _keep_if_at_least(group: tuple[str, Iterable], k: int) -> Iterator:
  _, events = group
  events = list(events)
  if len(events) >= k:
    yield from events
  else:
    _count("events_removed_by_kcore", len(events))


def _check_core(group: tuple[str, Iterable], k: int, what: str, rounds: int) -> None:
  key, events = group
  n = sum(1 for _ in events)
  if n < k:
    raise DataError(f"the k-core filter has not converged in {rounds} rounds ({what} {key!r} has {n} < {k} events); "
                    "raise kcore_rounds")


def _user_sequence(group: tuple[str, Iterable[tuple[str, str, int, int]]], min_len: int
                   ) -> Iterator[tuple[str, list[str]]]:
  user, events = group
  items = [e[1] for e in sorted(events, key=lambda e: (e[2], e[3]))]
  if len(items) < min_len:
    _count("users_too_short")
    return
  yield user, items


class PrepareCategory(beam.PTransform):
  """pipeline -> {'sequences': (user, [asin, ...] oldest first), 'catalog': (asin, attributes)} of one category."""

  def __init__(self, reviews_path: str, meta_path: str, kcore: int = 5, dedup: bool = True,
               skip_malformed: bool = False, min_sequence_length: int = 3, require_title: bool = True,
               kcore_rounds: int = 24):
    super().__init__()
    self.reviews_path, self.meta_path = reviews_path, meta_path
    self.kcore, self.dedup, self.skip_malformed = kcore, dedup, skip_malformed
    self.min_len, self.require_title, self.rounds = min_sequence_length, require_title, kcore_rounds

  def expand(self, pipeline):
    skip = self.skip_malformed
    events = (pipeline | "ReviewFile" >> beam.Create([self.reviews_path])
              | "ReadReviews" >> beam.FlatMap(read_reviews, skip) | "ReshuffleEvents" >> beam.Reshuffle())
    meta = (pipeline | "MetaFile" >> beam.Create([self.meta_path])
            | "ReadMeta" >> beam.FlatMap(read_meta, skip))
    events = ({"events": events | "ByItem" >> beam.Map(lambda e: (e[1], e)), "meta": meta}
              | "JoinMeta" >> beam.CoGroupByKey()
              | "TitleFilter" >> beam.FlatMap(_titled_events, self.require_title))
    if self.dedup:
      events = (events | "ByPair" >> beam.Map(lambda e: ((e[0], e[1]), (e[2], e[3])))
                | "GroupPairs" >> beam.GroupByKey() | "FirstEvent" >> beam.Map(_first_event))
    if self.kcore > 1:
      for r in range(self.rounds):
        events = (events | f"ByUser{r}" >> beam.Map(lambda e: (e[0], e)) | f"GroupUser{r}" >> beam.GroupByKey()
                  | f"UserCore{r}" >> beam.FlatMap(_keep_if_at_least, self.kcore)
                  | f"ByItem{r}" >> beam.Map(lambda e: (e[1], e)) | f"GroupItem{r}" >> beam.GroupByKey()
                  | f"ItemCore{r}" >> beam.FlatMap(_keep_if_at_least, self.kcore))
      _ = (events | "CheckUsers" >> beam.Map(lambda e: (e[0], 1)) | "CountUsers" >> beam.GroupByKey()
           | "UserConverged" >> beam.Map(_check_core, self.kcore, "user", self.rounds))
    sequences = (events | "ByUserFinal" >> beam.Map(lambda e: (e[0], e)) | "GroupUserFinal" >> beam.GroupByKey()
                 | "Sequence" >> beam.FlatMap(_user_sequence, self.min_len))
    kept_items = (sequences | "Items" >> beam.FlatMap(lambda us: ((i, None) for i in us[1]))
                  | "DistinctItems" >> beam.CombinePerKey(lambda _: None))
    catalog = ({"kept": kept_items, "meta": meta} | "JoinCatalog" >> beam.CoGroupByKey()
               | "Catalog" >> beam.FlatMap(lambda g: [(g[0], g[1]["meta"][0])] if g[1]["kept"] else []))
    return {"sequences": sequences, "catalog": catalog}


def filter_counts(result) -> dict[str, int]:
  """The skip and filter counts of a finished pipeline (its Beam counters), in the order amazon_raw reports them:
  reading and metadata problems, then the four filters (always present)."""
  from apache_beam.metrics.metric import MetricsFilter
  got = {}
  for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
    got[c.key.metric.name] = got.get(c.key.metric.name, 0) + int(c.committed if c.committed is not None
                                                                   else c.attempted)
  reading = {k: v for k, v in sorted(got.items()) if k not in FILTER_COUNTS}
  return {**reading, **{k: got.get(k, 0) for k in FILTER_COUNTS}}
