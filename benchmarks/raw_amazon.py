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


class _Text:
  """Random word sequences drawn in bulk (one generator call per 100k words, not per review)."""

  def __init__(self, rng: np.random.Generator):
    self.rng, self.buf, self.pos = rng, np.zeros(0, np.int64), 0

  def __call__(self, n: int) -> str:
    if self.pos + n > len(self.buf):
      self.buf, self.pos = self.rng.integers(0, len(WORDS), max(100_000, n)), 0
    out = " ".join(WORDS[i] for i in self.buf[self.pos:self.pos + n])
    self.pos += n
    return out


def write_category(folder: str, reviews: int, category: str = "Synthetic", seed: int = 0,
                   reviews_per_item: float = 15.0) -> tuple[str, str]:
  """Write `<category>.json.gz` (`reviews` lines) and `meta_<category>.json.gz` into `folder`; their paths."""
  rng = np.random.default_rng(seed)
  text = _Text(rng)
  os.makedirs(folder, exist_ok=True)
  items = max(10, int(reviews / reviews_per_item))
  asins = [f"B{n:09d}" for n in rng.permutation(items * 3)[:items]]
  weight = 1.0 / np.arange(1, items + 1) ** 1.05             # Zipf popularity
  weight /= weight.sum()
  # every review's draws at once: item, rating, verified, text length, vote; users' lengths (1-60, most few)
  picks = rng.choice(items, size=reviews, p=weight)
  stars = rng.integers(1, 6, reviews)
  verified = rng.random(reviews) < 0.8
  lengths = rng.integers(10, 120, reviews)
  votes = rng.integers(1, 9, reviews)
  per_user = np.minimum(60, 1 + rng.geometric(0.18, size=reviews))
  bounds = np.minimum(np.cumsum(per_user), reviews)
  bounds = np.concatenate([[0], bounds[:np.searchsorted(bounds, reviews) + 1]])
  t0 = 1_230_768_000                                         # 2009-01-01
  times = t0 + rng.integers(0, 10 * 365 * 86400, reviews)
  reviews_path = os.path.join(folder, f"{category}.json.gz")
  with gzip.open(reviews_path, "wt", encoding="utf-8", compresslevel=1) as f:
    for user in range(len(bounds) - 1):
      a, b = int(bounds[user]), int(bounds[user + 1])
      rid = f"A{user:013X}"
      lines = []
      for k, t in zip(range(a, b), np.sort(times[a:b])):
        lines.append(json.dumps({
            "overall": float(stars[k]), "verified": bool(verified[k]), "reviewTime": "01 1, 2015",
            "reviewerID": rid, "asin": asins[picks[k]], "reviewerName": f"Customer {user}",
            "reviewText": text(int(lengths[k])), "summary": text(5), "unixReviewTime": int(t),
            "vote": str(int(votes[k]))}))
      f.write("\n".join(lines) + "\n")
  meta_path = os.path.join(folder, f"meta_{category}.json.gz")
  with gzip.open(meta_path, "wt", encoding="utf-8", compresslevel=1) as f:
    for k, asin in enumerate(asins):
      row = {"category": ["Industrial &amp; Scientific", "Lab &amp; Scientific Products", text(2).title()],
             "description": [text(int(rng.integers(40, 200)))], "title": text(6).title(),
             "brand": f"Brand{int(rng.integers(0, max(2, items // 20)))}",
             "feature": [text(12) for _ in range(4)], "rank": f"{k + 1} in Industrial &amp; Scientific",
             "main_cat": "Industrial &amp; Scientific", "asin": asin}
      if rng.random() < 0.7:
        row["price"] = f"${rng.uniform(2, 300):.2f}"
      if rng.random() < 0.01:
        row["title"] = ""                                    # a row without a title
      f.write(json.dumps(row) + "\n")
      if rng.random() < 0.01:
        f.write(json.dumps(row) + "\n")                     # a duplicated row
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
