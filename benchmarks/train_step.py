"""The CALRec train step (two towers + fused LM/contrastive loss, forward + backward + AdamW) in calrec_jax against
an equivalent PyTorch/transformers implementation, on the same model weights and the same batch.

  pip install -e ".[test]"
  python benchmarks/train_step.py                       # 'small' preset (6 layers, d_model 256)
  python benchmarks/train_step.py --preset=gemma3-270m --batch=8 --steps=3

The PyTorch side runs transformers' model (built from the exported HF checkpoint of the same params) as the two
towers, computes the LM head only at target positions, the same InfoNCE terms (duplicate targets masked) and
AdamW with gradient clipping. Both losses on the first batch are printed (they must agree). Achieved FLOP/s
divides the step's model FLOPs (3x the forward pass's matmul FLOPs, counted from its jaxpr with loop bodies
times their trip count: `calrec_jax.plan.flops`; XLA's cost analysis counts the vocabulary-chunk loop of the LM
loss once) by the step time, for both implementations; the peak is the faster of JAX's and PyTorch's float32
2048^3 matmul, measured in the same run. Both run in one process, whose malloc uses transparent huge pages
where the machine offers them (`calrec_jax.huge_pages`, as the calrec_jax commands do; CALREC_HUGE_PAGES=0 runs
both without).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def parse_args():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", default="small", help="model preset (random init, identical in both)")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--steps", type=int, default=5, help="timed steps after a warm-up step")
  p.add_argument("--attention", choices=["einsum", "xla"], default="einsum",
                 help="calrec_jax's training attention (model.attention)")
  return p.parse_args()


def torch_step_fn(hf, batch_t, temperature=0.05, w=(1.0, 0.5, 0.5)):
  import torch
  import torch.nn.functional as F

  def masked_mean(h, m):
    m = m.float()[..., None]
    return (h * m).sum(1) / m.sum(1).clamp(min=1.0)

  def info_nce(q, k, ids, valid):
    logits = q @ k.T / temperature
    same = ids[:, None] == ids[None, :]
    eye = torch.eye(len(ids), dtype=torch.bool)
    allowed = (~same | eye) & valid[None, :]
    logits = torch.where(allowed, logits, torch.full_like(logits, -1e9))
    nll = -torch.diagonal(F.log_softmax(logits, -1))
    return (nll * valid).sum() / valid.sum().clamp(min=1)

  def loss_fn():
    b = batch_t
    base = hf.model
    joint = base(input_ids=b["tokens"], attention_mask=b["input_mask"], position_ids=b["positions"]).last_hidden_state
    item = base(input_ids=b["item_tokens"], attention_mask=b["item_mask"],
                position_ids=b["item_positions"]).last_hidden_state
    lm_h = torch.gather(joint, 1, b["lm_positions"][..., None].expand(-1, -1, joint.shape[-1]))
    logits = hf.lm_head(lm_h)  # [B, Lt, V] at target positions only
    nll = F.cross_entropy(logits.flatten(0, 1), b["lm_labels"].flatten(), reduction="none")
    lw = (b["lm_weights"] * b["example_weight"][:, None]).flatten()
    nig = (nll * lw).sum() / lw.sum().clamp(min=1)
    norm = lambda x: F.normalize(x, dim=-1, eps=1e-6)  # noqa: E731
    v_u, v_tu, v_t = (norm(masked_mean(joint, b["history_mask"])), norm(masked_mean(joint, b["target_mask"])),
                      norm(masked_mean(item, b["item_text_mask"])))
    valid = b["example_weight"] > 0
    return w[0] * nig + w[1] * info_nce(v_tu, v_t, b["target_id"], valid) + w[2] * info_nce(v_u, v_t, b["target_id"], valid)

  opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, weight_decay=0.01)

  def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
    opt.step()
    return float(loss)
  return step


def matmul_peak(n=2048, repeats=10):
  """The faster of JAX's and PyTorch's float32 [n, n] @ [n, n] in FLOP/s (best of `repeats` each)."""
  import jax
  import jax.numpy as jnp
  import torch
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  t = torch.ones((n, n), dtype=torch.float32)
  best = min(min(_time(lambda: f(a).block_until_ready()) for _ in range(repeats)),
             min(_time(lambda: t @ t) for _ in range(repeats)))
  return 2 * n ** 3 / best


def _time(fn):
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def main():
  args = parse_args()
  from calrec_jax.model import variables
  from calrec_jax.huge_pages import reexec_with_huge_pages
  reexec_with_huge_pages()
  import jax
  import optax
  import torch
  import transformers
  from calrec_jax.data import synthetic
  from calrec_jax.data.examples import ExampleEncoder, ExampleSpec
  from calrec_jax.data.iterators import MixtureIterator
  from calrec_jax.data.text import render_item
  from calrec_jax.data.tokenizer import train_tokenizer
  from calrec_jax.model.config import preset
  from calrec_jax.model.weights import export_hf_checkpoint
  from calrec_jax.plan.flops import matmul_flops
  from calrec_jax.model import sharding as shd
  from calrec_jax.train import objective
  from calrec_jax.train import step as step_lib
  from calrec_jax.train.optim import clip_by_global_norm
  from calrec_jax.model.two_tower import TwoTower

  cats = synthetic.make_dataset(["Garden", "Office"], [200, 100])
  tok = train_tokenizer([render_item(a) for c in cats for a in c.catalog.attributes], 1000)
  enc = ExampleEncoder(tok, cats, ExampleSpec(max_len=256, max_item_tokens=48, length_buckets=(), max_history=8))
  it = MixtureIterator(enc, args.batch, seed=0)
  batch = next(it)
  cfg = preset(args.preset, bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id)
  model = TwoTower(cfg, attention=args.attention)
  tx = optax.chain(clip_by_global_norm(1.0), optax.adamw(1e-4, weight_decay=0.01))  # the framework's clipping
  mesh = shd.make_mesh()
  shapes = variables.example_batch(args.batch, enc.buckets[-1], enc.spec.target_len, enc.spec.item_len)
  state_sh, _ = step_lib.state_shardings(model, tx, mesh, shapes)
  state = step_lib.init_state(model, tx, mesh, shapes, 0, state_sh)
  lc = objective.LossConfig()
  step = step_lib.jit_train_step(step_lib.make_train_step(model, tx, lc), mesh, state_sh)
  gb = shd.global_batch(batch, mesh)
  abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)
  t0 = time.perf_counter()
  compiled = step.lower(abstract, gb).compile()
  compile_s = time.perf_counter() - t0
  params_shape = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state["params"])
  flops = 3 * matmul_flops(lambda p, b: step_lib.calrec_loss(model, p, b, lc)[0], params_shape, batch)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops = float(cost.get("flops", 0.0))

  with tempfile.TemporaryDirectory() as d:  # the same initial weights for transformers
    export_hf_checkpoint(jax.device_get(state["params"]["decoder"]), cfg, d)
    hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
  hf.train()
  hf.config.use_cache = False
  batch_t = {k: torch.tensor(np.asarray(v)) for k, v in batch.items()}
  for k in ("tokens", "positions", "item_tokens", "item_positions", "lm_positions", "lm_labels", "target_id"):
    batch_t[k] = batch_t[k].long()
  for k in ("input_mask", "item_mask"):
    batch_t[k] = batch_t[k].long()
  torch_step = torch_step_fn(hf, batch_t)

  state, m = compiled(state, gb)
  jax_loss0 = float(m["loss"])
  torch_loss0 = torch_step()
  jax_times = []
  for _ in range(args.steps):  # the state is donated: each step consumes the previous one
    t0 = time.perf_counter()
    state, m = compiled(state, gb)
    jax.block_until_ready(m)
    jax_times.append(time.perf_counter() - t0)
  jax_t = min(jax_times)
  torch_t = min(_time(torch_step) for _ in range(args.steps))
  tokens = int(batch["input_mask"].sum() + batch["item_mask"].sum())
  slots = batch["tokens"].size + batch["item_tokens"].size
  peak = matmul_peak()

  print(f"model: preset {args.preset} ({cfg.family}, {cfg.n_layers} layers, d_model {cfg.d_model}, vocab "
        f"{cfg.vocab_size}); batch {args.batch} x joint {batch['tokens'].shape[1]} + item "
        f"{batch['item_tokens'].shape[1]} ({tokens} real tokens of {slots} slots)")
  print(f"first-step loss: calrec_jax {jax_loss0:.5f}, PyTorch {torch_loss0:.5f} (same weights and batch)")
  print(f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{os.cpu_count()} CPU cores; calrec_jax compile {compile_s:.1f}s; "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}\n")
  print("| implementation | step ms | tokens/s | ratio | achieved GFLOP/s | of matmul peak |")
  print("|---|---:|---:|---:|---:|---:|")
  for name, t in [("calrec_jax (jit, fused loss)", jax_t), ("PyTorch + transformers (eager)", torch_t)]:
    print(f"| {name} | {1e3 * t:.0f} | {tokens / t:,.0f} | {torch_t / t:.2f}x | {flops / t / 1e9:.1f} | "
          f"{flops / t / peak:.0%} |")
  print(f"\nstep model FLOPs (3x the forward's matmuls; both implementations do the same math): {flops / 1e9:.1f} "
        f"GFLOP (XLA's cost analysis: {xla_flops / 1e9:.1f}, loop bodies counted once); measured float32 matmul "
        f"peak: {peak / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
  main()
