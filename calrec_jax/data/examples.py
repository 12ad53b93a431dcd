"""Tokenized two-tower examples with fixed shapes (calrec-method.md §1-2).

Joint tower:  [BOS] header (first|next item text \\n)* next-connector | target tokens EOS | pad
Item tower:   [BOS] target tokens EOS | pad
Lengths are bucketed so that jit compiles once per bucket, not per batch.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np

from calrec_jax.data.records import CategoryData
from calrec_jax.data.text import (FIRST_ITEM, NEXT_ITEM, PROMPT_HEADER, clean_value, render_item, rendered_attributes,
                                  wanted_attributes)
from calrec_jax.data.tokenizer import Tokenizer
from calrec_jax.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ExampleSpec:
  max_len: int = 256            # joint tower length (prompt + target), tokens
  max_history: int = 20         # most recent history items kept before length truncation
  max_item_tokens: int = 48     # an item text is cut to this many tokens
  length_buckets: tuple[int, ...] = (64, 128, 256)  # joint lengths jit compiles for (last == max_len)
  attributes: tuple[str, ...] = ("title", "category", "brand", "price")
  min_attribute_coverage: float = 0.05  # an attribute known for fewer of a category's items is not rendered
  user_tokens: int = 0          # v_U averages the prompt's last N tokens (0: every prompt token but BOS)

  @property
  def target_len(self) -> int:  # item tokens + EOS
    return self.max_item_tokens + 1

  @property
  def item_len(self) -> int:  # BOS + item tokens + EOS
    return self.max_item_tokens + 2


def require_item_texts(category: CategoryData, kept: Sequence[str], wanted: Sequence[str]) -> None:
  """DataError when no item of `category` has a value for any rendered attribute: every item text would read
  `Title: Unknown.`, so generation, BM25 and the constrained beams could not tell one item from another."""
  if any(clean_value(a.get(name)) for a in category.catalog.attributes for name in kept):
    return  # stops at the first item with a value
  present = sorted({k for a in category.catalog.attributes for k, v in a.items() if clean_value(v)})[:12]
  raise DataError(f"{category.name}: none of its {len(category.catalog)} items has a value for data.attributes="
                  f"{','.join(wanted)!r}, so every item text would be empty; set data.attributes to attributes the "
                  f"items have ({', '.join(present) or 'none: the catalog holds no item attributes'})")


def user_span(prompt_len: int, user_tokens: int) -> tuple[int, int]:
  """[lo, hi) of the prompt positions v_U averages: the last `user_tokens` of a prompt of `prompt_len` tokens
  (0: all but BOS, the paper's mean over the history). Causal attention lets each of them see the whole history,
  so a short span weighs the most recent items most (1: the last token's state, as decoder embedders pool)."""
  lo = 1 if user_tokens <= 0 else max(1, prompt_len - user_tokens)
  return lo, prompt_len


class ExampleEncoder:
  """Turns (category, history item indices, target item index) into arrays; caches item tokens."""

  def __init__(self, tokenizer: Tokenizer, categories: Sequence[CategoryData], spec: ExampleSpec):
    self.tok, self.spec = tokenizer, spec
    self.categories = list(categories)
    buckets = tuple(sorted(b for b in spec.length_buckets if b < spec.max_len)) + (spec.max_len,)
    self.buckets = buckets
    # per category: the wanted attributes that its items have (THE item text of target, BM25 and item tower)
    self.attributes = [rendered_attributes(c.catalog.attributes, spec.attributes, spec.min_attribute_coverage)
                       for c in self.categories]
    for c, kept in zip(self.categories, self.attributes):
      require_item_texts(c, kept, spec.attributes)
      wanted = wanted_attributes(c.catalog.attributes, spec.attributes)
      log.info("%s: item texts render %s%s%s", c.name, ", ".join(kept), _listed(
          "; dropped (on fewer than data.min_attribute_coverage of the items)",
          [a for a in wanted if a not in kept]), _listed(
          "; not rendered (add them to data.attributes, or set data.attributes=all, to use them)",
          sorted({k for a in c.catalog.attributes for k in a} - set(wanted))))
    self.item_offsets = np.cumsum([0] + [len(c.catalog) for c in self.categories])
    self.header = [tokenizer.bos_id] + tokenizer.encode(PROMPT_HEADER + "\n")
    self.first = tokenizer.encode(FIRST_ITEM + "\n")
    self.next = tokenizer.encode(NEXT_ITEM + "\n")
    self.newline = tokenizer.encode("\n")
    self._items: list[list[list[int] | None]] = [[None] * len(c.catalog) for c in self.categories]
    longest = max(len(self.first), len(self.next))
    need = len(self.header) + 2 * (longest + spec.max_item_tokens + len(self.newline)) + 1
    if spec.max_len < need:
      raise ConfigError(f"data.max_len={spec.max_len} cannot hold one history item and the target "
                        f"({need} tokens with data.max_item_tokens={spec.max_item_tokens}); raise data.max_len")

  def item_text(self, category: int, item: int) -> str:
    return render_item(self.categories[category].catalog.attributes[item], self.attributes[category])

  def global_item_ids(self, category: int) -> np.ndarray:
    """[I] global ids of `category`'s items: their rows in the item bank and the learned item tables."""
    return self.item_offsets[category] + np.arange(len(self.categories[category].catalog))

  def item_tokens(self, category: int, item: int) -> list[int]:
    cached = self._items[category][item]
    if cached is None:
      cached = self.tok.encode(self.item_text(category, item))[: self.spec.max_item_tokens]
      self._items[category][item] = cached
    return cached

  def prompt_tokens(self, category: int, history: Sequence[int]) -> tuple[list[int], int]:
    """Prompt ids for the most recent history that fits with a full-length target; and items kept."""
    hist = list(history)[-self.spec.max_history:]
    budget = self.spec.max_len - self.spec.target_len
    while True:
      ids = list(self.header)
      for k, item in enumerate(hist):
        ids += (self.first if k == 0 else self.next) + self.item_tokens(category, item) + self.newline
      ids += self.next if hist else self.first
      if len(ids) <= budget or len(hist) <= 1:
        return ids, len(hist)
      hist = hist[1:]  # drop the oldest item

  def encode(self, category: int, history: Sequence[int], target: int) -> dict[str, np.ndarray]:
    """Variable-length arrays of one example (see `collate` for the batch layout)."""
    prompt, kept = self.prompt_tokens(category, history)
    target_ids = self.item_tokens(category, target) + [self.tok.eos_id]
    return {"prompt": np.asarray(prompt, np.int32), "target": np.asarray(target_ids, np.int32),
            "target_id": np.int32(self.item_offsets[category] + target), "history_kept": kept}

  def bucket(self, length: int) -> int:
    for b in self.buckets:
      if length <= b:
        return b
    raise ValueError(f"example of {length} tokens exceeds data.max_len={self.spec.max_len}")

  def collate(self, examples: Sequence[dict], batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Stack examples into fixed-shape arrays; rows past len(examples) are padding (weight 0).

    tokens/positions/input_mask/history_mask/target_mask: [B, T]; lm_positions/lm_labels/lm_weights: [B, Lt];
    item_tokens/item_positions/item_mask/item_text_mask: [B, Li]; target_id, example_weight: [B].
    """
    spec, pad = self.spec, self.tok.pad_id
    b = batch_size or len(examples)
    t = self.bucket(max(len(e["prompt"]) + len(e["target"]) for e in examples))
    lt, li = spec.target_len, spec.item_len
    out = {
        "tokens": np.full((b, t), pad, np.int32), "input_mask": np.zeros((b, t), bool),
        "history_mask": np.zeros((b, t), bool), "target_mask": np.zeros((b, t), bool),
        "lm_positions": np.zeros((b, lt), np.int32), "lm_labels": np.full((b, lt), pad, np.int32),
        "lm_weights": np.zeros((b, lt), np.float32),
        "item_tokens": np.full((b, li), pad, np.int32), "item_mask": np.zeros((b, li), bool),
        "item_text_mask": np.zeros((b, li), bool),
        "target_id": np.full((b,), -1, np.int32), "example_weight": np.zeros((b,), np.float32),
    }
    for r, e in enumerate(examples):
      p, g = e["prompt"], e["target"]
      n_p, n_g = len(p), len(g)
      out["tokens"][r, :n_p] = p
      out["tokens"][r, n_p:n_p + n_g] = g
      out["input_mask"][r, :n_p + n_g] = True
      lo, hi = user_span(n_p, spec.user_tokens)
      out["history_mask"][r, lo:hi] = True          # the prompt without BOS (or its last data.user_tokens)
      out["target_mask"][r, n_p:n_p + n_g - 1] = True  # the target item text without EOS
      out["lm_positions"][r, :n_g] = np.arange(n_p - 1, n_p + n_g - 1)  # hidden state that predicts g[j]
      out["lm_labels"][r, :n_g] = g
      out["lm_weights"][r, :n_g] = 1.0
      item = np.concatenate([[self.tok.bos_id], g])
      out["item_tokens"][r, :len(item)] = item
      out["item_mask"][r, :len(item)] = True
      out["item_text_mask"][r, 1:len(item) - 1] = True
      out["target_id"][r] = e["target_id"]
      out["example_weight"][r] = 1.0
    out["positions"] = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()
    out["item_positions"] = np.broadcast_to(np.arange(li, dtype=np.int32), (b, li)).copy()
    return out


  def collate_prompts(self, prompts: Sequence[Sequence[int]], batch_size: int | None = None
                      ) -> dict[str, np.ndarray]:
    """The user tower's inputs alone: prompts (`prompt_tokens`) without a target, in the smallest length bucket
    that holds them. tokens/positions/input_mask/history_mask: [B, T]; example_weight: [B]. Causal attention makes
    the hidden states over a prompt, and so v_U, the same as in `collate`, where the target follows the prompt."""
    b = batch_size or len(prompts)
    t = self.bucket(max((len(p) for p in prompts), default=1))
    out = {"tokens": np.full((b, t), self.tok.pad_id, np.int32), "input_mask": np.zeros((b, t), bool),
           "history_mask": np.zeros((b, t), bool), "example_weight": np.zeros((b,), np.float32)}
    for r, p in enumerate(prompts):
      out["tokens"][r, :len(p)] = p
      out["input_mask"][r, :len(p)] = True
      lo, hi = user_span(len(p), self.spec.user_tokens)
      out["history_mask"][r, lo:hi] = True  # the prompt without BOS (or its last data.user_tokens)
      out["example_weight"][r] = 1.0
    out["positions"] = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()
    return out


def catalog_vocabulary(encoder: ExampleEncoder) -> tuple[int, ...]:
  """Sorted token ids of every item text of the encoder's categories (cut to data.max_item_tokens) and EOS:
  every L_NIG label, the vocabulary of `loss.lm_vocab=catalog`. Linear in the catalog's size."""
  ids = {encoder.tok.eos_id}
  for c, cat in enumerate(encoder.categories):
    for i in range(len(cat.catalog)):
      ids.update(encoder.item_tokens(c, i))
  return tuple(sorted(int(i) for i in ids))


def _listed(prefix: str, names: Sequence[str]) -> str:
  return f"{prefix}: {', '.join(names)}" if names else ""
