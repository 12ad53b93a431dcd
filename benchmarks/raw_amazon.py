"""Realistic raw Amazon-2018-style files of any size, for the scale figures of preparation and training.

  python benchmarks/raw_amazon.py --reviews=1000000 --output=/tmp/raw1m      (writes Synthetic.json.gz and
                                                                              meta_Synthetic.json.gz)

What a user downloads per category, with the properties that matter for cost: one JSON object per line with
every field Amazon ships (review text and summary of real length, reviewer name, vote, verified, image list),
item popularity Zipf-distributed (a few best-sellers, a long tail that the 5-core filter removes), 1-60 reviews
per user (most users few), times spread over years; metadata rows with long descriptions and feature lists,
category paths, prices as "$12.99" strings or missing, HTML entities in titles, and a few duplicated rows and
rows without a title. Deterministic for a seed.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os

import numpy as np

WORDS = ("sterile nitrile gloves lab pipette tips beaker flask digital scale caliper thermometer safety goggles "
         "microscope slides centrifuge tubes funnel stirrer hotplate magnetic tape dispenser label printer pack "
         "count clear blue heavy duty reusable disposable industrial professional compact portable stainless "
         "steel glass plastic rubber latex free powder medium large small ounce inch gallon liter set kit").split()


def _sentence(rng: np.random.Generator, n: int) -> str:
  return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n))


def write_category(folder: str, reviews: int, category: str = "Synthetic", seed: int = 0,
                   reviews_per_item: float = 15.0) -> tuple[str, str]:
  """Write `<category>.json.gz` (`reviews` lines) and `meta_<category>.json.gz` into `folder`; their paths."""
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  items = max(10, int(reviews / reviews_per_item))
  asins = [f"B{n:09d}" for n in rng.permutation(items * 3)[:items]]
  weight = 1.0 / np.arange(1, items + 1) ** 1.05             # Zipf popularity
  weight /= weight.sum()
  reviews_path = os.path.join(folder, f"{category}.json.gz")
  written, user = 0, 0
  t0 = 1_230_768_000                                         # 2009-01-01
  with gzip.open(reviews_path, "wt", encoding="utf-8", compresslevel=1) as f:
    while written < reviews:
      n = int(min(60, 1 + rng.geometric(0.18)))              # 1-60 reviews, most users few
      n = min(n, reviews - written)
      picks = rng.choice(items, size=n, p=weight)
      times = np.sort(t0 + rng.integers(0, 10 * 365 * 86400, n))
      rid = f"A{user:013X}"
      for item, t in zip(picks, times):
        f.write(json.dumps({
            "overall": float(rng.integers(1, 6)), "verified": bool(rng.random() < 0.8),
            "reviewTime": "01 1, 2015", "reviewerID": rid, "asin": asins[item],
            "reviewerName": f"Customer {user}", "reviewText": _sentence(rng, int(rng.integers(10, 120))),
            "summary": _sentence(rng, 5), "unixReviewTime": int(t), "vote": str(int(rng.integers(1, 9))),
        }) + "\n")
      written += n
      user += 1
  meta_path = os.path.join(folder, f"meta_{category}.json.gz")
  with gzip.open(meta_path, "wt", encoding="utf-8", compresslevel=1) as f:
    for k, asin in enumerate(asins):
      row = {"category": ["Industrial &amp; Scientific", "Lab &amp; Scientific Products", _sentence(rng, 2).title()],
             "description": [_sentence(rng, int(rng.integers(40, 200)))], "title": _sentence(rng, 6).title(),
             "brand": f"Brand{int(rng.integers(0, max(2, items // 20)))}",
             "feature": [_sentence(rng, 12) for _ in range(4)], "rank": f"{k + 1} in Industrial &amp; Scientific",
             "main_cat": "Industrial &amp; Scientific", "asin": asin}
      if rng.random() < 0.7:
        row["price"] = f"${rng.uniform(2, 300):.2f}"
      if rng.random() < 0.01:
        row["title"] = ""                                    # a row without a title
      f.write(json.dumps(row) + "\n")
      if rng.random() < 0.01:
        f.write(json.dumps(row) + "\n")                      # a duplicated row
  return reviews_path, meta_path


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--reviews", type=int, default=1_000_000)
  ap.add_argument("--output", required=True)
  ap.add_argument("--category", default="Synthetic")
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()
  for path in write_category(args.output, args.reviews, args.category, args.seed):
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB)")


if __name__ == "__main__":
  main()
