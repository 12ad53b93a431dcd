"""A tensorflow_datasets Beam builder for Amazon Review 2018: one config per category, array_record, no TensorFlow.

Reads `<Category>.json.gz` (or `<Category>_5.json.gz`) and `meta_<Category>.json.gz` from `manual_dir`, or
downloads them from the official location when online (or from a mirror with the same layout, named by the
environment variable CALREC_AMAZON2018_URL). The preparation (dedup, title filter, k-core, leave-one-out) runs
as Apache Beam transforms (data/beam_pipeline.py), so the same builder runs on one machine or on a cluster:

    builder = AmazonReviews2018(config="Industrial_and_Scientific", data_dir=..., file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=RAW_DIR, beam_runner=None, beam_options=None))     # None: Beam's local runner
    data = load_tfds_category(builder)

Splits: `train`, `validation` and `test` hold one example per user - its items without the last two, without the
last one, and all of them (leave-one-out: the last item of `test` is the test target, of `validation` the
validation target); `catalog` holds one example per item with its attributes. The skip and filter counts are in
`builder.info.metadata["skipped"]`.
"""
from __future__ import annotations

import os

import tensorflow_datasets as tfds

from calrec_jax.data.amazon_raw import find_category_files
from calrec_jax.data.records import Catalog, CategoryData, SequenceStoreBuilder, validate

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


LEAVE_ONE_OUT = {"train": 2, "validation": 1, "test": 0}  # split -> items removed from the end of a sequence


class AmazonReviews2018(tfds.core.GeneratorBasedBuilder):
  """Amazon Review 2018 user sequences for sequential recommendation (a Beam builder)."""

  BUILDER_CONFIGS = [AmazonReviews2018Config(name=c, description=f"Amazon 2018 {c}") for c in CATEGORIES_2018]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put `<Category>.json.gz` (or `<Category>_5.json.gz`) and `meta_<Category>.json.gz` from "
      f"{BASE_URL} into the manual_dir.")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Per-user chronological purchase sequences (leave-one-out splits) and the item catalog "
                    "(Amazon Review 2018).",
        features=tfds.features.FeaturesDict({
            "user": tfds.features.Text(), "items": tfds.features.Sequence(tfds.features.Text()),
            "item_id": tfds.features.Text(), **{a: tfds.features.Text() for a in ATTRS}}),
        metadata=tfds.core.MetadataDict(),
        homepage="https://cseweb.ucsd.edu/~jmcauley/datasets/amazon_v2/")

  def _split_generators(self, dl_manager, pipeline):
    from calrec_jax.data.beam_pipeline import PrepareCategory
    import apache_beam as beam
    cat = self.builder_config.name
    try:
      manual = os.fspath(dl_manager.manual_dir)
    except AssertionError:  # no manual_dir given: download
      manual = None
    paths = find_category_files(manual, cat) if manual and os.path.isdir(manual) else None
    if paths is None:
      got = dl_manager.download(download_urls(cat, self.builder_config.five_core))
      paths = (os.fspath(got["reviews"]), os.fspath(got["meta"]))
    out = pipeline | "Prepare" >> PrepareCategory(*paths, kcore=self.builder_config.kcore)
    empty = {"user": "", "items": [], "item_id": "", **{a: "" for a in ATTRS}}
    splits = {split: out["sequences"] | f"LeaveOneOut_{split}" >> beam.Map(
        lambda us, cut: (us[0], {**empty, "user": us[0], "items": us[1][:len(us[1]) - cut]}), cut)
        for split, cut in LEAVE_ONE_OUT.items()}
    splits["catalog"] = out["catalog"] | "CatalogRows" >> beam.Map(
        lambda ia: (ia[0], {**empty, "item_id": ia[0], **{a: ia[1].get(a, "") for a in ATTRS}}))
    return splits

  def _generate_examples(self, examples):  # the splits are made in _split_generators
    return examples

  def _process_pipeline_result(self, pipeline_result) -> None:
    from calrec_jax.data.beam_pipeline import filter_counts
    self.info.metadata["skipped"] = filter_counts(pipeline_result)


def beam_options(flags: str):
  """Apache Beam PipelineOptions from command-line flags ("--runner=DataflowRunner --project=P ..."); "" gives
  Beam's local runner."""
  import shlex
  from apache_beam.options.pipeline_options import PipelineOptions
  return PipelineOptions(shlex.split(flags) if flags.strip() else ["--runner=DirectRunner"])


def load_tfds_category(builder: tfds.core.DatasetBuilder) -> CategoryData:
  """Read a prepared builder back (random access, no TensorFlow) into a CategoryData: users and items in sorted id
  order, the `test` split's full sequences."""
  sources = builder.as_data_source()
  catalog = sources["catalog"]
  attrs = {}
  for k in range(len(catalog)):
    ex = catalog[k]
    attrs[_s(ex["item_id"])] = {a: _s(ex[a]) for a in ATTRS}
  test = sources["test"]
  item_ids = sorted(attrs)
  index = {a: n for n, a in enumerate(item_ids)}
  rows = {}                                     # user -> position in `test`; sequences are then read in user order
  for k in range(len(test)):
    rows[_s(test[k]["user"])] = k
  users = sorted(rows)
  store = SequenceStoreBuilder()
  for u in users:
    store.append(index[_s(x)] for x in test[rows[u]]["items"])
  skipped = dict(builder.info.metadata.get("skipped", {})) if builder.info.metadata else {}
  data = CategoryData(builder.builder_config.name, Catalog(item_ids, [attrs[a] for a in item_ids]), users,
                      store.build(), skipped)
  validate(data, builder.data_dir)
  return data


def _s(x) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)
