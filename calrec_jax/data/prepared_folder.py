"""The prepared form of a category on disk, written by `python -m calrec_jax.data.prepare` and read for training:

  <dir>/catalog.jsonl           one item per line: {"id": asin, "title": ..., "category": ..., "brand": ..., ...}
  <dir>/sequences.jsonl         one user per line: {"user": reviewerID, "items": [item index, ...]} (oldest first)
  <dir>/stats.json              counts, skips, the filters applied, held-out items' training counts
  <dir>/sequences.items.npy     the same sequences as flat arrays, memory-mapped when read: user u's items are
  <dir>/sequences.offsets.npy     items[offsets[u]:offsets[u + 1]]
  <dir>/sequences.users.jsonl   user ids, one JSON string per line
  <dir>/sequences.arrays.json   the size and BLAKE2b digest of the sequences.jsonl the arrays were written with

sequences.jsonl stays the readable source of truth: the arrays are read only while it is the file they were written
with (a folder without them, or one whose sequences.jsonl was edited since, is read from sequences.jsonl).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np
from absl import logging

from calrec_jax.data.records import (Catalog, CategoryData, SequenceStore, SequenceStoreBuilder, iter_jsonl,
                                     read_catalog, sequence_lengths, statistics_of_lengths, validate,
                                     with_target_popularity)
from calrec_jax.errors import DataError

ARRAY_FILES = ("sequences.items.npy", "sequences.offsets.npy", "sequences.users.jsonl", "sequences.arrays.json")
USERS_PER_BLOCK = 65536


def save_category(data: CategoryData, directory: str) -> dict[str, Any]:
  """Write a CategoryData's prepared folder; the statistics written."""
  if isinstance(data.sequences, SequenceStore):
    offsets, flat = np.asarray(data.sequences.offsets), np.asarray(data.sequences.items)
  else:
    offsets = np.r_[0, np.cumsum(sequence_lengths(data.sequences))].astype(np.int64)
    flat = np.fromiter((i for x in data.sequences for i in x), np.int32, count=int(offsets[-1]))
  return write_prepared(directory, data.name, data.catalog.item_ids, data.catalog.attributes, data.user_ids,
                        offsets, flat, data.skipped)


def write_prepared(directory: str, name: str, item_ids: list[str], attributes: list[dict[str, str]],
                   user_ids: list[str], offsets: np.ndarray, items: np.ndarray, skipped: dict[str, int]
                   ) -> dict[str, Any]:
  """Write a prepared folder from flat arrays (user u's items: items[offsets[u]:offsets[u + 1]]), a block of users
  at a time: no Python object per event is held. Each file is written atomically. Returns the statistics."""
  from calrec_jax.paths import open_atomically
  os.makedirs(directory, exist_ok=True)
  for stale in ARRAY_FILES:                     # a crash below must not leave arrays of an earlier preparation
    if os.path.exists(os.path.join(directory, stale)):
      os.remove(os.path.join(directory, stale))
  with open_atomically(os.path.join(directory, "catalog.jsonl")) as f:
    for i, a in zip(item_ids, attributes):
      f.write((json.dumps({"id": i, **a}, ensure_ascii=False) + "\n").encode("utf-8"))
  bounds = np.asarray(offsets, np.int64)
  digest, size = hashlib.blake2b(), 0
  with open_atomically(os.path.join(directory, "sequences.jsonl")) as f:
    for start in range(0, len(user_ids), USERS_PER_BLOCK):
      stop = min(start + USERS_PER_BLOCK, len(user_ids))
      flat = items[bounds[start]:bounds[stop]].tolist()
      cuts = (bounds[start:stop + 1] - bounds[start]).tolist()
      block = "".join(json.dumps({"user": user_ids[u], "items": flat[cuts[k]:cuts[k + 1]]}) + "\n"
                      for k, u in enumerate(range(start, stop))).encode("utf-8")
      f.write(block)
      digest.update(block)
      size += len(block)
  stats = with_target_popularity(statistics_of_lengths(name, len(item_ids), np.diff(bounds), skipped),
                                 SequenceStore(bounds, np.asarray(items, np.int32)), len(item_ids))
  with open_atomically(os.path.join(directory, "stats.json")) as f:
    f.write((json.dumps(stats, indent=1) + "\n").encode("utf-8"))
  with open_atomically(os.path.join(directory, "sequences.items.npy")) as f:
    np.save(f, np.asarray(items, np.int32))
  with open_atomically(os.path.join(directory, "sequences.offsets.npy")) as f:
    np.save(f, bounds)
  with open_atomically(os.path.join(directory, "sequences.users.jsonl")) as f:
    for start in range(0, len(user_ids), USERS_PER_BLOCK):
      f.write("".join(json.dumps(u) + "\n" for u in user_ids[start:start + USERS_PER_BLOCK]).encode("utf-8"))
  with open_atomically(os.path.join(directory, "sequences.arrays.json")) as f:  # last: the arrays are complete
    f.write(json.dumps({"sequences.jsonl": {"bytes": size, "blake2b": digest.hexdigest()}}).encode("utf-8"))
  return stats


def load_category(directory: str, name: str | None = None) -> CategoryData:
  """Read a prepared category folder; its sequences come as a SequenceStore (memory-mapped arrays when the folder
  has current ones, else parsed from sequences.jsonl)."""
  seq_path = os.path.join(directory, "sequences.jsonl")
  if not os.path.exists(seq_path):
    raise DataError("file not found (run `python -m calrec_jax.data.prepare` first)", seq_path)
  catalog: Catalog = read_catalog(os.path.join(directory, "catalog.jsonl"))
  loaded = _read_arrays(directory) or _read_sequences_jsonl(seq_path)
  users, store = loaded
  skipped = {}
  stats_path = os.path.join(directory, "stats.json")
  if os.path.exists(stats_path):
    try:
      with open(stats_path, encoding="utf-8") as f:
        skipped = json.load(f).get("skipped", {})
    except (ValueError, AttributeError) as e:
      raise DataError(f"not a statistics file ({e}); run prepare again or delete it", stats_path) from None
  data = CategoryData(name or os.path.basename(os.path.normpath(directory)), catalog, users, store, skipped)
  validate(data, directory)
  return data


def _read_sequences_jsonl(path: str) -> tuple[list[str], SequenceStore]:
  """Users and sequences of sequences.jsonl, the items gathered into flat arrays as they are read."""
  users, store = [], SequenceStoreBuilder()
  for lineno, row in iter_jsonl(path, '{"user": ..., "items": [item index, ...]}'):
    if "user" not in row or not isinstance(row.get("items"), list):
      raise DataError("a sequence row needs \"user\" and a list \"items\"", path, lineno)
    try:
      items = [int(i) for i in row["items"]]
    except (TypeError, ValueError):
      raise DataError("\"items\" must be item indices (integers)", path, lineno) from None
    users.append(str(row["user"]))
    store.append(items)
  return users, store.build()


def _file_digest(path: str) -> tuple[int, str]:
  digest, size = hashlib.blake2b(), 0
  with open(path, "rb") as f:
    while chunk := f.read(1 << 22):
      digest.update(chunk)
      size += len(chunk)
  return size, digest.hexdigest()


def _read_arrays(directory: str) -> tuple[list[str], SequenceStore] | None:
  """The memory-mapped arrays, or None (with a log line saying why) when they are absent, damaged or were written
  with a different sequences.jsonl."""
  paths = {f: os.path.join(directory, f) for f in ARRAY_FILES}
  if not all(os.path.exists(p) for p in paths.values()):
    return None
  seq_path = os.path.join(directory, "sequences.jsonl")
  try:
    with open(paths["sequences.arrays.json"], encoding="utf-8") as f:
      stamp = json.load(f)["sequences.jsonl"]
    if (os.path.getsize(seq_path) != stamp["bytes"] or
        _file_digest(seq_path) != (stamp["bytes"], stamp["blake2b"])):
      logging.warning("%s changed after its arrays were written: reading it instead of the arrays (run prepare "
                      "again to rewrite them)", seq_path)
      return None
    offsets = np.load(paths["sequences.offsets.npy"], mmap_mode="r")
    items = np.load(paths["sequences.items.npy"], mmap_mode="r")
    with open(paths["sequences.users.jsonl"], encoding="utf-8") as f:
      users = [str(json.loads(line)) for line in f]
  except (OSError, ValueError, KeyError, TypeError) as e:
    logging.warning("the sequence arrays in %s cannot be read (%s): reading sequences.jsonl instead", directory, e)
    return None
  if (offsets.ndim != 1 or items.ndim != 1 or len(offsets) != len(users) + 1 or offsets[0] != 0 or
          offsets[-1] != len(items) or np.any(np.diff(offsets) < 0)):
    logging.warning("the sequence arrays in %s do not fit together: reading sequences.jsonl instead", directory)
    return None
  return users, SequenceStore(offsets, items)
