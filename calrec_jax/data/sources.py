"""One entry point from a data config to a list of CategoryData, whatever the source."""
from __future__ import annotations

import os

from calrec_jax.data import amazon_raw, prepared_folder, recbole, records, synthetic
from calrec_jax.errors import ConfigError, DataError

SOURCES = ("synthetic", "prepared", "recbole", "amazon_raw", "tfds")


def split_names(text: str) -> list[str]:
  return [c.strip() for c in str(text).split(",") if c.strip()]


def recbole_folder(folders: list[str], name: str) -> str:
  """The first of `folders` holding `<name>.item2index` (RecBole files of category `name`)."""
  for folder in folders:
    if not os.path.isdir(folder):
      raise DataError("data.path is not a directory", folder)
    if any(os.path.exists(os.path.join(folder, f"{name}.{ext}")) for ext in ("item2index", "item")):
      return folder
  raise DataError(f"no folder of data.path holds {name}.item2index or {name}.item (category {name!r}); add its "
                  "RecBole files to data.path (comma-separated)", ",".join(folders))


def load_categories(cfg) -> list[records.CategoryData]:
  """cfg: the `data` ConfigDict (source, path, categories, kcore, ...); with data.cold_start_items > 0 the
  evaluated category comes as a cold-start split (data/cold_start.py)."""
  from calrec_jax.data.cold_start import apply_cold_start
  return apply_cold_start(_load(cfg), cfg)


def check_source(cfg) -> None:
  """ConfigError / DataError for a data config that names no readable input (any source but synthetic)."""
  if cfg.source not in SOURCES:
    raise ConfigError(f"data.source={cfg.source!r}; choose one of {SOURCES}")
  if not cfg.path:
    raise ConfigError(f"data.path is required for data.source={cfg.source!r}")
  if cfg.source in ("recbole", "amazon_raw", "tfds") and not split_names(cfg.categories):
    raise ConfigError(f"data.categories must name the categories to read for data.source={cfg.source!r}")
  if cfg.source in ("prepared", "amazon_raw") and not os.path.isdir(cfg.path):
    raise DataError("data.path is not a directory", cfg.path)


def _load(cfg) -> list[records.CategoryData]:
  names = split_names(cfg.categories)
  if cfg.source == "synthetic":
    users = [int(x) for x in split_names(cfg.synthetic_users)] if cfg.synthetic_users else None
    if users and len(users) != len(names or synthetic.CATEGORIES):
      raise ConfigError("data.synthetic_users needs one count per category in data.categories")
    return synthetic.make_dataset(names or None, users, seed=cfg.synthetic_seed)
  check_source(cfg)
  if cfg.source == "recbole":  # one folder, or several comma-separated (each category where its files are)
    return [recbole.load_recbole(recbole_folder(split_names(cfg.path), n), n) for n in names]
  if cfg.source == "prepared":
    if not names:
      names = sorted(d for d in os.listdir(cfg.path) if os.path.exists(os.path.join(cfg.path, d, "catalog.jsonl")))
      if not names:
        raise DataError("no prepared categories (sub-folders with catalog.jsonl) here", cfg.path)
    return [prepared_folder.load_category(os.path.join(cfg.path, n), n) for n in names]
  if cfg.source == "amazon_raw":
    return [amazon_raw.load_amazon_category(cfg.path, n, kcore=cfg.kcore, dedup=cfg.dedup,
                                            skip_malformed=cfg.skip_malformed,
                                            min_sequence_length=cfg.min_sequence_length) for n in names]
  # tfds
  import importlib.util
  if importlib.util.find_spec("apache_beam") is None:  # the builder prepares with a Beam pipeline
    raise ConfigError("data.source=tfds prepares with Apache Beam, which is not installed: "
                      "install it in an environment of its own (python3 -m venv .venv-beam && .venv-beam/bin/pip install -e "
                      "\".[beam]\"; see docs/data.md), or use data.source=amazon_raw on the same files")
  import tensorflow_datasets as tfds
  from calrec_jax.data import tfds_amazon
  out = []
  for n in names:
    if n not in tfds_amazon.CATEGORIES_2018:
      raise ConfigError(f"unknown Amazon 2018 category {n!r}; known: {', '.join(tfds_amazon.CATEGORIES_2018)}")
    builder = tfds_amazon.AmazonReviews2018(config=n, data_dir=cfg.path, file_format="array_record")
    manual = cfg.tfds_manual_dir or None
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual, beam_options=tfds_amazon.beam_options(cfg.get("tfds_beam_options", ""))))
    out.append(tfds_amazon.load_tfds_category(builder))
  return out
