"""Users/s of the whole generation + BM25 evaluation: per-row prefill (before) against one shared prefill per
prompt and length-sorted batches (after), side by side on the same users and params.

  python benchmarks/evaluation.py --workdir=workdirs/compare_scientific/calrec --users=256 --samples=8
  python benchmarks/evaluation.py --users=64          (random-init 'small' model: every sample runs to the limit)

--workdir is a trained run (its export, tokenizer and model config are used with configs/scientific.py's data);
without it a random-init model of --preset is evaluated. Each setting runs once untimed (compilation) and once
timed. Shared and per-row prefill draw the same samples for the same seed, so their metrics must be equal.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--workdir", default="", help="trained run folder (else random init)")
  ap.add_argument("--preset", default="small")
  ap.add_argument("--data", default="../shared/data/amazon2018-scientific")
  ap.add_argument("--users", type=int, default=128)
  ap.add_argument("--samples", type=int, default=8)
  ap.add_argument("--batch", type=int, default=32, help="users per generation batch")
  ap.add_argument("--max-new-tokens", type=int, default=40)
  args = ap.parse_args()

  import jax
  import tempfile
  from configs import scientific
  from calrec_jax.data.iterators import eval_examples
  from calrec_jax.eval.evaluate import evaluate_bm25
  from calrec_jax.train.checkpoint import params_from_workdir
  from calrec_jax.model.run_parts import build
  from calrec_jax.model.variables import init_boxed as _init_variables, example_batch

  c = scientific.get_config()
  c.data.path = args.data
  c.model.preset = args.preset
  c.eval.num_samples, c.eval.batch_size, c.eval.max_new_tokens = args.samples, args.batch, args.max_new_tokens
  workdir = args.workdir or tempfile.mkdtemp()
  parts = build(c, workdir)
  if args.workdir:
    params = params_from_workdir(args.workdir)
    source = args.workdir
  else:
    spec = parts.encoder.spec
    shapes = example_batch(1, parts.encoder.buckets[-1], spec.target_len, spec.item_len)
    params = jax.device_get(jax.jit(lambda r: _init_variables(parts.model, r, shapes))(jax.random.PRNGKey(0)))
    params = jax.tree_util.tree_map(lambda x: getattr(x, "value", x), params,
                                    is_leaf=lambda x: hasattr(x, "value"))
    source = f"random-init {args.preset}"
  rows = eval_examples(parts.encoder, 0, "test", args.users, 0)
  settings = [("per-row prefill, rows in order (before)", False, False),
              ("shared prefill, rows in order", True, False),
              ("per-row prefill, length-sorted batches", False, True),
              ("shared prefill, length-sorted batches (after)", True, True)]
  print(f"{len(rows)} Scientific test users, {args.samples} samples each, batches of {args.batch}, up to "
        f"{args.max_new_tokens} new tokens; params: {source}; {jax.device_count()} {jax.devices()[0].platform} "
        f"device(s)", flush=True)
  results = {}
  for name, shared, sort in settings:
    evaluate_bm25(c, parts, params, rows, 0, progress=False, shared_prefill=shared, sort_by_length=sort)  # compile
    t0 = time.time()
    metrics, _ = evaluate_bm25(c, parts, params, rows, 0, progress=False, shared_prefill=shared, sort_by_length=sort)
    dt = time.time() - t0
    results[name] = (len(rows) / dt, metrics)
    print(f"  {name}: {dt:.1f}s, {len(rows) / dt:.2f} users/s, recall@10 {metrics['recall@10']:.4f}", flush=True)
  base = results[settings[0][0]][0]
  print("\n| setting | users/s | speed-up | recall@10 | ndcg@10 |\n|---|---:|---:|---:|---:|")
  for name, (ups, m) in results.items():
    print(f"| {name} | {ups:.2f} | {ups / base:.2f}x | {m['recall@10']:.4f} | {m['ndcg@10']:.4f} |")
  for sort in (False, True):
    a = results[[s[0] for s in settings if s[1] and s[2] == sort][0]][1]
    b = results[[s[0] for s in settings if not s[1] and s[2] == sort][0]][1]
    assert a == b, f"shared and per-row prefill disagree (sorted={sort}): {a} vs {b}"
  print("\nshared and per-row prefill gave identical metrics (same samples).")


if __name__ == "__main__":
  main()
