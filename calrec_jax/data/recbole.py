"""RecBole atomic files (the UniSRec-processed layout of `shared/data/amazon2018-scientific/`).

Reads `<name>.test.inter` (full history + last item per user) or a plain `<name>.inter` with `user_id`,
`item_id` and, optionally, `timestamp` columns (a user's events ordered by time; events at the same time, or all
of them without a timestamp column, in the file's order); item ids map through `<name>.item2index`; attributes
come from `<name>.meta.jsonl` (structured), RecBole's standard `<name>.item` feature file (every column, under its
own name; `item_name`/`name` count as the title, `categories`/`main_cat` as the category; `data.attributes` picks
the rendered ones), or else `<name>.text` (title only). Without `<name>.item2index`, item ids are the tokens of
`<name>.item`.
"""
from __future__ import annotations

import logging
import os

from calrec_jax.data.records import Catalog, CategoryData, iter_jsonl, validate
from calrec_jax.data.text import clean_value
from calrec_jax.errors import DataError

log = logging.getLogger(__name__)


def _read_tsv(path: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
  """Header field names (without `:type`) and (line number, fields) rows."""
  if not os.path.exists(path):
    raise DataError("file not found", path)
  with open(path, encoding="utf-8", errors="strict") as f:
    try:
      lines = f.read().split("\n")
    except UnicodeDecodeError as e:
      raise DataError(f"bytes that are not UTF-8 at offset {e.start}", path) from None
  if not lines or not lines[0].strip():
    raise DataError("the file is empty", path)
  header = [h.split(":")[0] for h in lines[0].rstrip("\r").split("\t")]
  rows = []
  for lineno, line in enumerate(lines[1:], 2):
    if not line.strip():
      continue
    fields = line.rstrip("\r").split("\t")
    if len(fields) != len(header):
      raise DataError(f"expected {len(header)} tab-separated fields {header}, found {len(fields)}", path, lineno)
    rows.append((lineno, fields))
  if not rows:
    raise DataError("the file has a header but no rows", path)
  return header, rows


def _read_index(path: str) -> list[str]:
  """`<token>\\t<int>` lines -> list indexed by the int."""
  if not os.path.exists(path):
    raise DataError("file not found", path)
  pairs: dict[int, str] = {}
  tokens: dict[str, int] = {}
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      parts = line.rstrip("\n").split("\t")
      if len(parts) != 2 or not parts[1].strip().isdigit():
        raise DataError("expected '<token><TAB><integer id>'", path, lineno)
      if int(parts[1]) in pairs:
        raise DataError(f"id {parts[1]} is given twice (to {pairs[int(parts[1])]!r} and {parts[0]!r})", path, lineno)
      if parts[0] in tokens:
        raise DataError(f"{parts[0]!r} is given two ids ({tokens[parts[0]]} and {parts[1]}); each token needs one",
                        path, lineno)
      pairs[int(parts[1])], tokens[parts[0]] = parts[0], int(parts[1])
  if sorted(pairs) != list(range(len(pairs))):
    raise DataError("ids are not 0..N-1 without gaps", path)
  return [pairs[i] for i in range(len(pairs))]


def _attributes(directory: str, name: str, item_ids: list[str]) -> list[dict[str, str]]:
  meta_path = os.path.join(directory, f"{name}.meta.jsonl")
  text_path = os.path.join(directory, f"{name}.text")
  item_path = os.path.join(directory, f"{name}.item")
  by_asin: dict[str, dict[str, str]] = {}
  if os.path.exists(meta_path):
    for lineno, rec in iter_jsonl(meta_path, '{"asin": ..., "title": ..., ...}'):
      if "asin" not in rec:
        raise DataError("metadata row without 'asin'", meta_path, lineno)
      clean = {k: clean_value(v) for k, v in rec.items()}
      by_asin[rec["asin"]] = {
          "title": clean.get("title", ""),
          "category": clean.get("category") or clean.get("main_cat", ""),
          "brand": clean.get("brand", ""),
          "price": clean.get("price", ""),
      }
      for key in by_asin[rec["asin"]]:
        if by_asin[rec["asin"]][key] == "Unknown":
          by_asin[rec["asin"]][key] = ""
  elif os.path.exists(item_path):
    by_asin = _item_file_attributes(item_path)
  elif os.path.exists(text_path):
    _, rows = _read_tsv(text_path)
    for _, (asin, text) in rows:
      by_asin[asin] = {"title": clean_value(text)}
  else:
    raise DataError(f"no item attributes: expected {name}.meta.jsonl, {name}.item or {name}.text", directory)
  missing = [a for a in item_ids if a not in by_asin]
  if missing:
    raise DataError(f"{len(missing)} items have no attributes (first: {missing[:3]})", meta_path)
  return [by_asin[a] for a in item_ids]


# RecBole `.item` columns (name before ':type') known under another name: the first present one of each becomes
# our attribute; every other column is kept under its own name (data.attributes chooses what is rendered)
ITEM_COLUMNS = {"title": ("title", "item_name", "name"), "category": ("categories", "category", "main_cat"),
                "brand": ("brand",), "price": ("price",)}


def _item_file_attributes(path: str) -> dict[str, dict[str, str]]:
  """RecBole's item feature file: `item_id:token<TAB>title:token_seq<TAB>...` (header with types). Every column
  but item_id becomes an attribute; the aliases of ITEM_COLUMNS map to title, category, brand and price."""
  header, rows = _read_tsv(path)
  if "item_id" not in header:
    raise DataError(f"header must have an item_id column, has {header}", path, 1)
  cols = {attr: next((header.index(c) for c in names if c in header), None) for attr, names in ITEM_COLUMNS.items()}
  aliased = {c for c in cols.values() if c is not None}
  ci = header.index("item_id")
  cols.update({h: j for j, h in enumerate(header) if j != ci and j not in aliased and h not in cols})
  cols = {attr: c for attr, c in cols.items() if c is not None}
  out = {}
  for _, fields in rows:
    attrs = {}
    for attr, c in cols.items():
      value = clean_value(fields[c])
      if attr == "category" and "," in value:  # a category path: its most specific entry
        value = value.split(",")[-1].strip()
      attrs[attr] = "" if value == "Unknown" else value
    out[fields[ci]] = attrs
  return out


def load_item_file(path: str) -> Catalog:
  """A catalog from RecBole's item feature file alone (`<name>.item`): items in the file's order, attributes as
  `_item_file_attributes` maps them; a repeated item_id (or an empty file) is a DataError naming the file and line."""
  header, rows = _read_tsv(path)
  if "item_id" not in header:
    raise DataError(f"header must have an item_id column, has {header}", path, 1)
  ci, seen = header.index("item_id"), set()
  for lineno, fields in rows:
    if fields[ci] in seen:
      raise DataError(f"item {fields[ci]!r} appears twice", path, lineno)
    seen.add(fields[ci])
  attributes = _item_file_attributes(path)
  ids = [fields[ci] for _, fields in rows]
  return Catalog(ids, [attributes[i] for i in ids])


def load_recbole(directory: str, name: str) -> CategoryData:
  """Read one RecBole-format dataset `<directory>/<name>.*` into a CategoryData."""
  index_path = os.path.join(directory, f"{name}.item2index")
  if os.path.exists(index_path):
    item_ids = _read_index(index_path)
  elif os.path.exists(os.path.join(directory, f"{name}.item")):  # RecBole's own layout: ids are .item's tokens
    _, item_rows = _read_tsv(os.path.join(directory, f"{name}.item"))
    header = _read_tsv(os.path.join(directory, f"{name}.item"))[0]
    if "item_id" not in header:
      raise DataError(f"header must have an item_id column, has {header}", os.path.join(directory, f"{name}.item"), 1)
    item_ids = list(dict.fromkeys(fields[header.index("item_id")] for _, fields in item_rows))
  else:
    raise DataError(f"no item index: expected {name}.item2index or {name}.item", directory)
  user_path = os.path.join(directory, f"{name}.user2index")
  test_path = os.path.join(directory, f"{name}.test.inter")
  plain_path = os.path.join(directory, f"{name}.inter")
  sequences: dict[str, list[int]] = {}
  skipped: dict[str, int] = {}
  if os.path.exists(test_path):
    header, rows = _read_tsv(test_path)
    need = ("user_id", "item_id_list", "item_id")
    if any(h not in header for h in need):
      raise DataError(f"header must have {need}, has {header}", test_path, 1)
    cu, cl, ci = (header.index(h) for h in need)
    for lineno, fields in rows:
      try:
        seq = [int(x) for x in fields[cl].split()] + [int(fields[ci])]
      except ValueError:
        raise DataError("item ids must be integers", test_path, lineno) from None
      if max(seq) >= len(item_ids) or min(seq) < 0:
        raise DataError(f"item id outside {name}.item2index (0..{len(item_ids) - 1})", test_path, lineno)
      if fields[cu] in sequences:
        raise DataError(f"user {fields[cu]} appears twice", test_path, lineno)
      sequences[fields[cu]] = seq
  elif os.path.exists(plain_path):
    header, rows = _read_tsv(plain_path)
    need = ("user_id", "item_id")
    if any(h not in header for h in need):
      raise DataError(f"header must have {need} (and optionally timestamp), has {header}", plain_path, 1)
    cu, ci = (header.index(h) for h in need)
    ct = header.index("timestamp") if "timestamp" in header else None  # without it: the file's order
    events = []
    index = {a: i for i, a in enumerate(item_ids)}
    for lineno, fields in rows:
      item = fields[ci]
      if item not in index:
        raise DataError(f"item {item!r} is not in the item index ({name}.item2index or {name}.item)", plain_path, lineno)
      try:
        events.append((fields[cu], float(fields[ct]) if ct is not None else 0.0, lineno, index[item]))
      except ValueError:
        raise DataError("timestamp is not a number", plain_path, lineno) from None
    seen, duplicates = set(), 0
    for user, t, _, item in sorted(events):  # by time; events of a user at the same time in file order
      if ct is not None and (user, item, t) in seen:  # the same (user, item, time) row again: one event
        duplicates += 1
        continue
      seen.add((user, item, t))
      sequences.setdefault(user, []).append(item)
    if duplicates:
      log.warning("%s: %d rows repeat an earlier (user, item, timestamp) row; each counted once", plain_path,
                  duplicates)
      skipped["duplicate_events"] = duplicates
  else:
    raise DataError(f"no interactions: expected {name}.test.inter or {name}.inter", directory)
  user_names = _read_index(user_path) if os.path.exists(user_path) else None
  users = sorted(sequences, key=lambda u: int(u) if u.isdigit() else u)
  user_ids = [user_names[int(u)] if user_names and u.isdigit() and int(u) < len(user_names) else u
              for u in users]
  data = CategoryData(name, Catalog(item_ids, _attributes(directory, name, item_ids)),
                      user_ids, [sequences[u] for u in users], skipped)
  validate(data, directory)
  return data
