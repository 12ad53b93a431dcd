"""Events -> chronological per-user sequences: dedup, title filter, k-core, minimum length."""
from __future__ import annotations

import collections

from calrec_jax.data.records import Catalog, CategoryData, validate


def kcore_filter(events: list[tuple[str, str, int, int]], k: int) -> list[tuple[str, str, int, int]]:
  """Repeatedly drop users and items with fewer than k events until every one left has >= k."""
  if k <= 1:
    return events
  while True:
    users = collections.Counter(e[0] for e in events)
    items = collections.Counter(e[1] for e in events)
    kept = [e for e in events if users[e[0]] >= k and items[e[1]] >= k]
    if len(kept) == len(events):
      return kept
    events = kept


def build_category(name: str, events: list[tuple[str, str, int, int]], meta: dict[str, dict[str, str]],
                   skipped: dict[str, int], kcore: int = 5, dedup: bool = True, min_sequence_length: int = 3,
                   require_title: bool = True, source: str = "") -> CategoryData:
  """events: (user, item, time, order) with `order` a deterministic tie-breaker (e.g. file line)."""
  n0 = len(events)
  if require_title:
    events = [e for e in events if meta.get(e[1], {}).get("title")]
    skipped["events_item_without_title_or_meta"] = n0 - len(events)
  else:
    events = [e for e in events if e[1] in meta]
    skipped["events_item_without_meta"] = n0 - len(events)
  events.sort(key=lambda e: (e[0], e[2], e[3]))
  if dedup:
    seen, kept = set(), []
    for e in events:
      if (e[0], e[1]) not in seen:
        seen.add((e[0], e[1]))
        kept.append(e)
    skipped["duplicate_user_item_events"] = len(events) - len(kept)
    events = kept
  n1 = len(events)
  events = kcore_filter(events, kcore)
  skipped["events_removed_by_kcore"] = n1 - len(events)

  by_user: dict[str, list[str]] = collections.defaultdict(list)
  for user, item, _, _ in events:  # already sorted by (user, time, order)
    by_user[user].append(item)
  short = [u for u, s in by_user.items() if len(s) < min_sequence_length]
  skipped["users_too_short"] = len(short)
  for u in short:
    del by_user[u]

  item_ids = sorted({i for seq in by_user.values() for i in seq})
  index = {asin: n for n, asin in enumerate(item_ids)}
  catalog = Catalog(item_ids, [dict(meta[a]) for a in item_ids])
  users = sorted(by_user)
  data = CategoryData(name, catalog, users, [[index[i] for i in by_user[u]] for u in users], skipped)
  validate(data, source)
  return data
