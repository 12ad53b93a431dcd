"""Batch iterators: the stage-1/2 training mixture (resumable, per-host) and ordered evaluation batches."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from calrec_jax.data.cold_start import held_out_is_new
from calrec_jax.data.examples import ExampleEncoder
from calrec_jax.data.records import sequence_lengths, split_examples, split_positions


def mixture_probabilities(num_users: Sequence[int], alpha: float) -> np.ndarray:
  """p(category) proportional to n_users ** alpha (alpha=0: uniform, alpha=1: proportional)."""
  w = np.asarray(num_users, np.float64) ** alpha
  return w / w.sum()


class MixtureIterator:
  """Training batches drawn across categories with p(c) ∝ n_users(c)^alpha.

  Within a category, examples (every training prefix of every user) are visited in a fresh random order each
  epoch. Batch `s` depends only on (seed, s, how many examples each category has given so far), so the state
  {'step', 'drawn'} restores the exact stream. Every host computes the same global choice and encodes only its
  own rows [process_index * B/P, (process_index + 1) * B/P).
  """

  def __init__(self, encoder: ExampleEncoder, global_batch: int, alpha: float = 0.3, seed: int = 0,
               process_index: int = 0, process_count: int = 1, split: str = "train"):
    if global_batch % process_count:
      raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
    self.encoder, self.global_batch, self.seed = encoder, global_batch, seed
    self.process_index, self.process_count = process_index, process_count
    cats = encoder.categories
    self.examples = [self._rows(c, split) for c in cats]
    empty = [c.name for c, e in zip(cats, self.examples) if len(e) == 0]
    if empty:
      raise ValueError(f"categories with no {split} examples: {empty}")
    self.probs = mixture_probabilities([len(c.sequences) for c in cats], alpha)
    self.step = 0
    self.drawn = [0] * len(cats)
    self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

  def _rows(self, category, split: str) -> np.ndarray:
    """The category's training rows, one per draw: (user, target position)."""
    return split_positions(sequence_lengths(category.sequences), split)  # [N, 2] (user, target position)

  def _encode(self, choice: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    encoded = []
    for c, row in choice:
      user, t = self.examples[c][row]
      seq = self.encoder.categories[c].sequences[user]
      encoded.append(self.encoder.encode(c, seq[:t], seq[t]))
    return self.encoder.collate(encoded)

  def get_state(self) -> dict:
    return {"step": self.step, "drawn": list(self.drawn)}

  def set_state(self, state: dict) -> None:
    if len(state["drawn"]) != len(self.drawn):
      raise ValueError(f"iterator state has {len(state['drawn'])} categories, the data has {len(self.drawn)}")
    self.step, self.drawn = int(state["step"]), [int(x) for x in state["drawn"]]

  def _permutation(self, cat: int, epoch: int) -> np.ndarray:
    key = (cat, epoch)
    if key not in self._perm_cache:
      if len(self._perm_cache) > 4 * len(self.drawn):
        self._perm_cache.clear()
      rng = np.random.default_rng([self.seed, 1, cat, epoch])
      self._perm_cache[key] = rng.permutation(len(self.examples[cat]))
    return self._perm_cache[key]

  def next_global_choice(self) -> list[tuple[int, int]]:
    """(category, example row) for every row of the next global batch; advances the state."""
    rng = np.random.default_rng([self.seed, 0, self.step])
    cats = rng.choice(len(self.probs), size=self.global_batch, p=self.probs)
    choice = []
    for c in cats:
      n = len(self.examples[c])
      k = self.drawn[c]
      choice.append((int(c), int(self._permutation(int(c), k // n)[k % n])))
      self.drawn[c] += 1
    self.step += 1
    return choice

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    choice = self.next_global_choice()
    per_host = self.global_batch // self.process_count
    return self._encode(choice[self.process_index * per_host:(self.process_index + 1) * per_host])


class PackedMixtureIterator(MixtureIterator):
  """The same mixture over packed units (data/packed.py): a draw is one unit of a user's window, all of whose next
  items are trained in one pass, and a batch is `global_batch` ROWS, each filled with units in draw order until
  the next one does not fit (that draw is left for a later batch). The state {'step', 'drawn'} counts units, so it
  restores the exact stream; every host computes the same rows and collates its own."""

  def __init__(self, packed, global_batch: int, alpha: float = 0.3, seed: int = 0, process_index: int = 0,
               process_count: int = 1, hidden=None):
    self.packed = packed
    self.hidden = hidden  # a frozen-layer cache whose lower-block outputs the batches carry (PackedEncoder.collate)
    super().__init__(packed.enc, global_batch, alpha, seed, process_index, process_count, "train")

  def _rows(self, category, split: str) -> np.ndarray:
    from calrec_jax.data.packed import training_units
    return training_units(category.sequences, self.packed.spec)  # [N, 3] (user, first slot, end)

  def next_global_rows(self) -> list[list[dict]]:
    """The next global batch's rows of rendered units; advances the state."""
    rng = np.random.default_rng([self.seed, 0, self.step])
    rows: list[list[dict]] = []
    while True:
      c = int(rng.choice(len(self.probs), p=self.probs))
      n, k = len(self.examples[c]), self.drawn[c]
      user, first, end = (int(x) for x in self.examples[c][self._permutation(c, k // n)[k % n]])
      unit = self.packed.encode_unit(c, user, first, end)
      if rows and self.packed.fits(rows[-1], unit):
        rows[-1].append(unit)
      elif len(rows) == self.global_batch:
        break
      else:
        rows.append([unit])
      self.drawn[c] += 1
    self.step += 1
    return rows

  def __next__(self) -> dict[str, np.ndarray]:
    rows = self.next_global_rows()
    per_host = self.global_batch // self.process_count
    return self.packed.collate(rows[self.process_index * per_host:(self.process_index + 1) * per_host],
                               hidden=self.hidden)


def eval_rows(sequences: list[list[int]], split: str, max_users: int = 0, seed: int = 0,
              new_items: frozenset[int] = frozenset()) -> list[tuple[int, list[int], int]]:
  """(user, history, target) of the valid/test split; a fixed random subset when max_users > 0; with `new_items`
  (a cold-start split, data/cold_start.py) only the users whose target is one of them.

  Every method of a comparison calls this with the same arguments, so all are evaluated on the same users."""
  rows = held_out_is_new(split_examples(sequences, split), sequences, new_items)
  if max_users and max_users < len(rows):
    pick = np.sort(np.random.default_rng(seed).choice(len(rows), size=max_users, replace=False))
    rows = [rows[i] for i in pick]
  return [(u, sequences[u][:t], sequences[u][t]) for u, t in rows]


def eval_examples(encoder: ExampleEncoder, category: int, split: str, max_users: int = 0,
                  seed: int = 0) -> list[tuple[int, list[int], int]]:
  """`eval_rows` of one of the encoder's categories."""
  cat = encoder.categories[category]
  return eval_rows(cat.sequences, split, max_users, seed, cat.new_items)


def eval_batches(encoder: ExampleEncoder, category: int, rows: list[tuple[int, list[int], int]],
                 batch_size: int) -> Iterator[tuple[dict[str, np.ndarray], list[int]]]:
  """Fixed-size batches in order; the last is padded with zero-weight rows. Yields (batch, user ids)."""
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    batch = encoder.collate([encoder.encode(category, h, t) for _, h, t in chunk], batch_size)
    yield batch, [u for u, _, _ in chunk]
