"""The Apache Beam preparation (the TFDS Beam builder) gives the one-machine path's prepared data, byte for byte."""
import os
import sys

import pytest

beam = pytest.importorskip("apache_beam")

from calrec_jax.data import amazon_raw, prepare  # noqa: E402
from calrec_jax.errors import DataError  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
CATEGORY = "Industrial_and_Scientific"
from test_data_raw import meta, review, write_raw  # noqa: E402


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


def test_tfds_builder_from_manual_dir_without_tensorflow(tmp_path):
  import sys
  import tensorflow_datasets as tfds
  from calrec_jax.data.tfds_amazon import AmazonReviews2018, load_tfds_category
  raw = tmp_path / "raw"
  raw.mkdir()
  revs = [review(f"u{u}", i, t) for u in range(5) for t, i in enumerate("abcde")]
  write_raw(str(raw), revs, [meta(i, title=f"Item &amp; {i}") for i in "abcde"], category="Industrial_and_Scientific")
  b = AmazonReviews2018(config="Industrial_and_Scientific", data_dir=str(tmp_path / "tfds"), file_format="array_record")
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(raw)))
  data = load_tfds_category(b)
  direct = amazon_raw.load_amazon_category(str(raw), "Industrial_and_Scientific")
  assert data.sequences == direct.sequences and data.catalog.attributes == direct.catalog.attributes
  assert data.catalog.attributes[0]["title"] == "Item & a"
  assert "tensorflow" not in sys.modules


def test_tfds_builder_downloads_when_no_manual_dir(tmp_path, monkeypatch):
  """The download branch, served from a local mirror with the official directory layout."""
  import functools
  import http.server
  import sys
  import threading
  from calrec_jax.data.tfds_amazon import MIRROR_ENV, AmazonReviews2018, load_tfds_category
  cat = "Industrial_and_Scientific"
  mirror = tmp_path / "mirror"
  (mirror / "categoryFilesSmall").mkdir(parents=True)
  (mirror / "metaFiles2").mkdir()
  revs = [review(f"u{u}", i, t) for u in range(5) for t, i in enumerate("abcde")]
  write_raw(str(tmp_path), revs, [meta(i) for i in "abcde"], category=cat)
  os.rename(tmp_path / f"{cat}.json.gz", mirror / "categoryFilesSmall" / f"{cat}_5.json.gz")
  os.rename(tmp_path / f"meta_{cat}.json.gz", mirror / "metaFiles2" / f"meta_{cat}.json.gz")
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(mirror))
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    monkeypatch.setenv(MIRROR_ENV, f"http://127.0.0.1:{server.server_address[1]}")
    b = AmazonReviews2018(config=cat, data_dir=str(tmp_path / "tfds"), file_format="array_record")
    b.download_and_prepare(download_dir=str(tmp_path / "downloads"))
  finally:
    server.shutdown()
  fetched = [p.name for p in (tmp_path / "downloads").rglob("127.0.0.1_*.gz")]
  assert len(fetched) == 2, fetched  # reviews and meta came over HTTP from the mirror
  data = load_tfds_category(b)
  assert "tensorflow" not in sys.modules
  assert len(data.user_ids) == 5 and [data.catalog.item_ids[i] for i in data.sequences[0]] == list("abcde")
