"""Several trained runs ranked as one: each run's dense scores (v_U . v_T, its item bias included) beside the
model-free signals, as fusion signals (eval/fusion.py) whose weights are chosen on the validation split only.

Members may differ in anything that leaves their catalogs the same items: model family and size, tokenizer,
recipe, seed. Each member ranks the catalog in its own item order; its columns are put in the order of the
evaluated catalog's item ids, and a member that lacks one of those items is one clear error.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from calrec_jax.errors import DataError


def member_order(member_ids: Sequence[str], item_ids: Sequence[str], member: str) -> np.ndarray:
  """[I] the member's index of each of `item_ids` (the evaluated catalog's order)."""
  at = {item_id: i for i, item_id in enumerate(member_ids)}
  missing = [item_id for item_id in item_ids if item_id not in at]
  if missing:
    raise DataError(f"ensemble member {member!r} was trained on another catalog: {len(missing)} of the "
                    f"{len(item_ids)} evaluated items are not in it (e.g. {missing[0]!r}); ensemble runs trained on "
                    "the same data")
  return np.asarray([at[item_id] for item_id in item_ids], np.int64)


def dense_scores(recommender, item_ids: Sequence[str], histories: Sequence[Sequence[int]], member: str = ""
                 ) -> np.ndarray:
  """[U, I] a trained run's (eval/recommender.Recommender) dense scores for `histories` (item indices into
  `item_ids`), columns in `item_ids`' order."""
  own = recommender.parts.categories[recommender.category].catalog.item_ids
  order = member_order(own, item_ids, member or recommender.workdir)
  mapped = [[int(order[i]) for i in h] for h in histories]
  return np.asarray(recommender.scores(mapped, "dense"), np.float32)[:, order]


def member_signals(members: dict, item_ids: Sequence[str], histories: Sequence[Sequence[int]]
                   ) -> dict[str, np.ndarray]:
  """{'dense:<member>': standardised [U, I]} of each member (name -> Recommender)."""
  from calrec_jax.eval.fusion import standardise
  return {f"dense:{name}": standardise(dense_scores(rec, item_ids, histories, name)) for name, rec in members.items()}
