"""Amazon Review 2018 (and 2014) raw files: reviews + `meta_` JSON lines, plain or gzip.

Each line is a JSON object, or (2014 release) a Python dict literal. Every problem names the file and line;
with `skip_malformed=True` bad lines are counted instead (the counts end up in the statistics).
"""
from __future__ import annotations

import ast
import gzip
import json
import os
from typing import Container, Iterator

import numpy as np
from tqdm import tqdm

from calrec_jax import progress
from calrec_jax.data.records import CategoryData
from calrec_jax.data.sequences import (ReviewColumns, ReviewColumnsBuilder, FilteredSequences, build_sequences,
                                      to_category)
from calrec_jax.data.text import clean_value
from calrec_jax.errors import DataError

REVIEW_FIELDS = ("reviewerID", "asin")


def _existing(path: str) -> str:
  if not os.path.exists(path):
    raise DataError("file not found", path)
  return path


def progress_bar(path: str, what: str) -> tqdm:
  """A progress bar over a file's bytes on disk (rate in MB/s and an ETA)."""
  return progress.bar(total=os.path.getsize(_existing(path)), desc=what, unit="B", unit_scale=True,
                      unit_divisor=1024, mininterval=2.0, leave=False)


def iter_records(path: str, skipped: dict[str, int], skip_malformed: bool,
                 bar: "tqdm | None" = None) -> Iterator[tuple[int, dict]]:
  """Yield (line number, record) for each non-empty line of a JSON-lines / dict-literal file; `bar` (total: the
  file's size) advances by the bytes read from disk."""
  any_line = False
  with open(_existing(path), "rb") as disk, (gzip.open(disk, "rb") if path.endswith(".gz") else disk) as f:
    try:
      for lineno, raw in enumerate(f, 1):
        if bar is not None and lineno % 16384 == 0:
          bar.update(disk.tell() - bar.n)
        try:
          line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
          if skip_malformed:
            skipped["non_utf8_lines"] = skipped.get("non_utf8_lines", 0) + 1
            continue
          raise DataError(f"bytes that are not UTF-8 at column {e.start}", path, lineno) from None
        if lineno == 1:
          line = line.lstrip("\ufeff")  # a UTF-8 byte-order mark is not part of the first record
        if not line.strip():
          continue
        any_line = True
        try:
          rec = json.loads(line)
        except (ValueError, RecursionError):  # JSONDecodeError, or nesting too deep to parse
          try:  # 2014 release: Python dict literals
            rec = ast.literal_eval(line.strip())
          except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
            rec = None
        if not isinstance(rec, dict):
          if skip_malformed:
            skipped["malformed_lines"] = skipped.get("malformed_lines", 0) + 1
            continue
          raise DataError("malformed line: neither a JSON object nor a Python dict literal (set "
                          "data.skip_malformed=True, or pass --skip-malformed to data.prepare, to count and skip "
                          "such lines)", path, lineno)
        yield lineno, rec
    except (OSError, EOFError) as e:  # truncated or corrupt gzip
      raise DataError(f"cannot read the file ({e}); re-download it", path) from None
  if bar is not None:
    bar.update(bar.total - bar.n)
  if not any_line:
    raise DataError("the file is empty", path)


def read_reviews(path: str, skipped: dict[str, int], skip_malformed: bool = False,
                 progress: bool = False) -> ReviewColumns:
  """Every review line as columns: user and item codes (first-appearance order), unix time, line number."""
  cols = ReviewColumnsBuilder()
  bar = progress_bar(path, os.path.basename(path)) if progress else None
  try:
    for lineno, rec in iter_records(path, skipped, skip_malformed, bar):
      user, item = rec.get("reviewerID"), rec.get("asin")
      missing = [k for k, v in zip(REVIEW_FIELDS, (user, item)) if v is None or str(v).strip() == ""]  # 0 is an id
      t = rec.get("unixReviewTime")
      if t is None and rec.get("reviewTime"):
        t = _parse_review_time(rec["reviewTime"])
      if t is None:
        missing.append("unixReviewTime")
      if missing:
        if skip_malformed:
          skipped["reviews_missing_fields"] = skipped.get("reviews_missing_fields", 0) + 1
          continue
        raise DataError(f"review without {', '.join(missing)}", path, lineno)
      try:
        if isinstance(t, bool):  # int(True) == 1 would pass as a timestamp
          raise TypeError
        t = int(t)
      except (TypeError, ValueError):
        if skip_malformed:
          skipped["reviews_bad_time"] = skipped.get("reviews_bad_time", 0) + 1
          continue
        raise DataError(f"unixReviewTime is not an integer: {t!r}", path, lineno) from None
      cols.add(str(user), str(item), t, lineno)
  finally:
    if bar is not None:
      bar.close()
  return cols.build()


def _parse_review_time(text: str) -> int | None:
  """'01 5, 2013' (month day, year) -> unix seconds at midnight UTC."""
  import datetime
  try:
    dt = datetime.datetime.strptime(text.strip(), "%m %d, %Y").replace(tzinfo=datetime.timezone.utc)
  except ValueError:
    return None
  return int(dt.timestamp())


def read_meta(path: str, skipped: dict[str, int], skip_malformed: bool = False) -> dict[str, dict[str, str]]:
  """asin -> {title, category, brand, price}; the first row of a duplicated asin wins (counted)."""
  return dict(iter_meta(path, skipped, skip_malformed))


def iter_meta(path: str, skipped: dict[str, int], skip_malformed: bool = False, wanted: Container[str] | None = None,
              progress: bool = False) -> Iterator[tuple[str, dict[str, str]]]:
  """(asin, {title, category, brand, price}) of each asin's first row (later rows counted as duplicates); with
  `wanted`, only those asins' rows are rendered (the rest are still checked and counted the same way)."""
  seen: set[str] = set()
  bar = progress_bar(path, os.path.basename(path)) if progress else None
  for lineno, rec in iter_records(path, skipped, skip_malformed, bar):
    asin = rec.get("asin")
    asin = str(asin) if isinstance(asin, (int, str)) and not isinstance(asin, bool) else None  # as in reviews
    if not asin:
      if skip_malformed:
        skipped["meta_missing_asin"] = skipped.get("meta_missing_asin", 0) + 1
        continue
      raise DataError("metadata row without 'asin'", path, lineno)
    if asin in seen:
      skipped["meta_duplicate_rows"] = skipped.get("meta_duplicate_rows", 0) + 1
      continue
    category = rec.get("category") or rec.get("categories")
    if isinstance(category, list) and category and isinstance(category[0], list):  # 2014: list of paths
      category = category[0]
    title = rec.get("title")
    if title is not None and not isinstance(title, (str, int, float)):  # a list or a dict is not a title
      if skip_malformed:
        skipped["meta_bad_title"] = skipped.get("meta_bad_title", 0) + 1
        continue
      raise DataError(f"'title' is a {type(title).__name__}, not a string (set data.skip_malformed=True, or pass "
                      "--skip-malformed to data.prepare, to count and skip such rows)", path, lineno)
    seen.add(asin)
    if wanted is not None and asin not in wanted:
      continue
    yield asin, {
        "title": clean_value(title),
        "category": clean_value(category) or clean_value(rec.get("main_cat")),
        "brand": clean_value(rec.get("brand")),
        "price": clean_value(rec.get("price")) if str(rec.get("price", "")).startswith("$") else "",
    }
  if bar is not None:
    bar.close()


def find_category_files(raw_dir: str, category: str) -> tuple[str, str]:
  """Locate `<Category>[_5].json[.gz]` and `meta_<Category>.json[.gz]` in raw_dir."""
  def first(names):
    for n in names:
      p = os.path.join(raw_dir, n)
      if os.path.exists(p):
        return p
    return None
  reviews = first([f"{category}{s}.json{z}" for s in ("", "_5") for z in (".gz", "")] +
                  [f"reviews_{category}{s}.json{z}" for s in ("", "_5") for z in (".gz", "")])
  meta = first([f"meta_{category}.json{z}" for z in (".gz", "")])
  if reviews is None or meta is None:
    known = sorted(n for n in os.listdir(raw_dir)) if os.path.isdir(raw_dir) else []
    missing = "reviews file" if reviews is None else "meta file"
    raise DataError(f"no {missing} for category {category!r} (expected {category}.json.gz or "
                    f"{category}_5.json.gz and meta_{category}.json.gz); files there: {known[:20]}", raw_dir)
  return reviews, meta


def load_amazon_category(raw_dir: str, category: str, kcore: int = 5, dedup: bool = True,
                         skip_malformed: bool = False, min_sequence_length: int = 3,
                         require_title: bool = True) -> CategoryData:
  """Raw reviews + metadata of one category -> filtered CategoryData."""
  reviews_path, meta_path = find_category_files(raw_dir, category)
  return load_amazon_files(reviews_path, meta_path, category, kcore, dedup, skip_malformed,
                           min_sequence_length, require_title)


def load_amazon_files(reviews_path: str, meta_path: str, category: str, kcore: int = 5, dedup: bool = True,
                      skip_malformed: bool = False, min_sequence_length: int = 3,
                      require_title: bool = True) -> CategoryData:
  """A reviews file and a metadata file (any names) -> filtered CategoryData."""
  skipped: dict[str, int] = {}
  seqs, attributes = prepare_arrays(reviews_path, meta_path, skipped, kcore, dedup, skip_malformed,
                                    min_sequence_length, require_title)
  return to_category(category, seqs, attributes, skipped, source=reviews_path)


def prepare_arrays(reviews_path: str, meta_path: str, skipped: dict[str, int], kcore: int = 5, dedup: bool = True,
                   skip_malformed: bool = False, min_sequence_length: int = 3, require_title: bool = True,
                   progress: bool = False) -> tuple[FilteredSequences, list[dict[str, str]]]:
  """Filtered sequences as arrays and the kept items' attributes (in item order), in memory linear in the reviews
  (24 bytes each) plus the distinct ids: the metadata is read twice, once to learn which reviewed items have a
  title, once for the attributes of the items the filters kept."""
  cols = read_reviews(reviews_path, skipped, skip_malformed, progress)
  usable = np.zeros(len(cols.item_ids), bool)
  for asin, attrs in iter_meta(meta_path, skipped, skip_malformed, wanted=cols.item_codes, progress=progress):
    usable[cols.item_codes[asin]] = bool(attrs["title"]) or not require_title
  seqs = build_sequences(cols, usable, skipped, kcore=kcore, dedup=dedup, min_sequence_length=min_sequence_length,
                         unusable_key="events_item_without_title_or_meta" if require_title
                         else "events_item_without_meta")
  del cols
  wanted = set(seqs.item_ids)
  attributes = dict(iter_meta(meta_path, {}, skip_malformed, wanted=wanted))
  return seqs, [attributes[a] for a in seqs.item_ids]
