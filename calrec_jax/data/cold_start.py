"""A cold-start split: items that training never sees, and the users whose held-out item is one of them.

With `data.cold_start_items = f > 0`, a fixed random fraction f of the evaluated category's items (seeded by
`data.cold_start_seed`) are new items. Each user's training part (every item before the last two) loses them, so
no training example has a new item as its target or in its history, popularity counts none of them and the item
bank never uses them as negatives (`CategoryData.new_items`). The validation and test items stay where they are,
and evaluation ranks the full catalog (new items included) for only the users whose held-out item is new.
A text model can score a new item from its text; an ID model has never trained its embedding as a positive.
Users left without a training item are dropped (counted in `skipped`). The RecBole files of Amazon
Scientific and Office carry no timestamps, so the new items are a random subset, not the most recent ones.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from calrec_jax.data.records import CategoryData, validate
from calrec_jax.errors import ConfigError


def pick_new_items(num_items: int, fraction: float, seed: int) -> frozenset[int]:
  """round(fraction * num_items) item indices, a fixed random choice for (num_items, fraction, seed)."""
  if not 0 < fraction < 1:
    raise ConfigError(f"data.cold_start_items={fraction} must be in (0, 1): the fraction of items held out as new")
  count = max(1, round(fraction * num_items))
  return frozenset(int(i) for i in np.random.default_rng(seed).choice(num_items, size=count, replace=False))


def cold_start_split(data: CategoryData, new_items: frozenset[int]) -> CategoryData:
  """`data` with `new_items` removed from every user's training part (the last two items kept)."""
  sequences, users, dropped = [], [], 0
  for user, seq in zip(data.user_ids, data.sequences):
    kept = [i for i in seq[:-2] if i not in new_items] + seq[-2:]
    if len(kept) < 3:
      dropped += 1
      continue
    sequences.append(kept)
    users.append(user)
  skipped = dict(data.skipped, cold_start_users_without_old_items=dropped)
  out = dataclasses.replace(data, user_ids=users, sequences=sequences, skipped=skipped, new_items=new_items)
  validate(out, f"{data.name} (cold-start split)")
  return out


def apply_cold_start(categories: list[CategoryData], data_config) -> list[CategoryData]:
  """The categories with the evaluated one (data.eval_category, else the first) split for cold start when
  data.cold_start_items > 0; unchanged otherwise."""
  fraction = float(data_config.get("cold_start_items", 0.0))
  if not fraction:
    return categories
  name = data_config.eval_category or categories[0].name
  out = []
  for cat in categories:
    if cat.name == name:
      cat = cold_start_split(cat, pick_new_items(len(cat.catalog), fraction, int(data_config.cold_start_seed)))
    out.append(cat)
  return out


def held_out_is_new(rows: list[tuple[int, int]], sequences: list[list[int]], new_items: frozenset[int]
                    ) -> list[tuple[int, int]]:
  """The (user, target position) rows whose target is a new item (all rows when there are no new items)."""
  if not new_items:
    return rows
  return [(u, t) for u, t in rows if sequences[u][t] in new_items]
