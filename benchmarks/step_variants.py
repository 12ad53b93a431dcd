"""One CALRec train step of a preset under each compile/kernel variant: compile time, compiled memory, step time,
achieved FLOP/s and MFU, next to the capacity planner's prediction for the same shape.

  pip install -e ".[test]"
  python benchmarks/step_variants.py --preset=gemma3-270m --batch=4 --variants=f32,f32-scan --steps=2   # CPU
  python benchmarks/step_variants.py --preset=gemma3-1b --batch=16 --peak=989e12                        # H100

Variants (comma-separated): f32 | bf16 (compute dtype), with -scan (scanned blocks), -remat, -xla or
-cudnn (attention kernel; default einsum), e.g. `bf16-cudnn-scan`. Random-init weights of the preset (nothing is
downloaded); the full two-tower step (LM + both InfoNCE terms, AdamW, clipping) on a batch shaped like CALRec's
(--seq joint tokens, --target target tokens, --item item-tower tokens). MFU counts the planner's matmul FLOPs
(forward + backward; remat's extra forward not counted as useful) against --peak FLOP/s per device (default: a
float32 matmul measured here). Memory: XLA's compiled analysis (arguments + temporaries) and, on accelerators,
the device's peak bytes in use.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def parse_args():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", default="gemma3-270m")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--target", type=int, default=49)
  p.add_argument("--item", type=int, default=50)
  p.add_argument("--variants", default="f32,f32-scan")
  p.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
  p.add_argument("--peak", type=float, default=0.0, help="peak FLOP/s per device (0: measure a float32 matmul)")
  p.add_argument("--mfu", type=float, default=0.4, help="MFU the planner's predicted step time assumes")
  p.add_argument("--json", default="", help="also write the rows to this file")
  p.add_argument("--compile_only", action="store_true", help="compile and report memory; run no step")
  p.add_argument("--compile_cache", default="", help="use this folder as JAX's persistent compilation cache, as "
                 "the commands do (default: none, so compile times are cold ones); run twice to time a warm start")
  return p.parse_args()


def matmul_peak(n=4096, repeats=5) -> float:
  import jax
  import jax.numpy as jnp
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(repeats):
    f(a).block_until_ready()
  return 2 * n ** 3 * repeats / (time.perf_counter() - t0)


def random_batch(shapes, vocab: int, seed: int = 0) -> dict:
  """A batch shaped like CALRec's: full-length joint and item sequences, target tokens at the joint's end."""
  rng = np.random.RandomState(seed)
  b, t = shapes["tokens"].shape
  lt, li = shapes["lm_labels"].shape[1], shapes["item_tokens"].shape[1]
  hist = t - lt
  out = {"tokens": rng.randint(3, vocab, (b, t)), "positions": np.broadcast_to(np.arange(t), (b, t)),
         "input_mask": np.ones((b, t), bool), "history_mask": np.arange(t)[None].repeat(b, 0) < hist,
         "target_mask": np.arange(t)[None].repeat(b, 0) >= hist,
         "lm_positions": np.broadcast_to(np.arange(hist - 1, t - 1), (b, lt)), "lm_labels": rng.randint(3, vocab, (b, lt)),
         "lm_weights": np.ones((b, lt), np.float32), "item_tokens": rng.randint(3, vocab, (b, li)),
         "item_positions": np.broadcast_to(np.arange(li), (b, li)), "item_mask": np.ones((b, li), bool),
         "item_text_mask": np.ones((b, li), bool), "target_id": np.arange(b), "example_weight": np.ones(b, np.float32)}
  return {k: np.asarray(v).astype(shapes[k].dtype) for k, v in out.items()}


def run_variant(cfg, name: str, args, peak: float) -> dict:
  import jax
  import optax
  from calrec_jax.plan.estimate import StepShape, compile_train_step, estimate, step_flops
  from calrec_jax.model import sharding as shd
  from calrec_jax.train import step as step_lib
  from calrec_jax.train.optim import clip_by_global_norm
  parts = name.split("-")
  attention = "cudnn" if "cudnn" in parts else "xla" if "xla" in parts else "einsum"
  shape = StepShape(args.batch, args.seq, args.target, args.item, (1, 1, 1), remat="remat" in parts,
                    compute_bytes=2 if parts[0] == "bf16" else 4, scan_layers="scan" in parts)
  tx = optax.chain(clip_by_global_norm(1.0), optax.adamw(1e-5))
  t0 = time.perf_counter()
  compiled, model, mesh, shapes, state_sh = compile_train_step(cfg, shape, tx, attention)
  compile_s = time.perf_counter() - t0
  print(f"  {name}: compiled in {compile_s:.1f} s", flush=True)
  mem = compiled.memory_analysis()
  plan = estimate(cfg, shape)
  row = {"variant": name, "compile_s": compile_s,
         "xla_arguments_gib": mem.argument_size_in_bytes / 2 ** 30, "xla_temporaries_gib": mem.temp_size_in_bytes / 2 ** 30,
         "xla_total_gib": (mem.argument_size_in_bytes + mem.temp_size_in_bytes) / 2 ** 30,
         "planned_total_gib": plan["total"] / 2 ** 30, "planned_step_ms": plan["flops"] / (peak * args.mfu) * 1e3}
  if args.compile_only:
    return row
  state = step_lib.init_state(model, tx, mesh, shapes, 0, state_sh)
  batch = shd.global_batch(random_batch(shapes, cfg.vocab_size), mesh)
  state, m = compiled(state, batch)
  first_loss = float(m["loss"])
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    state, m = compiled(state, batch)
    m["loss"].block_until_ready()
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))
  # remat's extra forward is not useful work
  useful = step_flops(cfg, dataclasses.replace(shape, remat=False), int(plan["param_count"]))
  stats = jax.devices()[0].memory_stats() or {}
  row.update({"step_ms": step_s * 1e3, "first_loss": first_loss,
              "tokens_per_s": args.batch * (args.seq + args.item) / step_s,
              "tflops": useful / step_s / 1e12, "mfu": useful / step_s / peak,
              "device_peak_gib": stats.get("peak_bytes_in_use", 0) / 2 ** 30})
  del state, compiled
  return row


def main():
  args = parse_args()
  from calrec_jax.huge_pages import reexec_with_huge_pages
  reexec_with_huge_pages()  # as the calrec_jax commands run (CALREC_HUGE_PAGES=0: without)
  import jax
  from calrec_jax.model.config import preset
  if args.compile_cache:
    import ml_collections
    from calrec_jax.compile_cache import enable_compile_cache
    enable_compile_cache(ml_collections.ConfigDict({"dir": args.compile_cache, "min_compile_secs": 1.0}))
  cfg = preset(args.preset)
  peak = args.peak or matmul_peak()
  print(f"{args.preset}, batch {args.batch} x ({args.seq} joint + {args.item} item tokens), "
        f"{jax.devices()[0].device_kind} ({jax.default_backend()}), peak {peak / 1e12:.1f} TFLOP/s", flush=True)
  rows = []
  for name in args.variants.split(","):
    try:
      rows.append(run_variant(cfg, name, args, peak))
    except Exception as e:  # noqa: BLE001  (a kernel the backend lacks: report it, go on)
      rows.append({"variant": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"})
    print(json.dumps(rows[-1]), flush=True)
  print("| variant | compile s | step ms | tokens/s | TFLOP/s | MFU | XLA args+temps GiB | device peak GiB | planned GiB "
        "| planned ms |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    if "error" in r:
      print(f"| {r['variant']} | {r['error']} |")
      continue
    if "step_ms" not in r:
      print(f"| {r['variant']} | {r['compile_s']:.1f} | | | | | {r['xla_arguments_gib']:.2f}+{r['xla_temporaries_gib']:.2f} "
            f"| | {r['planned_total_gib']:.2f} | {r['planned_step_ms']:.1f} |")
      continue
    print(f"| {r['variant']} | {r['compile_s']:.1f} | {r['step_ms']:.1f} | {r['tokens_per_s']:.0f} | {r['tflops']:.1f} "
          f"| {r['mfu']:.1%} | {r['xla_arguments_gib']:.2f}+{r['xla_temporaries_gib']:.2f} | "
          f"{r['device_peak_gib']:.2f} | {r['planned_total_gib']:.2f} | {r['planned_step_ms']:.1f} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
