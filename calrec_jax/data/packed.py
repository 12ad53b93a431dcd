"""Packed user sequences: every next item of a user's window trained from ONE causal pass (calrec-method.md §4).

A training unit is a window of a user's training items, rendered once with the paper's prompt:

  [BOS] header  first-connector item_1 \\n  next-connector item_2 \\n ... next-connector item_n \\n

Each item after the first is a target ("slot"). Causal attention makes the hidden states up to a slot's start
identical to those of the per-prefix example (history -> that item), so from one pass come, per slot:
  L_NIG labels  the slot's item tokens + EOS, predicted from the positions before them (the EOS label sits on
                the item's last token; the input there continues with the newline, which no earlier state sees);
  v_U           the mean over the prompt so far without BOS (history_mask[slot]: [1, start)), or over its last
                data.user_tokens tokens (examples.user_span);
  v_T|U         the mean over the slot's item tokens (target_mask[slot]).
On windows that fit `max_len` these equal the per-prefix examples' values exactly (tests/test_packed.py).

Several units share a row of `max_len` tokens (positions restart and attention stays inside each unit, by
segment ids), and their targets' texts share an item-tower row of `item_len` tokens the same way, so little of
either tower's compute goes to padding.

Units of a user with m training items: windows ending at e = m, m - S, m - 2S, ... (S = window - context); a
unit renders items [max(0, e - window), e) and its slots are the items [max(1, e - S), e), so every training
target is a slot of exactly one unit and sees at least `context` items of history (all it has, if fewer).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from calrec_jax.data.examples import ExampleEncoder, user_span
from calrec_jax.data.records import CategoryData, sequence_lengths
from calrec_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class PackSpec:
  window: int = 6              # items rendered per unit (slots: window - 1 at most)
  context: int = 2             # history items every slot of a later window of a long user sees at least
  max_len: int = 384           # tokens of a packed row; a unit's oldest items are dropped until it fits alone
  slots: int = 12              # targets of one row (all its units together)
  item_len: int = 384          # item-tower tokens of one row: its targets' texts, packed the same way

  def __post_init__(self):
    if self.window < 2:
      raise ConfigError(f"data.pack_window={self.window}: a unit needs at least 2 items (1 history + 1 target)")
    if not 1 <= self.context < self.window:
      raise ConfigError(f"data.pack_context={self.context} must be in [1, data.pack_window - 1 = "
                        f"{self.window - 1}]")
    if self.slots < self.window - 1:
      raise ConfigError(f"data.pack_slots={self.slots} must be >= data.pack_window - 1 = {self.window - 1}")

  @property
  def stride(self) -> int:
    return self.window - self.context


def training_units(sequences: Sequence[Sequence[int]], spec: PackSpec) -> np.ndarray:
  """[N, 3] int64 rows (user, first slot position, end position) covering every training target once: a user's
  training part (all but the last two items) is cut from its end in windows of `spec.stride` targets."""
  m = sequence_lengths(sequences) - 2                  # the training part: the last two items are valid and test
  users = np.flatnonzero(m >= 2)
  m = m[users]
  units = -(-(m - 1) // spec.stride)                   # ceil((m - 1) / stride) windows per user
  j = np.arange(units.sum()) - np.repeat(np.cumsum(units) - units, units)
  end = np.repeat(m, units) - j * spec.stride
  return np.stack([np.repeat(users, units), np.maximum(1, end - spec.stride), end], 1).astype(np.int64)


class PackedEncoder:
  """Renders units into fixed-shape packed batches; shares item tokens and prompt pieces with `ExampleEncoder`."""

  def __init__(self, encoder: ExampleEncoder, spec: PackSpec):
    self.enc, self.spec = encoder, spec
    self.check_item_budget()
    need = len(encoder.header) + 2 * (max(len(encoder.first), len(encoder.next)) + encoder.spec.max_item_tokens
                                      + len(encoder.newline))
    if spec.max_len < need:
      raise ConfigError(f"data.pack_max_len={spec.max_len} cannot hold two items ({need} tokens with "
                        f"data.max_item_tokens={encoder.spec.max_item_tokens}); raise data.pack_max_len")
    self.dropped_targets = 0  # drawn slots lost because their window did not fit pack_max_len (the trainer warns)

  @property
  def categories(self) -> list[CategoryData]:
    return self.enc.categories

  def render(self, category: int, items: Sequence[int], first_slot: int) -> dict:
    """Token ids of a window and, per slot (items[k] for k >= first_slot), its start and end token positions."""
    enc = self.enc
    items = list(items)
    while True:
      ids = list(enc.header)
      spans = []
      for k, item in enumerate(items):
        ids += enc.first if k == 0 else enc.next
        start = len(ids)
        ids += enc.item_tokens(category, item)
        spans.append((start, len(ids)))
        ids += enc.newline
      if len(ids) <= self.spec.max_len or len(items) <= 2:
        break
      if first_slot <= 1:  # the item that becomes the first was a slot: its target is lost
        self.dropped_targets += 1
      items, first_slot = items[1:], max(first_slot - 1, 1)  # drop the oldest item; the first is never a slot
    slots = [(items[k], spans[k][0], spans[k][1]) for k in range(first_slot, len(items))]
    return {"ids": ids, "slots": slots}

  def encode_unit(self, category: int, user: int, first: int, end: int) -> dict:
    seq = self.enc.categories[category].sequences[user]
    lo = max(0, end - self.spec.window)
    return dict(self.render(category, seq[lo:end], first - lo), category=category, key=(category, user, first, end))

  def check_item_budget(self) -> None:
    need = (self.spec.window - 1) * self.enc.spec.item_len
    if self.spec.item_len < need:
      raise ConfigError(f"data.pack_item_len={self.spec.item_len} cannot hold one unit's targets ({need} tokens: "
                        f"data.pack_window - 1 = {self.spec.window - 1} items of up to {self.enc.spec.item_len}); "
                        "raise data.pack_item_len")

  def fits(self, row: list[dict], unit: dict) -> bool:
    """Whether `unit` can join a row already holding `row` (tokens, slots and item-tower tokens all fit)."""
    tokens = sum(len(u["ids"]) for u in row) + len(unit["ids"])
    slots = sum(len(u["slots"]) for u in row) + len(unit["slots"])
    items = sum(self._item_tokens(u) for u in row) + self._item_tokens(unit)
    return tokens <= self.spec.max_len and slots <= self.spec.slots and items <= self.spec.item_len

  @staticmethod
  def _item_tokens(unit: dict) -> int:
    return sum(stop - start + 2 for _, start, stop in unit["slots"])  # BOS + text + EOS

  def pack(self, units: list[dict]) -> list[list[dict]]:
    """Units in order into rows, a new row whenever the next unit does not fit the current one."""
    rows: list[list[dict]] = []
    for unit in units:
      if rows and self.fits(rows[-1], unit):
        rows[-1].append(unit)
      else:
        rows.append([unit])
    return rows

  def collate(self, rows: Sequence[Sequence[dict]], batch_size: int | None = None, hidden=None
              ) -> dict[str, np.ndarray]:
    """Fixed-shape packed batch of rows of units; rows past len(rows) and unused slots are padding (weight 0).

    Joint tower: tokens/positions/input_mask/segment_ids [B, T] (positions restart and attention stays inside each
    unit: segment_ids 1, 2, ... per unit, 0 padding). Item tower: item_tokens/item_positions/item_mask/
    item_segment_ids [B, Ti], every slot's target text packed the same way. Per slot: history_mask/target_mask
    [B, K, T], item_text_mask [B, K, Ti], lm_positions/lm_labels/lm_weights [B, K, Lt], target_id/slot_weight
    [B, K]. example_weight: [B] (1 for a real row). K = pack_slots, T = pack_max_len, Ti = pack_item_len.

    `hidden` (a frozen-layer cache: `.unit(unit) -> [n, D]`, `.item(category, item) -> [m, D]`, `.d_model`,
    `.dtype`) adds joint_hidden [B, T, D] and item_hidden [B, Ti, D]: the lower blocks' outputs of every token.
    """
    enc, spec = self.enc, self.spec
    b, k, ti = batch_size or len(rows), spec.slots, spec.item_len
    t = spec.max_len
    lt = enc.spec.target_len
    pad, eos, bos = enc.tok.pad_id, enc.tok.eos_id, enc.tok.bos_id
    out = {
        "tokens": np.full((b, t), pad, np.int32), "positions": np.zeros((b, t), np.int32),
        "input_mask": np.zeros((b, t), bool), "segment_ids": np.zeros((b, t), np.int32),
        "history_mask": np.zeros((b, k, t), bool), "target_mask": np.zeros((b, k, t), bool),
        "lm_positions": np.zeros((b, k, lt), np.int32), "lm_labels": np.full((b, k, lt), pad, np.int32),
        "lm_weights": np.zeros((b, k, lt), np.float32),
        "item_tokens": np.full((b, ti), pad, np.int32), "item_positions": np.zeros((b, ti), np.int32),
        "item_mask": np.zeros((b, ti), bool), "item_segment_ids": np.zeros((b, ti), np.int32),
        "item_text_mask": np.zeros((b, k, ti), bool),
        "target_id": np.full((b, k), -1, np.int32), "slot_weight": np.zeros((b, k), np.float32),
        "example_weight": np.zeros((b,), np.float32),
    }
    if hidden is not None:
      out["joint_hidden"] = np.zeros((b, t, hidden.d_model), hidden.dtype)
      out["item_hidden"] = np.zeros((b, ti, hidden.d_model), hidden.dtype)
    for r, row in enumerate(rows):
      at, item_at, j = 0, 0, 0
      out["example_weight"][r] = 1.0
      for seg, unit in enumerate(row, start=1):
        ids, n = unit["ids"], len(unit["ids"])
        out["tokens"][r, at:at + n] = ids
        out["positions"][r, at:at + n] = np.arange(n)
        out["input_mask"][r, at:at + n] = True
        out["segment_ids"][r, at:at + n] = seg
        if hidden is not None:
          out["joint_hidden"][r, at:at + n] = hidden.unit(unit)
        offset = enc.item_offsets[unit["category"]]
        for item, start, stop in unit["slots"]:
          target = ids[start:stop] + [eos]
          n_g = len(target)
          lo, hi = user_span(start, enc.spec.user_tokens)
          out["history_mask"][r, j, at + lo:at + hi] = True  # the unit's prompt so far without BOS (or its end)
          out["target_mask"][r, j, at + start:at + stop] = True
          out["lm_positions"][r, j, :n_g] = np.arange(at + start - 1, at + start - 1 + n_g)
          out["lm_labels"][r, j, :n_g] = target
          out["lm_weights"][r, j, :n_g] = 1.0
          text = [bos] + target
          m = len(text)
          out["item_tokens"][r, item_at:item_at + m] = text
          out["item_positions"][r, item_at:item_at + m] = np.arange(m)
          out["item_mask"][r, item_at:item_at + m] = True
          out["item_segment_ids"][r, item_at:item_at + m] = j + 1
          if hidden is not None:
            out["item_hidden"][r, item_at:item_at + m] = hidden.item(unit["category"], item)
          out["item_text_mask"][r, j, item_at + 1:item_at + m - 1] = True
          out["target_id"][r, j] = offset + item
          out["slot_weight"][r, j] = 1.0
          item_at += m
          j += 1
        at += n
    return out
