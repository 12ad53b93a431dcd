"""A tensorflow_datasets builder for Amazon Review 2018: one config per category, array_record, no TensorFlow.

Reads `<Category>.json.gz` (or `<Category>_5.json.gz`) and `meta_<Category>.json.gz` from `manual_dir`, or
downloads them from the official location when online (or from a mirror with the same layout, named by the
environment variable CALREC_AMAZON2018_URL). One example per user (after dedup, title filter and
k-core): the chronological items with their attributes. Read it back with `as_data_source()`:

    builder = AmazonReviews2018(config="Industrial_and_Scientific", data_dir=..., file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=RAW_DIR))
    data = load_tfds_category(builder)
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from calrec_jax.data.amazon_raw import find_category_files, load_amazon_files
from calrec_jax.data.records import Catalog, CategoryData, validate

BASE_URL = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2"
MIRROR_ENV = "CALREC_AMAZON2018_URL"
CATEGORIES_2018 = (
    "AMAZON_FASHION", "All_Beauty", "Appliances", "Arts_Crafts_and_Sewing", "Automotive", "Books",
    "CDs_and_Vinyl", "Cell_Phones_and_Accessories", "Clothing_Shoes_and_Jewelry", "Digital_Music",
    "Electronics", "Gift_Cards", "Grocery_and_Gourmet_Food", "Home_and_Kitchen", "Industrial_and_Scientific",
    "Kindle_Store", "Luxury_Beauty", "Magazine_Subscriptions", "Movies_and_TV", "Musical_Instruments",
    "Office_Products", "Patio_Lawn_and_Garden", "Pet_Supplies", "Prime_Pantry", "Software",
    "Sports_and_Outdoors", "Tools_and_Home_Improvement", "Toys_and_Games", "Video_Games")
ATTRS = ("title", "category", "brand", "price")


def download_urls(category: str, five_core: bool = True, base_url: str | None = None) -> dict[str, str]:
  """{'reviews', 'meta'} URLs of one category under the official layout (or a mirror of it)."""
  base = (base_url or os.environ.get(MIRROR_ENV) or BASE_URL).rstrip("/")
  reviews = f"{base}/categoryFilesSmall/{category}_5.json.gz" if five_core else \
      f"{base}/categoryFiles/{category}.json.gz"
  return {"reviews": reviews, "meta": f"{base}/metaFiles2/meta_{category}.json.gz"}


class AmazonReviews2018Config(tfds.core.BuilderConfig):
  """One Amazon category; `five_core` selects the `<Category>_5.json.gz` reviews file for download."""

  def __init__(self, *, kcore: int = 5, five_core: bool = True, **kwargs):
    super().__init__(version=tfds.core.Version("1.0.0"), **kwargs)
    self.kcore, self.five_core = kcore, five_core


class AmazonReviews2018(tfds.core.GeneratorBasedBuilder):
  """Amazon Review 2018 user sequences for sequential recommendation."""

  BUILDER_CONFIGS = [AmazonReviews2018Config(name=c, description=f"Amazon 2018 {c}") for c in CATEGORIES_2018]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put `<Category>.json.gz` (or `<Category>_5.json.gz`) and `meta_<Category>.json.gz` from "
      f"{BASE_URL} into the manual_dir.")

  def _info(self) -> tfds.core.DatasetInfo:
    seq = {a: tfds.features.Sequence(tfds.features.Text()) for a in ATTRS}
    return tfds.core.DatasetInfo(
        builder=self,
        description="Per-user chronological purchase sequences with item attributes (Amazon Review 2018).",
        features=tfds.features.FeaturesDict({"user": tfds.features.Text(),
                                             "items": tfds.features.Sequence(tfds.features.Text()), **seq}),
        homepage="https://cseweb.ucsd.edu/~jmcauley/datasets/amazon_v2/")

  def _split_generators(self, dl_manager):
    cat = self.builder_config.name
    try:
      manual = os.fspath(dl_manager.manual_dir)
    except AssertionError:  # no manual_dir given: download
      manual = None
    paths = find_category_files(manual, cat) if manual and os.path.isdir(manual) else None
    if paths is None:
      got = dl_manager.download(download_urls(cat, self.builder_config.five_core))
      paths = (os.fspath(got["reviews"]), os.fspath(got["meta"]))
    return {"train": self._generate_examples(*paths)}

  def _generate_examples(self, reviews_path, meta_path):
    data = load_amazon_files(reviews_path, meta_path, self.builder_config.name, kcore=self.builder_config.kcore)
    for user, seq in zip(data.user_ids, data.sequences):
      attrs = [data.catalog.attributes[i] for i in seq]
      yield user, {"user": user, "items": [data.catalog.item_ids[i] for i in seq],
                   **{a: [x.get(a, "") for x in attrs] for a in ATTRS}}


def load_tfds_category(builder: tfds.core.DatasetBuilder) -> CategoryData:
  """Read a prepared builder back (random access, no TensorFlow) into a CategoryData."""
  source = builder.as_data_source()["train"]
  attrs: dict[str, dict[str, str]] = {}
  users, raw_seqs = [], []
  for i in range(len(source)):
    ex = source[i]
    items = [x.decode() if isinstance(x, bytes) else str(x) for x in ex["items"]]
    for j, asin in enumerate(items):
      attrs.setdefault(asin, {a: _s(ex[a][j]) for a in ATTRS})
    users.append(_s(ex["user"]))
    raw_seqs.append(items)
  order = np.argsort(users, kind="stable")
  item_ids = sorted(attrs)
  index = {a: n for n, a in enumerate(item_ids)}
  data = CategoryData(builder.builder_config.name, Catalog(item_ids, [attrs[a] for a in item_ids]),
                      [users[k] for k in order], [[index[a] for a in raw_seqs[k]] for k in order], {})
  validate(data, builder.data_dir)
  return data


def _s(x) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)
