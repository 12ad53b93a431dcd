"""Data-pipeline throughput: examples/s into ready training batches, against the train step it must feed.

  python benchmarks/data_pipeline.py --data=../shared/data/amazon2018-scientific
  python benchmarks/data_pipeline.py --data=... --tokenizer=gemma3-270m-gguf --models=tiny,small,gemma3-270m

Stages timed on the RecBole Scientific files: loading + k-core-free record building, the first pass (item texts
rendered and tokenized once, then cached), and steady-state batches from the stage-1 MixtureIterator (prompt
assembly, truncation, bucketing, collation). Each model's jitted train step (two towers + fused loss, forward
and backward) runs on the same batches; the pipeline keeps it fed when its examples/s exceeds the step's.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def parse_args():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data", default="../shared/data/amazon2018-scientific", help="RecBole Scientific folder")
  p.add_argument("--name", default="Scientific", help="RecBole dataset name (<data>/<name>.inter, ...)")
  p.add_argument("--tokenizer", default="", help="'' trains a SentencePiece model on the item texts; or a GGUF "
                 "file / packaged name (gemma3-270m-gguf) whose SentencePiece vocabulary is used")
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--batches", type=int, default=200, help="steady-state batches timed")
  p.add_argument("--models", default="tiny,small", help="presets whose train step is timed (comma-separated)")
  p.add_argument("--steps", type=int, default=5, help="train steps timed per model (after compilation)")
  return p.parse_args()


def main():
  args = parse_args()
  import jax
  from calrec_jax.model import variables
  from calrec_jax.data.examples import ExampleEncoder
  from calrec_jax.data.iterators import MixtureIterator
  from calrec_jax.data.recbole import load_recbole
  from calrec_jax.data.text import render_item
  from calrec_jax.data.tokenizer import train_tokenizer
  from calrec_jax.model import config as model_config
  from calrec_jax.train import optim
  from calrec_jax.model import sharding as shd
  from calrec_jax.train import objective
  from calrec_jax.train import step as step_lib
  from calrec_jax.model.run_parts import example_spec
  from calrec_jax.model.two_tower import TwoTower
  from configs import base

  config = base.get_config()
  config.data.batch_size = args.batch_size
  spec = example_spec(config.data)

  t0 = time.perf_counter()
  cat = load_recbole(args.data, args.name)
  t_load = time.perf_counter() - t0
  if args.tokenizer:
    from calrec_jax.model.gguf_import import open_gguf
    from calrec_jax.model.gguf_tokenizer import tokenizer_from_gguf
    from calrec_jax.model.loading import packaged_path
    path = args.tokenizer if args.tokenizer.endswith(".gguf") else packaged_path(args.tokenizer)
    tok = tokenizer_from_gguf(open_gguf(path), path)
  else:
    tok = train_tokenizer([render_item(a, spec.attributes) for a in cat.catalog.attributes], 2000)

  enc = ExampleEncoder(tok, [cat], spec)
  it = MixtureIterator(enc, args.batch_size, seed=0)
  n_examples = len(it.examples[0])
  t0 = time.perf_counter()
  first = [next(it) for _ in range(20)]
  t_first = time.perf_counter() - t0
  t0 = time.perf_counter()
  for i in range(len(cat.catalog)):
    enc.item_tokens(0, i)
  t_items = time.perf_counter() - t0 + t_first
  t0 = time.perf_counter()
  batches = [next(it) for _ in range(args.batches)]
  t_steady = time.perf_counter() - t0
  ex_per_s = args.batches * args.batch_size / t_steady
  tok_per_s = sum(int(b["input_mask"].sum() + b["item_mask"].sum()) for b in batches) / t_steady
  lengths = np.concatenate([b["input_mask"].sum(1) for b in batches])

  print(f"data: {args.data}  ({n_examples} training examples, {len(cat.catalog)} items)")
  print(f"tokenizer: {args.tokenizer or 'SentencePiece trained on item texts'} (vocab {tok.vocab_size})")
  print(f"load RecBole files: {t_load:.2f}s; tokenize the catalog once (first batches): {t_items:.2f}s")
  print(f"steady state: {ex_per_s:,.0f} examples/s, {tok_per_s:,.0f} tokens/s "
        f"(batch {args.batch_size}, joint length mean {lengths.mean():.0f} / max {lengths.max()}, "
        f"{1e3 * t_steady / args.batches:.2f} ms per batch)")
  print()
  print("| model | train step ms | step examples/s | pipeline / step | fed? |")
  print("|---|---:|---:|---:|---|")
  mesh = shd.make_mesh()
  for name in [m for m in args.models.split(",") if m]:
    cfg = model_config.preset(name, vocab_size=max(tok.vocab_size, 256), bos_id=tok.bos_id, eos_id=tok.eos_id,
                              pad_id=tok.pad_id)
    model = TwoTower(cfg)
    tx = optim.make_optimizer(config.optim, 100)
    shapes = variables.example_batch(args.batch_size, enc.buckets[-1], spec.target_len, spec.item_len)
    state_sh, _ = step_lib.state_shardings(model, tx, mesh, shapes)
    state = step_lib.init_state(model, tx, mesh, shapes, 0, state_sh)
    step = step_lib.jit_train_step(step_lib.make_train_step(model, tx, objective.LossConfig()), mesh, state_sh)
    pool = [shd.global_batch(b, mesh) for b in first[:4]]
    for b in pool:  # compile every bucket used
      state, m = step(state, b)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for i in range(args.steps):
      state, m = step(state, pool[i % len(pool)])
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t0) / args.steps
    step_ex = args.batch_size / dt
    ratio = ex_per_s / step_ex
    print(f"| {name} | {1e3 * dt:.1f} | {step_ex:,.1f} | {ratio:,.1f}x | {'yes' if ratio > 1 else 'NO'} |")
  print(f"\n{jax.device_count()} {jax.devices()[0].platform} device(s), {os.cpu_count()} CPU cores")


if __name__ == "__main__":
  main()
