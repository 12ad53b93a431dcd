"""The one internal representation of a category: a catalog and chronological user sequences.

Every source (raw Amazon files, RecBole atomic files, the TFDS builder, the synthetic generator) produces a
`CategoryData`; `save_category` / `load_category` write and read the prepared form on disk:

  <dir>/catalog.jsonl    one item per line: {"id": asin, "title": ..., "category": ..., "brand": ..., "price": ...}
  <dir>/sequences.jsonl  one user per line: {"user": reviewerID, "items": [item index, ...]} (oldest first)
  <dir>/stats.json       counts, skips and the filters applied
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterator

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


@dataclasses.dataclass
class CategoryData:
  """One category: catalog, per-user chronological item-index sequences, and provenance counts."""
  name: str
  catalog: Catalog
  user_ids: list[str]
  sequences: list[list[int]]
  skipped: dict[str, int] = dataclasses.field(default_factory=dict)
  new_items: frozenset[int] = frozenset()  # cold-start split (data/cold_start.py): items training never sees

  def num_interactions(self) -> int:
    return sum(len(s) for s in self.sequences)


# ----------------------------------------------------------------------------- leave-one-out splits
def split_examples(sequences: list[list[int]], split: str) -> list[tuple[int, int]]:
  """(user index, target position) pairs of a leave-one-out split.

  'test': the last item; 'valid': the second-to-last; 'train': every earlier item except the first
  (each training target is predicted from all items before it). Users need >= 3 items.
  """
  out = []
  for u, seq in enumerate(sequences):
    n = len(seq)
    if n < 3:
      continue
    if split == "test":
      out.append((u, n - 1))
    elif split == "valid":
      out.append((u, n - 2))
    elif split == "train":
      out.extend((u, t) for t in range(1, n - 2))
    else:
      raise ValueError(f"unknown split {split!r}; expected 'train', 'valid' or 'test'")
  return out


def statistics(data: CategoryData) -> dict[str, Any]:
  """Users, items, interactions and sequence-length summary, overall and per split."""
  lengths = np.array([len(s) for s in data.sequences]) if data.sequences else np.zeros(0)
  stats = {
      "category": data.name,
      "users": len(data.sequences),
      "items": len(data.catalog),
      "interactions": int(lengths.sum()),
      "mean_seq_len": float(lengths.mean()) if len(lengths) else 0.0,
      "max_seq_len": int(lengths.max()) if len(lengths) else 0,
      "min_seq_len": int(lengths.min()) if len(lengths) else 0,
  }
  for split in ("train", "valid", "test"):
    ex = split_examples(data.sequences, split)
    hist = np.array([t for _, t in ex]) if ex else np.zeros(0)
    stats[split] = {
        "examples": len(ex),
        "users": len({u for u, _ in ex}),
        "mean_history": float(hist.mean()) if len(hist) else 0.0,
        "max_history": int(hist.max()) if len(hist) else 0,
    }
  stats["skipped"] = dict(data.skipped)
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
    if s.get("skipped"):
      skips = ", ".join(f"{k}={v}" for k, v in sorted(s["skipped"].items()) if v)
      if skips:
        lines.append(f"  skipped: {skips}")
  return "\n".join(lines)


def validate(data: CategoryData, source: str) -> None:
  """Raise DataError if the category cannot be trained or evaluated on."""
  if not data.sequences:
    raise DataError(f"category {data.name!r} has no users left after filtering "
                    "(lower data.kcore / min_sequence_length, or check the input files)", source)
  if len(data.catalog) == 0:
    raise DataError(f"category {data.name!r} has an empty catalog", source)
  n = len(data.catalog)
  for u, seq in enumerate(data.sequences):
    if len(seq) < 3:
      raise DataError(f"user {data.user_ids[u]!r} has {len(seq)} items; leave-one-out needs >= 3", source)
    if min(seq) < 0 or max(seq) >= n:
      raise DataError(f"user {data.user_ids[u]!r} refers to an item index outside the catalog", source)


# ----------------------------------------------------------------------------- prepared form on disk
def save_category(data: CategoryData, directory: str) -> None:
  """Write the prepared form (atomically per file: a crash never leaves a half-written file)."""
  from calrec_jax.paths import write_atomically
  os.makedirs(directory, exist_ok=True)

  def write(name: str, lines: list[str]) -> None:
    write_atomically(os.path.join(directory, name), "".join(line + "\n" for line in lines))

  write("catalog.jsonl", [json.dumps({"id": i, **a}, ensure_ascii=False)
                          for i, a in zip(data.catalog.item_ids, data.catalog.attributes)])
  write("sequences.jsonl", [json.dumps({"user": u, "items": s})
                            for u, s in zip(data.user_ids, data.sequences)])
  write("stats.json", [json.dumps(statistics(data), indent=1)])


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


def _read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    raise DataError("file not found (run `python -m calrec_jax.data.prepare` first)", path)
  return [row for _, row in iter_jsonl(path)]


def load_category(directory: str, name: str | None = None) -> CategoryData:
  """Read a prepared category directory written by `save_category`."""
  cat_path = os.path.join(directory, "catalog.jsonl")
  seq_path = os.path.join(directory, "sequences.jsonl")
  items, attrs = [], []
  for lineno, row in enumerate(_read_jsonl(cat_path), 1):
    if "id" not in row:
      raise DataError("catalog row without 'id'", cat_path, lineno)
    items.append(str(row.pop("id")))
    attrs.append({k: str(v) for k, v in row.items()})
  users, seqs = [], []
  for lineno, row in enumerate(_read_jsonl(seq_path), 1):
    if "user" not in row or "items" not in row:
      raise DataError("sequence row needs 'user' and 'items'", seq_path, lineno)
    users.append(str(row["user"]))
    seqs.append([int(i) for i in row["items"]])
  skipped = {}
  stats_path = os.path.join(directory, "stats.json")
  if os.path.exists(stats_path):
    with open(stats_path, encoding="utf-8") as f:
      skipped = json.load(f).get("skipped", {})
  data = CategoryData(name or os.path.basename(os.path.normpath(directory)), Catalog(items, attrs),
                      users, seqs, skipped)
  validate(data, directory)
  return data
