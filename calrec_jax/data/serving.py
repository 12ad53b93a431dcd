"""What a trained model needs beside its weights to recommend on another machine: the files a run's export holds.

  <export>/run_config.json   the run's config (data, eval and fusion settings)
  <export>/catalog.jsonl     the evaluated category's items: {"id": ..., <attributes>} per line
  <export>/serving.json      {"category", "attributes" (the rendered ones, in order), "popularity" (training
                             interactions per catalog item), "item_id_row" (its first item's row in the learned
                             item identities), "fusion" (the fused ranking's choice, once an evaluation fitted
                             one; "fusion_weights" beside it for the weights method)}

Training writes them before model_config.json (which marks a complete export); `python -m calrec_jax.recommend
--export=DIR` and `Recommender.load(DIR)` read them, so an export folder copied alone is enough: no data folder,
no training workdir. No user ids or histories are stored, only per-item counts.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from calrec_jax.data.records import CategoryData, item_counts, read_catalog
from calrec_jax.errors import DataError

FILES = ("run_config.json", "catalog.jsonl", "serving.json")


def is_export(folder: str) -> bool:
  """Whether `folder` is an export with its serving files (a run trained by this version)."""
  return all(os.path.exists(os.path.join(folder, f)) for f in FILES + ("model_config.json", "params"))


def write_serving_files(folder: str, run_config_json: str, category: CategoryData, attributes: Sequence[str],
                        item_id_row: int = 0) -> None:
  """The serving files of `category` (the evaluated one) into `folder`, each written atomically; `item_id_row`:
  the row of its first item in the learned item identities (model/item_ids.py; the run's categories share one
  table)."""
  from calrec_jax.paths import write_atomically
  os.makedirs(folder, exist_ok=True)
  write_atomically(os.path.join(folder, "run_config.json"), run_config_json)
  write_atomically(os.path.join(folder, "catalog.jsonl"), "".join(
      json.dumps({"id": i, **a}, ensure_ascii=False) + "\n"
      for i, a in zip(category.catalog.item_ids, category.catalog.attributes)))
  counts = item_counts(category.sequences, len(category.catalog))
  write_atomically(os.path.join(folder, "serving.json"), json.dumps(
      {"category": category.name, "attributes": list(attributes), "popularity": counts.astype(int).tolist(),
       "item_id_row": int(item_id_row)}))


def record_fusion(folder: str, choice: dict) -> None:
  """Add the fused ranking's choice (fitted on validation by an evaluation, eval/fusion_methods.py) to an export's
  serving.json: "fusion", and "fusion_weights" too for the weights method (what older readers look for)."""
  from calrec_jax.paths import write_atomically
  path = os.path.join(folder, "serving.json")
  if not os.path.exists(path):
    return  # an export written before serving files existed
  doc = read_serving_json(path)
  doc["fusion"] = choice
  if "weights" in choice:
    doc["fusion_weights"] = {k: float(v) for k, v in choice["weights"].items()}
  else:
    doc.pop("fusion_weights", None)
  write_atomically(path, json.dumps(doc))


def read_serving_json(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      doc = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise DataError(f"unreadable ({e}); export the run again (python -m calrec_jax.main on its workdir)",
                    path) from None
  for key in ("category", "attributes", "popularity"):
    if key not in doc:
      raise DataError(f"no {key!r}: not a serving.json written by calrec_jax; export the run again", path)
  return doc


def read_serving_files(folder: str) -> tuple[dict, CategoryData, list[str], np.ndarray, dict | None, int]:
  """(run config dict, the category (catalog only, no users), rendered attributes, popularity [I], the fused
  ranking's choice (eval/fusion_methods.py) or None, the category's first row in the learned item identities) of
  an export folder; a missing or damaged file is a DataError naming it."""
  missing = [f for f in FILES if not os.path.exists(os.path.join(folder, f))]
  if missing:
    raise DataError(f"not an export with serving files (missing {', '.join(missing)}); give a run's export/ "
                    "folder written by this version, or use --workdir with the run's folder", folder)
  path = os.path.join(folder, "run_config.json")
  try:
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise DataError(f"unreadable ({e})", path) from None
  doc = read_serving_json(os.path.join(folder, "serving.json"))
  catalog = read_catalog(os.path.join(folder, "catalog.jsonl"))
  counts = np.asarray(doc["popularity"], np.float64)
  if len(counts) != len(catalog):
    raise DataError(f"popularity has {len(counts)} entries for {len(catalog)} catalog items; export the run again",
                    os.path.join(folder, "serving.json"))
  category = CategoryData(str(doc["category"]), catalog, [], [], {})
  row = doc.get("item_id_row", 0)
  if not isinstance(row, int) or row < 0:
    raise DataError(f"item_id_row must be a non-negative integer, not {row!r}; export the run again",
                    os.path.join(folder, "serving.json"))
  return config, category, list(doc["attributes"]), counts, stored_fusion(doc), row


def stored_fusion(doc: dict):
  """The fused ranking's choice a document holds ("fusion", or an older "fusion_weights" alone) as stored; the
  reader checks it (eval/fusion_methods.check)."""
  if doc.get("fusion") is not None:
    return doc["fusion"]
  if doc.get("fusion_weights") is not None:
    return {"method": "weights", "weights": doc["fusion_weights"]}
  return None
