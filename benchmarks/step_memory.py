"""What the compiled train step's temporaries hold at their peak: XLA's buffer assignment, read back and explained.

  python benchmarks/step_memory.py --preset=gemma3-270m --batch=8 --seq=192 --target=40 --item=42 --grad_accum=4

Compiles the real two-tower step (random-init weights of the preset, AdamW with clipping, the framework's
non-finite guard) with XLA's dumps on, finds the instruction at which the live temporaries peak (from the
buffer assignment and the live ranges XLA writes), and prints the largest buffers alive there with the operation
that made them, and their sum by kind: gradients (parameter-shaped buffers of the backward pass), activations the
backward pass reads (made in the forward pass), and the rest. The arguments (params, AdamW moments, batch) are
XLA's memory analysis. The totals are XLA's; the peak's list comes from the dump files of this jaxlib version.
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def parse_args():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", default="gemma3-270m")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=192, help="joint tower tokens")
  p.add_argument("--target", type=int, default=40, help="LM target tokens")
  p.add_argument("--item", type=int, default=42, help="item tower tokens")
  p.add_argument("--grad_accum", type=int, default=1)
  p.add_argument("--top", type=int, default=12, help="buffers listed")
  return p.parse_args()


def compile_step(args, dump_dir: str):
  """The compiled step; XLA writes its dumps for the module `jit_traced` into dump_dir."""
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={dump_dir} "
                             "--xla_dump_hlo_module_re=jit_traced --xla_dump_hlo_as_text")
  import jax
  import optax
  from calrec_jax.model import variables
  from calrec_jax.model.config import preset
  from calrec_jax.model import sharding as shd
  from calrec_jax.train import objective
  from calrec_jax.train import step as step_lib
  from calrec_jax.train.optim import clip_by_global_norm
  from calrec_jax.model.two_tower import TwoTower
  cfg = preset(args.preset)
  model = TwoTower(cfg, 0)
  mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  batch = variables.example_batch(args.batch, args.seq, args.target, args.item)
  tx = optax.chain(clip_by_global_norm(1.0), optax.adamw(1e-5))
  state_sh, abstract = step_lib.state_shardings(model, tx, mesh, batch)
  step = step_lib.jit_train_step(step_lib.make_train_step(model, tx, objective.LossConfig(), args.grad_accum),
                                 mesh, state_sh)
  return step.lower(shd.abstract_with_sharding(abstract, state_sh), batch).compile()


def peak_buffers(dump_dir: str):
  """(peak bytes, instruction at the peak, [(bytes, name, shape, op_name)] alive there) of the temporaries."""
  def read(suffix):
    return open(glob.glob(os.path.join(dump_dir, f"*jit_traced*{suffix}"))[0], encoding="utf-8").read()
  assignment, live, hlo = read("buffer-assignment.txt"), read("live-range.txt"), read("after_optimizations.txt")
  temp = assignment[assignment.index("preallocated-temp"):]
  temp = temp[:temp.find("\nallocation")] if "\nallocation" in temp else temp
  # values are named instruction{tuple index} (no braces for a whole non-tuple value) in both files; values that
  # alias one buffer (a loop's carried value and its body's parameter) share an (offset, size) slot
  slots = {m.group(1).replace("{}", ""): (int(m.group(3)), int(m.group(2)), m.group(4).split("{")[0])
           for m in re.finditer(r"value: <\d+ (\S+?)(?: \(phi\))? @\S+> \(size=(\d+),offset=(\d+)\): (\S+)",
                                temp)}
  ranges = {}
  for m in re.finditer(r"^    (\S+?):(\d+)-(\d+)$", live, re.M):
    ranges.setdefault(m.group(1).replace("{}", ""), (int(m.group(2)), int(m.group(3))))
  events = [(t, step, slots[name][:2]) for name in slots if name in ranges
            for t, step in ((ranges[name][0], 1), (ranges[name][1] + 1, -1))]
  users, level, best, at = collections.Counter(), 0, 0, 0
  for t, step, (offset, size) in sorted(events, key=lambda e: (e[0], e[1])):  # ends before starts at one time
    users[(offset, size)] += step
    if step == 1 and users[(offset, size)] == 1:
      level += size
    elif step == -1 and users[(offset, size)] == 0:
      level -= size
    if level > best:
      best, at = level, t
  op_names = dict(re.findall(r"^\s*(?:ROOT )?%(\S+) = .*?op_name=\"([^\"]*)\"", hlo, re.M))
  alive, seen = [], set()
  for name, (offset, size, shape) in slots.items():
    if name in ranges and ranges[name][0] <= at <= ranges[name][1] and (offset, size) not in seen:
      seen.add((offset, size))
      alive.append((size, name, shape, op_names.get(name.split("{")[0], "")))
  alive.sort(reverse=True)
  sequence = dict(re.findall(r"^    (\d+):(\S+)$", live, re.M))
  return best, sequence.get(str(at), str(at)), alive


def elements(shape: str) -> int:
  dims = re.findall(r"\d+", shape.split("[", 1)[1]) if "[" in shape else []
  return int(np.prod([int(d) for d in dims])) if dims else 1


def kind(shape: str, op_name: str, param_sizes: set[int]) -> str:
  """A buffer's role, from its size and the JAX operation XLA names in its metadata."""
  backward = "transpose(" in op_name
  param_sized = shape.startswith("f32") and elements(shape) in param_sizes
  if param_sized and not op_name:
    return "gradient accumulator (the microbatch loop's carry)"
  if param_sized and backward:
    return "gradients of the step or microbatch"
  if backward:
    return "backward-pass working buffers"
  if "jvp(" in op_name or "/while/body/closed_call" in op_name:
    return "activations saved by the forward pass (incl. LM-loss chunks)"
  return "other (loss, optimizer update, guard)"


def main():
  args = parse_args()
  with tempfile.TemporaryDirectory() as dump_dir:
    compiled = compile_step(args, dump_dir)
    mem = compiled.memory_analysis()
    peak, at, alive = peak_buffers(dump_dir)
  import flax.linen as nn
  import jax
  from calrec_jax.model.config import preset
  from calrec_jax.plan.estimate import param_tree
  leaves = jax.tree_util.tree_leaves(nn.meta.unbox(param_tree(preset(args.preset))))
  param_sizes = {int(x.size) for x in leaves if x.size > 4096}
  params_bytes = sum(x.size for x in leaves) * 4
  gib = 2 ** 30
  print(f"{args.preset}, batch {args.batch} x ({args.seq} joint + {args.item} item tokens), grad_accum "
        f"{args.grad_accum}: arguments {mem.argument_size_in_bytes / gib:.2f} GiB (params {params_bytes / gib:.2f} "
        f"+ AdamW moments + batch), temporaries {mem.temp_size_in_bytes / gib:.2f} GiB")
  print(f"temporaries peak at {at}: {peak / gib:.2f} GiB in {len(alive)} buffers\n")
  print("| buffer | shape | MiB | made by |\n|---|---|---:|---|")
  for size, name, shape, op in alive[:args.top]:
    print(f"| {name} | {shape} | {size / 2 ** 20:.1f} | {op[:90]} |")
  by_kind = collections.Counter()
  for size, _, shape, op in alive:
    by_kind[kind(shape, op, param_sizes)] += size
  print("\n| kind | GiB | x params |\n|---|---:|---:|")
  for k, v in by_kind.most_common():
    if v < 2 ** 20:
      continue
    print(f"| {k} | {v / gib:.2f} | {v / params_bytes:.2f} |")


if __name__ == "__main__":
  main()
