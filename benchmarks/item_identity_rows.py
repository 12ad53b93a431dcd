"""What a trained item-identity table learned (model.item_id_offsets): for items grouped by how often the training
sequences hold them, the mean norm of their rows E[item] and the mean cosine of each row with its item's own text
vector v_T; then the dense ranking of the VALIDATION users (the test split is never read) with the table scaled by
0 (the text vectors alone), 0.5 and 1 (as trained), and where its top-10 slots go: the share of them held by items
of each count bucket, beside the share of the validation targets in that bucket (a bucket far above its targets'
share holds items that sit near every user). A run without a table gets the text vectors' lines only. A run with a
learned item bias (model.item_bias) also gets its mean per count bucket, and each ranking line once per factor of
--bias_scales: 0 (the text score alone), 1 (the trained dense score, v_U . v_T + bias), and any between or beyond.

  python benchmarks/item_identity_rows.py --workdir=workdirs/compare_scientific_ids/calrec_ids

Reads the workdir's recorded config (<workdir>/config.json), export and tokenizer; data paths in it are relative to
the current folder, as when the run was started.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

BUCKETS = ((0, 1), (1, 2), (2, 5), (5, 10), (10, 30), (30, None))


def parse_args():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="a trained run (with model.item_id_offsets=True, or without: "
                 "then only the text vectors' ranking and slot shares)")
  p.add_argument("--scales", default="0,0.5,1", help="','-separated factors of the table for the ranking lines")
  p.add_argument("--bias_scales", default="0,1", help="','-separated factors of a learned item bias for the "
                 "ranking lines (1: as trained)")
  return p.parse_args()


def bucket_masks(counts: np.ndarray) -> list[tuple[str, np.ndarray]]:
  """(label, [I] bool) of each non-empty count bucket of the items' training `counts` [I]."""
  masks = [(label, bucket_of(counts) == b) for b, label in enumerate(bucket_labels())]
  return [(label, m) for label, m in masks if m.any()]


def row_statistics(table: np.ndarray, text: np.ndarray, counts: np.ndarray) -> list[dict]:
  """Per count bucket: items, mean row norm, mean cosine(row, text vector). table, text [I, E]; counts [I]."""
  norms = np.linalg.norm(table, axis=1)
  cos = np.sum(table * text, axis=1) / np.maximum(norms * np.linalg.norm(text, axis=1), 1e-12)
  return [{"counts": label, "items": int(m.sum()), "norm": float(norms[m].mean()), "cos_text": float(cos[m].mean())}
          for label, m in bucket_masks(counts)]


def bucket_labels() -> list[str]:
  """The BUCKETS as printed: '0', '2-4', '30+'."""
  return [f"{lo}+" if hi is None else str(lo) if hi == lo + 1 else f"{lo}-{hi - 1}" for lo, hi in BUCKETS]


def bucket_of(counts: np.ndarray) -> np.ndarray:
  """[I] index into BUCKETS of each item's training count."""
  edges = np.asarray([lo for lo, _ in BUCKETS[1:]])
  return np.searchsorted(edges, counts, side="right")


def slot_shares(top: np.ndarray, counts: np.ndarray) -> np.ndarray:
  """[len(BUCKETS)] share of the slots of `top` [U, k] (item ids) held by items of each count bucket."""
  b = bucket_of(counts)[top.reshape(-1)]
  return np.bincount(b, minlength=len(BUCKETS)) / max(b.size, 1)


def main() -> None:
  args = parse_args()
  import jax
  import ml_collections
  from calrec_jax.data.iterators import eval_examples
  from calrec_jax.data.records import item_counts
  from calrec_jax.eval import evaluate as ev
  from calrec_jax.eval.fusion import exclusion_mask, target_ranks, top_items
  from calrec_jax.eval.metrics import ranking_metrics
  from calrec_jax.model import item_ids
  from calrec_jax.model.pooling import l2_normalize
  from calrec_jax.model.run_parts import build
  from calrec_jax.train.checkpoint import params_from_workdir
  with open(os.path.join(args.workdir, "config.json"), encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params_from_workdir(args.workdir, None))
  parts = build(config, args.workdir)
  cat = ev.eval_category_index(config, parts.categories)
  n = len(parts.categories[cat].catalog)
  text_only = {k: v for k, v in params.items() if k not in item_ids.TABLES}
  text = ev.item_embeddings(parts, text_only, cat, config.eval.item_batch_size)              # [I, E], unit rows
  counts = item_counts(parts.categories[cat].sequences, n)
  scales = [float(s) for s in args.scales.split(",")]
  first = int(parts.encoder.item_offsets[cat])
  has_bias = item_ids.BIAS in params
  bias_scales = [float(x) for x in args.bias_scales.split(",")] if has_bias else [1.0]
  bias = np.asarray(params[item_ids.BIAS][first:first + n]) if has_bias else np.zeros(n, np.float32)   # [I]
  if has_bias:
    print("items by training count | items | mean bias")
    for label, m in bucket_masks(counts):
      print(f"{label:>8} | {int(m.sum()):5d} | {float(bias[m].mean()):+.4f}")
  if item_ids.PARAM in params:
    table = params[item_ids.PARAM][first:first + n]                                        # [I, E]
    print("items by training count | items | mean |E[item]| | mean cos(E[item], v_T(item))")
    for r in row_statistics(table, text, counts):
      print(f"{r['counts']:>8} | {r['items']:5d} | {r['norm']:.3f} | {r['cos_text']:+.3f}")
  else:
    print(f"{args.workdir}: no item identity table; the text vectors alone")
    table, scales = np.zeros_like(text), [0.0]
  rows = eval_examples(parts.encoder, cat, "valid", config.eval.max_users, config.seed)
  users = ev.user_embeddings(config, parts, text_only, rows, cat)                             # [U, E]
  excluded = exclusion_mask([h for _, h, _ in rows], n)
  targets = np.asarray([t for _, _, t in rows], np.int64)
  print(f"dense ranking of {len(rows)} validation users (history excluded)"
        + (" with the table scaled:" if item_ids.PARAM in params else ":"))
  shares = {"targets": np.bincount(bucket_of(counts)[targets], minlength=len(BUCKETS)) / len(targets)}
  for scale in scales:
    items = np.asarray(l2_normalize(text + scale * table))
    for b in bias_scales:
      scores = users @ items.T + b * bias[None, :]                                            # [U, I]
      m = ranking_metrics(target_ranks(scores, targets, excluded, 10).tolist(), (1, 10))
      name = f"x{scale:g}" + (f", bias x{b:g}" if has_bias else "")
      print(f"  {name}: NDCG@10 {m['ndcg@10']:.4f}, Recall@10 {m['recall@10']:.4f}, Recall@1 {m['recall@1']:.4f}")
      shares[f"top-10 slots, {name}"] = slot_shares(top_items(scores, excluded, 10), counts)
  print("share by training count of the item | " + " | ".join(bucket_labels()))
  for name, share in shares.items():
    print(f"{name} | " + " | ".join(f"{v:.3f}" for v in share))


if __name__ == "__main__":
  main()
