"""The Apache Beam preparation (the TFDS Beam builder) gives the one-machine path's prepared data, byte for byte."""
import os
import sys

import pytest

beam = pytest.importorskip("apache_beam")

from calrec_jax.data import prepare  # noqa: E402
from calrec_jax.errors import DataError  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
CATEGORY = "Industrial_and_Scientific"


def test_the_beam_builder_writes_the_bytes_of_the_one_machine_preparation(tmp_path):
  from raw_amazon import write_category
  write_category(str(tmp_path / "raw"), 8_000, category=CATEGORY, seed=7)
  local = prepare.main(["--source=amazon_raw", f"--input={tmp_path / 'raw'}", f"--categories={CATEGORY}",
                        f"--output={tmp_path / 'local'}"])
  beamed = prepare.main(["--source=tfds", f"--input={tmp_path / 'tfds'}", f"--manual-dir={tmp_path / 'raw'}",
                         f"--categories={CATEGORY}", f"--output={tmp_path / 'beam'}"])
  assert local == beamed and local[0]["skipped"]["events_removed_by_kcore"] > 0
  for f in ("catalog.jsonl", "sequences.jsonl", "stats.json"):
    assert (tmp_path / "beam" / CATEGORY / f).read_bytes() == (tmp_path / "local" / CATEGORY / f).read_bytes(), f
  # the leave-one-out splits: train without the last two items, validation without the last, test all of them
  from calrec_jax.data.tfds_amazon import AmazonReviews2018
  splits = AmazonReviews2018(config=CATEGORY, data_dir=str(tmp_path / "tfds"), file_format="array_record"
                             ).as_data_source()
  by_split = {s: {splits[s][k]["user"]: list(splits[s][k]["items"]) for k in range(len(splits[s]))}
              for s in ("train", "validation", "test")}
  assert len(by_split["test"]) == local[0]["users"] and len(splits["catalog"]) == local[0]["items"]
  for user, items in by_split["test"].items():
    assert by_split["validation"][user] == items[:-1] and by_split["train"][user] == items[:-2]


def test_a_kcore_filter_that_needs_more_rounds_fails_the_pipeline_naming_the_setting(tmp_path):
  from calrec_jax.data.beam_pipeline import PrepareCategory
  from raw_amazon import write_category
  reviews, meta = write_category(str(tmp_path), 3_000, seed=8)
  with pytest.raises(Exception, match="has not converged in 1 rounds.*raise kcore_rounds") as caught:
    with beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(["--runner=DirectRunner"])) as p:
      _ = p | PrepareCategory(reviews, meta, kcore=5, kcore_rounds=1)
  assert isinstance(caught.value, DataError) or "DataError" in str(caught.value)
