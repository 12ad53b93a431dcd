"""Turn any data source into prepared category folders and print the statistics table.

  python -m calrec_jax.data.prepare --source=recbole --input=../shared/data/amazon2018-scientific \\
      --categories=Scientific --output=data/prepared
  python -m calrec_jax.data.prepare --source=amazon_raw --input=~/amazon2018 \\
      --categories=Industrial_and_Scientific,Office_Products --output=data/prepared --kcore=5
  python -m calrec_jax.data.prepare --source=synthetic --output=data/synthetic
"""
from __future__ import annotations

import argparse
import json
import os

import ml_collections

from calrec_jax.data import prepared_folder, records, sources
from calrec_jax.errors import run_cli


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m calrec_jax.data.prepare",
      description="Read Amazon Review data (raw 2014/2018 files, RecBole atomic files, the TFDS builder, or the "
                  "built-in synthetic generator), build chronological user sequences with k-core filtering, "
                  "and write one prepared folder per category (catalog.jsonl, sequences.jsonl, stats.json) "
                  "that training reads with data.source=prepared.",
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  p.add_argument("--source", choices=sources.SOURCES, required=True, help="input format")
  p.add_argument("--input", default="", help="input folder (raw files / RecBole files / TFDS data_dir)")
  p.add_argument("--categories", default="", help="comma-separated category names (all synthetic ones if empty)")
  p.add_argument("--output", required=True, help="output folder; one sub-folder per category is written")
  p.add_argument("--kcore", type=int, default=5, help="keep users and items with >= k interactions (raw only)")
  p.add_argument("--no-dedup", action="store_true", help="keep repeated (user, item) events (raw only)")
  p.add_argument("--skip-malformed", action="store_true",
                 help="count and skip malformed lines instead of stopping at the first one (raw only)")
  p.add_argument("--min-sequence-length", type=int, default=3, help="drop shorter users after filtering")
  p.add_argument("--manual-dir", default="", help="TFDS: folder with the raw files (else download from the official URL, or from $CALREC_AMAZON2018_URL)")
  p.add_argument("--beam-options", default="",
                 help="TFDS: Apache Beam pipeline flags for a cluster runner, e.g. \"--runner=DataflowRunner "
                      "--project=P --region=R --temp_location=gs://B/tmp --setup_file=./setup.py\" (default: Beam's "
                      "local runner)")
  p.add_argument("--seed", type=int, default=0, help="synthetic generator seed")
  p.add_argument("--json", action="store_true", help="also print the statistics as JSON")
  return p.parse_args(argv)


def data_config(args: argparse.Namespace) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "source": args.source, "path": os.path.expanduser(args.input), "categories": args.categories,
      "kcore": args.kcore, "dedup": not args.no_dedup, "skip_malformed": args.skip_malformed,
      "min_sequence_length": args.min_sequence_length, "tfds_manual_dir": args.manual_dir,
      "tfds_beam_options": args.beam_options,
      "synthetic_users": "", "synthetic_seed": args.seed})


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  from calrec_jax.paths import require_writable_dir
  require_writable_dir(args.output, "--output")  # before the data is read, not after
  cfg = data_config(args)
  names = sources.split_names(cfg.categories)
  stats = []
  if cfg.source == "amazon_raw":                 # one category at a time, as arrays: memory linear in reviews
    sources.check_source(cfg)
    for name in names:
      stats.append(prepare_raw_category(cfg, name, os.path.join(args.output, name)))
  else:  # named categories one at a time (one in memory); the generator's, or every one found, at once
    for part in (names if names and cfg.source != "synthetic" else [cfg.categories]):
      cfg.categories = part
      for cat in sources.load_categories(cfg):
        stats.append(prepared_folder.save_category(cat, os.path.join(args.output, cat.name)))
  print(records.format_statistics(stats))
  print(f"\nwrote {len(stats)} categories to {args.output}")
  if args.json:
    print(json.dumps(stats, indent=1))
  return stats


def prepare_raw_category(cfg: ml_collections.ConfigDict, name: str, directory: str) -> dict:
  """Raw Amazon files of one category -> its prepared folder, with progress bars; the statistics written."""
  from calrec_jax.data import amazon_raw
  reviews, meta = amazon_raw.find_category_files(cfg.path, name)
  skipped: dict[str, int] = {}
  seqs, attributes = amazon_raw.prepare_arrays(
      reviews, meta, skipped, kcore=cfg.kcore, dedup=cfg.dedup, skip_malformed=cfg.skip_malformed,
      min_sequence_length=cfg.min_sequence_length, progress=True)
  records.check_sequences(name, seqs.user_ids, seqs.sequences.lengths(), len(seqs.item_ids), reviews)
  return prepared_folder.write_prepared(directory, name, seqs.item_ids, attributes, seqs.user_ids,
                                        seqs.sequences.offsets, seqs.sequences.items, skipped)


def run() -> None:
  run_cli(main)


if __name__ == "__main__":
  run()
