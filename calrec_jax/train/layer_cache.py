"""Frozen lower blocks run once: their outputs for every training unit and catalog item (`model.cache_frozen_layers`).

With LoRA adapters on the top N blocks only (`model.lora_layers=N`), the blocks below them and the embedding never
change, so the residual stream entering the lowest adapted block is a fixed function of the tokens. Packed units
(data/packed.py) restart their positions and attend only inside themselves, so that stream depends on the unit's
own tokens alone, whatever row it shares. This cache computes it once for every training unit of every category
and for every catalog item's item-tower text, stores it in the workdir as memory-mapped arrays in the compute
dtype, and the packed batches carry it (`joint_hidden`, `item_hidden`): the step runs only the top N blocks, and
the item bank's refreshes likewise. Losses and gradients equal the uncached step's (tests/test_layer_cache.py).

Files in <workdir>/frozen_layer_cache/: units.bin [U tokens, D], items.bin [I tokens, D] (raw, row-major),
index.npz (unit keys, offsets, lengths; item offsets), meta.json (shapes, dtype, the fingerprint of the frozen
weights and the data it was built from; written last). A cache whose fingerprint differs is built again.

A build that stops (SIGTERM, Ctrl-C, a killed process) continues where it stopped: every `commit_every_s` seconds,
and on a stop signal, the stores are flushed and building.json records how many packed rows of units and items are
on disk; the next build with the same fingerprint runs only the rest.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from calrec_jax import progress
from calrec_jax.data.packed import PackedEncoder, training_units
from calrec_jax.errors import CalrecError, ConfigError, Interrupted
from calrec_jax.model.two_tower import TwoTower
from calrec_jax.paths import write_atomically
from calrec_jax.train.item_bank import catalog_rows

log = logging.getLogger(__name__)

CACHE_DIR = "frozen_layer_cache"
PROGRESS_FILE = "building.json"
_DTYPES = {"float32": np.float32, "bfloat16": jnp.bfloat16}


def check_config(config) -> None:
  """The settings `model.cache_frozen_layers=True` needs (what can be told before the model is built)."""
  mc = config.model
  if not mc.lora_rank or not mc.lora_layers:
    raise ConfigError("model.cache_frozen_layers=True needs frozen lower blocks: LoRA adapters on the top blocks only "
                      "(model.lora_rank > 0 and model.lora_layers = N below the model's block count)")
  if config.data.packing != "sequence":
    raise ConfigError("model.cache_frozen_layers=True caches packed units; set data.packing='sequence'")
  if mc.scan_layers:
    raise ConfigError("model.cache_frozen_layers=True runs the blocks one by one; set model.scan_layers=False")


def frozen_block_count(config, n_layers: int) -> int:
  """How many lower blocks are frozen and cached; checks that the run can use the cache."""
  check_config(config)
  mc = config.model
  if mc.lora_layers >= n_layers:
    raise ConfigError(f"model.cache_frozen_layers=True: model.lora_layers={mc.lora_layers} adapts all {n_layers} "
                      "blocks, so none is frozen; lower model.lora_layers or turn the cache off")
  if jax.process_count() > 1:
    raise ConfigError("model.cache_frozen_layers=True runs in one process; turn it off for multi-host runs")
  return n_layers - mc.lora_layers


def _digest_params(params, stop: int) -> str:
  """A digest of the weights the cache depends on: the embedding and blocks [0, stop)."""
  dec = params["decoder"]
  h = hashlib.blake2b(digest_size=16)
  for name in ["embedding"] + [f"layers_{i}" for i in range(stop)]:
    for path, leaf in jax.tree_util.tree_leaves_with_path(dec[name]):
      h.update(jax.tree_util.keystr(path).encode())
      h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return h.hexdigest()


def _pack_sequences(seqs: list[list[int]], length: int) -> list[list[int]]:
  """Indices of `seqs` grouped greedily, in order, into rows of at most `length` tokens."""
  rows, used = [], length + 1
  for i, s in enumerate(seqs):
    if used + len(s) > length:
      rows.append([])
      used = 0
    rows[-1].append(i)
    used += len(s)
  return rows


class CacheBuildInterrupted(Interrupted):
  """A stop signal while the cache was being built: what was computed is stored; the same command continues."""


class FrozenLayerCache:
  """Read side: `unit(unit)` and `item(category, item)` return [n, D] arrays (views of the memory-mapped files)."""

  def __init__(self, directory: str):
    with open(os.path.join(directory, "meta.json"), encoding="utf-8") as f:
      self.meta = json.load(f)
    self.d_model = int(self.meta["d_model"])
    self.dtype = _DTYPES[self.meta["dtype"]]
    raw = np.uint16 if self.meta["dtype"] == "bfloat16" else np.float32
    index = np.load(os.path.join(directory, "index.npz"))
    self._units = np.memmap(os.path.join(directory, "units.bin"), raw, "r",
                            shape=(int(self.meta["unit_tokens"]), self.d_model)).view(self.dtype)
    self._items = np.memmap(os.path.join(directory, "items.bin"), raw, "r",
                            shape=(int(self.meta["item_tokens"]), self.d_model)).view(self.dtype)
    self._unit_at = {tuple(int(x) for x in k): (int(o), int(n))
                     for k, o, n in zip(index["unit_keys"], index["unit_offsets"], index["unit_lengths"])}
    self._item_offsets = index["item_offsets"]            # [I + 1] over the global item order
    self._category_offsets = index["category_offsets"]    # first global item id of each category

  def unit(self, unit: dict) -> np.ndarray:
    at, n = self._unit_at[tuple(unit["key"])]
    if n != len(unit["ids"]):
      raise ValueError(f"frozen-layer cache: unit {unit['key']} has {len(unit['ids'])} tokens, cached {n}")
    return self._units[at:at + n]

  def item(self, category: int, item: int) -> np.ndarray:
    g = int(self._category_offsets[category]) + int(item)
    return self._items[self._item_offsets[g]:self._item_offsets[g + 1]]

  def catalog_item(self, global_item: int) -> np.ndarray:
    return self._items[self._item_offsets[global_item]:self._item_offsets[global_item + 1]]


def _lower_fn(model: TwoTower):
  return jax.jit(lambda p, t, pos, seg: model.apply({"params": p}, t, pos, seg, method=TwoTower.lower_hidden))


def _run_rows(fn, params, seqs: list[list[int]], rows: list[list[int]], length: int, rows_per_call: int, pad: int,
              out: np.ndarray, offsets: np.ndarray, bar: tqdm, rows_done: int, stored) -> None:
  """Runs the lower blocks on `rows` (`_pack_sequences(seqs, length)`: rows of `length` tokens, segment ids,
  restarting positions), `rows_per_call` rows at a time, from row `rows_done` on, and writes sequence i's states to
  out[offsets[i]:offsets[i] + len]; `stored(rows)` after each call (rows: how many are written so far)."""
  for start in range(rows_done, len(rows), rows_per_call):
    chunk = rows[start:start + rows_per_call]
    tokens = np.full((rows_per_call, length), pad, np.int32)
    positions = np.zeros((rows_per_call, length), np.int32)
    segments = np.zeros((rows_per_call, length), np.int32)
    for r, members in enumerate(chunk):
      at = 0
      for seg, i in enumerate(members, start=1):
        n = len(seqs[i])
        tokens[r, at:at + n], positions[r, at:at + n], segments[r, at:at + n] = seqs[i], np.arange(n), seg
        at += n
    hidden = np.asarray(jax.device_get(fn(params, tokens, positions, segments)))  # [R, T, D]
    for r, members in enumerate(chunk):
      at = 0
      for i in members:
        n = len(seqs[i])
        out[offsets[i]:offsets[i] + n] = hidden[r, at:at + n].view(out.dtype)
        at += n
      bar.update(len(members))
    stored(start + len(chunk))


def build(directory: str, model: TwoTower, params, packed: PackedEncoder, rows_per_call: int = 8, stop=None,
          commit_every_s: float = 60.0) -> FrozenLayerCache:
  """The cache for `model.cached_layers` frozen blocks under `params` (the model's per-layer params), reused when
  `directory` holds one built from the same weights and data; otherwise built there (progress bar with ETA),
  continuing a build that stopped. `stop()` true: store what is computed and raise CacheBuildInterrupted."""
  k = model.cached_layers
  enc = packed.enc
  dtype = "bfloat16" if model.dtype == jnp.bfloat16 else "float32"
  units = [(c, *(int(x) for x in row)) for c, cat in enumerate(enc.categories)
           for row in training_units(cat.sequences, packed.spec)]
  dropped = packed.dropped_targets
  unit_ids = [packed.encode_unit(*key)["ids"] for key in units]
  packed.dropped_targets = dropped  # rendering here is not drawing: the trainer's count stays its own
  item_ids = catalog_rows(enc)  # the item tower's inputs, in the item bank's global order
  fingerprint = hashlib.blake2b(json.dumps({
      "blocks": k, "dtype": dtype, "weights": _digest_params(params, k), "model": repr(model.cfg),
      "units": hashlib.blake2b(json.dumps(unit_ids).encode(), digest_size=16).hexdigest(),
      "items": hashlib.blake2b(json.dumps(item_ids).encode(), digest_size=16).hexdigest(),
      "max_len": packed.spec.max_len, "item_len": packed.spec.item_len}).encode(), digest_size=16).hexdigest()
  meta_path = os.path.join(directory, "meta.json")
  if os.path.exists(meta_path):
    try:
      with open(meta_path, encoding="utf-8") as f:
        same = json.load(f).get("fingerprint") == fingerprint
      if same:
        cache = FrozenLayerCache(directory)
        log.info("frozen-layer cache: reusing %s (%d blocks)", directory, k)
        return cache
      log.info("frozen-layer cache: %s was built from other weights or data; building it again", directory)
    except (OSError, ValueError, KeyError) as e:  # a truncated or damaged file: the cache is derived data
      log.warning("frozen-layer cache: %s is damaged (%s); building it again", directory, e)
  try:
    return _write(directory, model, params, packed, units, unit_ids, item_ids, fingerprint, dtype, rows_per_call,
                  stop or (lambda: False), commit_every_s)
  except OSError as e:
    raise CalrecError(f"frozen-layer cache: cannot write {directory} ({e.strerror or e}); free disk space there "
                      "or set model.cache_frozen_layers=False") from None


def _stored_rows(directory: str, fingerprint: str, sizes: dict[str, int]) -> dict[str, int] | None:
  """{"units": rows, "items": rows} a stopped build of the same fingerprint stored in `directory`, or None."""
  try:
    with open(os.path.join(directory, PROGRESS_FILE), encoding="utf-8") as f:
      done = json.load(f)
    if done.get("fingerprint") != fingerprint or any(
        os.path.getsize(os.path.join(directory, name)) != size for name, size in sizes.items()):
      return None
    return {"units": int(done["units"]), "items": int(done["items"])}
  except (OSError, ValueError, KeyError, TypeError):
    return None


def _write(directory: str, model: TwoTower, params, packed: PackedEncoder, units, unit_ids, item_ids,
           fingerprint: str, dtype: str, rows_per_call: int, stop, commit_every_s: float) -> FrozenLayerCache:
  """Computes and stores the cache, continuing a stopped build of the same fingerprint (meta.json last, so an
  unfinished build is never taken for a finished one)."""
  k, enc, tok = model.cached_layers, packed.enc, packed.enc.tok
  meta_path = os.path.join(directory, "meta.json")
  d = model.cfg.d_model
  raw = np.uint16 if dtype == "bfloat16" else np.float32
  unit_len = np.asarray([len(s) for s in unit_ids], np.int64)
  unit_off = np.concatenate([[0], np.cumsum(unit_len)])
  item_off = np.concatenate([[0], np.cumsum([len(s) for s in item_ids])]).astype(np.int64)
  shapes = {"units.bin": (max(int(unit_off[-1]), 1), d), "items.bin": (max(int(item_off[-1]), 1), d)}
  itemsize = np.dtype(raw).itemsize
  done = _stored_rows(directory, fingerprint, {name: rows * width * itemsize for name, (rows, width) in shapes.items()})
  if done is None:
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    done, mode = {"units": 0, "items": 0}, "w+"
  else:
    mode = "r+"
    log.info("frozen-layer cache: continuing the build in %s (%d unit rows and %d item rows stored)", directory,
             done["units"], done["items"])
  log.info("frozen-layer cache: blocks 0-%d of %d units (%d tokens) and %d items (%d tokens), %.2f GB in %s",
           k - 1, len(units), int(unit_off[-1]), len(item_ids), int(item_off[-1]),
           (unit_off[-1] + item_off[-1]) * d * itemsize / 1e9, directory)
  fn = _lower_fn(model)
  t0 = time.time()
  stores = {name: np.memmap(os.path.join(directory, name), raw, mode, shape=shape) for name, shape in shapes.items()}
  last_commit = [time.time()]

  def stored(part: str):
    def commit(rows: int) -> None:
      done[part] = rows
      stopping = stop()
      if not stopping and time.time() - last_commit[0] < commit_every_s:
        return
      for store in stores.values():
        store.flush()
      write_atomically(os.path.join(directory, PROGRESS_FILE), json.dumps({"fingerprint": fingerprint, **done}))
      last_commit[0] = time.time()
      if stopping:
        raise CacheBuildInterrupted(
            f"a stop signal while building the frozen-layer cache: {done['units']} unit rows and {done['items']} item "
            f"rows are stored in {directory}; run the same command to continue from them")
    return commit

  unit_rows = _pack_sequences(unit_ids, packed.spec.max_len)
  item_rows = _pack_sequences(item_ids, packed.spec.item_len)
  stored_before = sum(len(members) for members in unit_rows[:done["units"]] + item_rows[:done["items"]])
  with progress.bar(total=len(units) + len(item_ids), initial=stored_before, unit="seq",
                    desc="frozen-layer cache") as bar:  # rate and ETA of this sitting's sequences
    _run_rows(fn, params, unit_ids, unit_rows, packed.spec.max_len, rows_per_call, tok.pad_id, stores["units.bin"],
              unit_off, bar, done["units"], stored("units"))
    _run_rows(fn, params, item_ids, item_rows, packed.spec.item_len, rows_per_call, tok.pad_id, stores["items.bin"],
              item_off, bar, done["items"], stored("items"))
  for store in stores.values():
    store.flush()
  stores.clear()  # unmaps the files
  category_offsets = np.asarray(enc.item_offsets[:len(enc.categories)], np.int64)
  np.savez(os.path.join(directory, "index.npz"), unit_keys=np.asarray(units, np.int64).reshape(-1, 4),
           unit_offsets=unit_off[:-1], unit_lengths=unit_len, item_offsets=item_off,
           category_offsets=category_offsets)
  write_atomically(meta_path, json.dumps({
      "fingerprint": fingerprint, "blocks": k, "d_model": d, "dtype": dtype, "unit_tokens": shapes["units.bin"][0],
      "item_tokens": shapes["items.bin"][0], "units": len(units), "items": len(item_ids),
      "build_seconds": round(time.time() - t0, 1)}, indent=1))
  if os.path.exists(os.path.join(directory, PROGRESS_FILE)):
    os.remove(os.path.join(directory, PROGRESS_FILE))
  log.info("frozen-layer cache: built in %.1fs", time.time() - t0)
  return FrozenLayerCache(directory)
