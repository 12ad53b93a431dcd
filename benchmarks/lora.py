"""Full finetuning against LoRA adapters: compiled memory per device, state size and step time, one run.

  python benchmarks/lora.py                                       (the 'small' preset, batch 16)
  python benchmarks/lora.py --pretrained=gemma3-270m-gguf --batch=4 --steps=3

Both steps are the framework's fused CALRec step on the same batch and weights (AdamW); LoRA trains rank-r
adapters on every attention and MLP projection (`model.lora_*` defaults) and keeps the decoder frozen. The
memory figures are XLA's memory analysis of each compiled step (arguments = train state + batch [+ frozen
weights], temporaries = activations, gradients and optimizer-update buffers).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--preset", default="small")
  ap.add_argument("--pretrained", default="", help="pretrained weights instead of a random preset")
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--rank", type=int, default=8)
  args = ap.parse_args()
  from calrec_jax.model import variables
  from calrec_jax.huge_pages import reexec_with_huge_pages
  reexec_with_huge_pages()  # as the calrec_jax commands run (CALREC_HUGE_PAGES=0: without)

  import jax
  import optax
  from calrec_jax.adapters.lora import LoraConfig, count, init_adapters, trainable_to_params
  from calrec_jax.data import synthetic
  from calrec_jax.data.examples import ExampleEncoder, ExampleSpec
  from calrec_jax.data.iterators import MixtureIterator
  from calrec_jax.data.text import render_item
  from calrec_jax.data.tokenizer import train_tokenizer
  from calrec_jax.model.config import preset
  from calrec_jax.model import sharding as shd
  from calrec_jax.train import objective
  from calrec_jax.train import step as step_lib
  from calrec_jax.train.optim import clip_by_global_norm
  from calrec_jax.model.two_tower import TwoTower

  cats = synthetic.make_dataset(["Garden", "Office"], [200, 100])
  if args.pretrained:
    from calrec_jax.model.loading import load_pretrained
    cfg, decoder, tok = load_pretrained(args.pretrained)
  else:
    tok = train_tokenizer([render_item(a) for c in cats for a in c.catalog.attributes], 1000)
    cfg, decoder = preset(args.preset, bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id), None
  enc = ExampleEncoder(tok, cats, ExampleSpec(max_len=256, max_item_tokens=40, length_buckets=(), max_history=6))
  batch = next(MixtureIterator(enc, args.batch, seed=0))
  model = TwoTower(cfg)
  tx = optax.chain(clip_by_global_norm(1.0), optax.adamw(1e-4, weight_decay=0.01))  # the framework's clipping
  mesh = shd.make_mesh()
  shapes = variables.example_batch(args.batch, enc.buckets[-1], enc.spec.target_len, enc.spec.item_len)
  gb = shd.global_batch(batch, mesh)
  lc = LoraConfig(rank=args.rank)
  loss_cfg = objective.LossConfig(vocab_chunk=32768)

  state_sh, _ = step_lib.state_shardings(model, tx, mesh, shapes)
  params = None if decoder is None else {"decoder": decoder}
  full_state = step_lib.init_state(model, tx, mesh, shapes, 0, state_sh, params)
  frozen = jax.tree_util.tree_map(jax.numpy.copy, full_state["params"]["decoder"])  # full_state is donated
  trainable = {"lora": init_adapters(frozen, lc)}
  lora_state = {"step": jax.numpy.zeros((), jax.numpy.int32), "params": trainable, "opt_state": tx.init(trainable)}
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  lora_sh = jax.tree_util.tree_map(lambda _: rep, lora_state)
  frozen_sh = state_sh["params"]["decoder"]

  results = {}
  for name in ("full finetuning", f"LoRA rank {args.rank}"):
    lora = name.startswith("LoRA")
    to_params = (lambda t, base: trainable_to_params(base, t, lc)) if lora else None
    step = step_lib.jit_train_step(step_lib.make_train_step(model, tx, loss_cfg, 1, to_params), mesh,
                                   lora_sh if lora else state_sh, frozen_sharding=frozen_sh if lora else None)
    state = lora_state if lora else full_state
    extra = (frozen,) if lora else ()
    t0 = time.perf_counter()
    compiled = step.lower(state, gb, *extra).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    state, m = compiled(state, gb, *extra)  # warm-up; the state is donated
    loss0 = float(m["loss"])
    times = []
    for _ in range(args.steps):
      t0 = time.perf_counter()
      state, m = compiled(state, gb, *extra)
      jax.block_until_ready(m)
      times.append(time.perf_counter() - t0)
    results[name] = dict(step_s=min(times), compile_s=compile_s, loss0=loss0, args=mem.argument_size_in_bytes,
                         temp=mem.temp_size_in_bytes, out=mem.output_size_in_bytes,
                         trainable=count(state["params"]), opt=count(state["opt_state"]))
    print(f"{name}: first loss {loss0:.5f}, step {min(times) * 1e3:.0f} ms, compile {compile_s:.1f}s", flush=True)

  mib = 2 ** 20
  print(f"\nmodel: {args.pretrained or 'preset ' + args.preset} ({cfg.family}, {cfg.n_layers} layers, d_model "
        f"{cfg.d_model}, vocab {cfg.vocab_size}, {count(frozen):,} decoder parameters); batch {args.batch} x "
        f"{batch['tokens'].shape[1]} + {batch['item_tokens'].shape[1]} tokens; {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s)\n")
  print("| training | trainable params | optimizer state | arguments MiB | temporaries MiB | args+temp vs full "
        "| step ms | step vs full |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|")
  f = results["full finetuning"]
  for name, r in results.items():
    print(f"| {name} | {r['trainable']:,} | {r['opt']:,} | {r['args'] / mib:,.1f} | {r['temp'] / mib:,.1f} | "
          f"{(r['args'] + r['temp']) / (f['args'] + f['temp']):.2f}x | {r['step_s'] * 1e3:.0f} | "
          f"{r['step_s'] / f['step_s']:.2f}x |")
  print("\n(LoRA's arguments include the frozen decoder weights; its first loss equals full finetuning's because "
        "fresh adapters leave the model unchanged.)")


if __name__ == "__main__":
  main()
