"""Gradient accumulation: per-device memory and step time of `optim.grad_accum=N` against one whole-batch step,
and against plain per-microbatch accumulation (what one would write first: each microbatch's loss with its own
in-batch negatives, gradients averaged).

  python benchmarks/grad_accum.py                        # 'small' preset, batch 32
  python benchmarks/grad_accum.py --preset=gemma3-270m --batch=16 --accum=1,4

calrec_jax's accumulation (gradient caching) reproduces the whole-batch loss and gradient with activation
memory of one microbatch for one extra forward pass; the plain way is cheaper but its contrastive terms see
only B/N negatives, so its loss differs (printed). Memory is XLA's compiled temporary-buffer estimate.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def parse_args():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", default="small", help="model preset (random init)")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--accum", default="1,2,4,8", help="comma-separated microbatch counts")
  p.add_argument("--steps", type=int, default=3, help="timed steps (best is reported)")
  return p.parse_args()


def plain_accumulation_step(model, tx, lc, n):
  """Per-microbatch losses (negatives from the microbatch only), gradients averaged."""
  import jax
  import jax.numpy as jnp
  import optax
  from calrec_jax.train import step as step_lib

  def train_step(state, batch):
    micro = step_lib.split_microbatches(batch, n)

    def body(acc, mb):
      (loss, _), g = jax.value_and_grad(lambda p: step_lib.calrec_loss(model, p, mb, lc), has_aux=True)(
          state["params"])
      return jax.tree_util.tree_map(jnp.add, acc, (g, loss)), None
    zeros = jax.tree_util.tree_map(jnp.zeros_like, (state["params"], jnp.zeros(())))
    (grads, loss), _ = jax.lax.scan(body, zeros, micro)
    grads = jax.tree_util.tree_map(lambda g: g / n, grads)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return ({"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
             "opt_state": opt_state}, {"loss": loss / n})
  return train_step


def main():
  args = parse_args()
  import jax
  import optax
  from calrec_jax.data import synthetic
  from calrec_jax.data.examples import ExampleEncoder, ExampleSpec
  from calrec_jax.data.iterators import MixtureIterator
  from calrec_jax.data.text import render_item
  from calrec_jax.data.tokenizer import train_tokenizer
  from calrec_jax.model.config import preset
  from calrec_jax.model import sharding as shd, variables
  from calrec_jax.train import objective
  from calrec_jax.train import step as step_lib
  from calrec_jax.model.two_tower import TwoTower

  cats = synthetic.make_dataset(["Garden", "Office"], [200, 100])
  tok = train_tokenizer([render_item(a) for c in cats for a in c.catalog.attributes], 1000)
  enc = ExampleEncoder(tok, cats, ExampleSpec(max_len=256, max_item_tokens=48, length_buckets=(), max_history=8))
  batch = next(MixtureIterator(enc, args.batch, seed=0))
  cfg = preset(args.preset, bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id)
  model = TwoTower(cfg)
  tx = optax.adamw(1e-4)
  lc = objective.LossConfig()
  mesh = shd.make_mesh()
  shapes = variables.example_batch(args.batch, enc.buckets[-1], enc.spec.target_len, enc.spec.item_len)
  state_sh, _ = step_lib.state_shardings(model, tx, mesh, shapes)
  gb = shd.global_batch(batch, mesh)

  def measure(step_fn):
    state = step_lib.init_state(model, tx, mesh, shapes, 0, state_sh)
    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)
    compiled = step_lib.jit_train_step(step_fn, mesh, state_sh).lower(abstract, gb).compile()
    mem = compiled.memory_analysis()
    state, m = compiled(state, gb)
    loss = float(m["loss"])
    times = []
    for _ in range(args.steps):
      t0 = time.perf_counter()
      state, m = compiled(state, gb)
      jax.block_until_ready(m)
      times.append(time.perf_counter() - t0)
    return loss, min(times), (mem.temp_size_in_bytes / 2**20 if mem is not None else float("nan"))

  print(f"model: preset {args.preset} ({cfg.n_layers} layers, d_model {cfg.d_model}); batch {args.batch} x joint "
        f"{batch['tokens'].shape[1]} + item {batch['item_tokens'].shape[1]} tokens; {os.cpu_count()} CPU cores\n")
  print("| accumulation | N | first-step loss | step ms | temporaries MiB | step time vs N=1 | memory vs N=1 |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  base = None
  for n in [int(x) for x in args.accum.split(",")]:
    rows = [("calrec_jax (whole-batch negatives)", step_lib.make_train_step(model, tx, lc, n))]
    if n > 1:
      rows.append(("plain (microbatch negatives)", plain_accumulation_step(model, tx, lc, n)))
    for name, fn in rows:
      loss, t, mib = measure(fn)
      base = base or (t, mib)
      print(f"| {name if n > 1 else 'none (one whole-batch step)'} | {n} | {loss:.5f} | {1e3 * t:.0f} | {mib:.1f} | "
            f"{t / base[0]:.2f}x | {mib / base[1]:.2f}x |")


if __name__ == "__main__":
  main()
