"""Item text and prompt rendering (calrec-method.md §1).

`render_item` is THE item text: the generation target, the BM25 document and the item-tower input all use it.
"""
from __future__ import annotations

import html
import re
from typing import Mapping, Sequence

DEFAULT_ATTRIBUTES = ("title", "category", "brand", "price")
ALL_ATTRIBUTES = "all"  # data.attributes='all': every attribute of the catalog that passes the coverage
MISSING = "Unknown"

PROMPT_HEADER = "This is a summary of the user's purchase history."
FIRST_ITEM = "The first purchased item is as follows:"
NEXT_ITEM = "The next purchased item is as follows:"

_WS = re.compile(r"\s+")
_HIDDEN = re.compile(r"<(script|style)\b[^>]{0,200}>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff\ufffd]")


def visible_text(text: str) -> str:
  """A generated text as a reader sees it: control, zero-width and replacement characters (a weakly trained
  model's byte tokens) become spaces, whitespace runs one space."""
  return _WS.sub(" ", _CONTROL.sub(" ", text)).strip()


def clean_value(value) -> str:
  """Decode HTML entities (twice: Amazon has `&amp;quot;`), drop tags, collapse whitespace."""
  if value is None:
    return ""
  if isinstance(value, (list, tuple)):
    value = value[-1] if value else ""
  text = html.unescape(html.unescape(str(value)))
  text = _HIDDEN.sub(" ", text)  # a script's or style's body is code, not text
  text = re.sub(r"<[^>]{0,200}>", " ", text)
  return _WS.sub(" ", text).strip()


def render_item(attributes: Mapping[str, str], attribute_names: Sequence[str] = DEFAULT_ATTRIBUTES) -> str:
  """`Title: <t>, Category: <c>, Brand: <b>, Price: <p>.`; a missing or empty value is `Unknown`."""
  parts = []
  for name in attribute_names:
    value = clean_value(attributes.get(name))
    parts.append(f"{name.replace('_', ' ').capitalize()}: {value or MISSING}")
  return ", ".join(parts) + "."


def wanted_attributes(items: Sequence[Mapping[str, str]], wanted: Sequence[str]) -> tuple[str, ...]:
  """`wanted`, where `data.attributes='all'` stands for every attribute the items have: the title first, then
  the others in the order they first appear (a RecBole `.item` file: its column order)."""
  if tuple(wanted) != (ALL_ATTRIBUTES,):
    return tuple(wanted)
  names = dict.fromkeys(k for a in items for k in a)
  return (("title",) if "title" in names else ()) + tuple(k for k in names if k != "title")


def rendered_attributes(items: Sequence[Mapping[str, str]], wanted: Sequence[str] = DEFAULT_ATTRIBUTES,
                        min_coverage: float = 0.05) -> tuple[str, ...]:
  """The attributes of `wanted` (see `wanted_attributes`) that at least `min_coverage` of a category's items have
  (in `wanted`'s order).

  An attribute missing for (nearly) every item would render as a constant `Unknown` in every text, which the
  model then spends its generations on; 0 keeps every wanted attribute. The title is always kept.
  """
  n = max(len(items), 1)
  keep = []
  for name in wanted_attributes(items, wanted):
    known = sum(1 for a in items if clean_value(a.get(name)))
    if name == "title" or known / n >= min_coverage:
      keep.append(name)
  return tuple(keep)


def render_prompt(history_texts: Sequence[str]) -> str:
  """The history prompt, ending where the target item's text begins (oldest item first)."""
  lines = [PROMPT_HEADER]
  for i, text in enumerate(history_texts):
    lines.append(FIRST_ITEM if i == 0 else NEXT_ITEM)
    lines.append(text)
  lines.append(NEXT_ITEM if history_texts else FIRST_ITEM)
  return "\n".join(lines) + "\n"
