"""Run in a subprocess with 8 simulated CPU devices (XLA_FLAGS); prints JSON of sharded-vs-single differences.

For each mesh shape (and one with gradient accumulation): three train steps (losses, updated params) and sampled /
beam generation, compared with the same computation on one device without accumulation.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from calrec_jax.model import variables  # noqa: E402
from calrec_jax.data import synthetic  # noqa: E402
from calrec_jax.data.examples import ExampleEncoder, ExampleSpec  # noqa: E402
from calrec_jax.data.iterators import MixtureIterator  # noqa: E402
from calrec_jax.data.text import render_item  # noqa: E402
from calrec_jax.data.tokenizer import train_tokenizer  # noqa: E402
from calrec_jax.eval.generate import generate  # noqa: E402
from calrec_jax.model.config import preset  # noqa: E402
from calrec_jax.model.decoder import Decoder  # noqa: E402
from calrec_jax.model.layer_stack import unstack_layers  # noqa: E402
from calrec_jax.model import sharding as shd  # noqa: E402
from calrec_jax.train import objective  # noqa: E402
from calrec_jax.train import step as step_lib  # noqa: E402
from calrec_jax.model.two_tower import TwoTower  # noqa: E402

SHAPES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]


def main():
  assert jax.device_count() == 8, jax.devices()
  cats = synthetic.make_dataset(["Garden", "Office"], [60, 30])
  tok = train_tokenizer([render_item(a) for c in cats for a in c.catalog.attributes], 400)
  enc = ExampleEncoder(tok, cats, ExampleSpec(max_len=192, max_item_tokens=32, length_buckets=(128,), max_history=4))
  it = MixtureIterator(enc, 16, seed=0)
  batches = [next(it) for _ in range(3)]
  cfg = preset("tiny", vocab_size=512, bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id)
  model = TwoTower(cfg)
  tx = optax.adamw(1e-3)
  shapes = variables.example_batch(16, enc.buckets[-1], enc.spec.target_len, enc.spec.item_len)
  prompts = [enc.prompt_tokens(0, cats[0].sequences[u][:3])[0] for u in range(5)]

  def run(mesh, grad_accum=1, model=model, decode=True):
    state_sh, _ = step_lib.state_shardings(model, tx, mesh, shapes)
    state = step_lib.init_state(model, tx, mesh, shapes, 0, state_sh)
    step = step_lib.jit_train_step(step_lib.make_train_step(model, tx, objective.LossConfig(), grad_accum), mesh,
                                   state_sh)
    losses = []
    for b in batches:
      state, m = step(state, shd.global_batch(b, mesh))
      losses.append(float(m["loss"]))
    params = unstack_layers(state["params"])  # a scanned model's train state holds its blocks stacked
    sampled = beams = None
    if decode:  # generation depends on the mesh only (the accumulation run decodes as the run without it)
      dec = Decoder(cfg)
      gen_mesh = None if mesh.size == 1 else mesh
      sampled = generate(dec, params["decoder"], prompts, 2, 8, [tok.eos_id], seed=1, top_k=20, mesh=gen_mesh)
      beams = generate(dec, params["decoder"], prompts, 3, 8, [tok.eos_id], beam_search=True, mesh=gen_mesh)
    return losses, jax.device_get(params), sampled, beams, params["decoder"]["embedding"].sharding

  ref_losses, ref_params, ref_sampled, ref_beams, _ = run(shd.make_mesh(devices=jax.devices()[:1]))
  out = {"ref_losses": ref_losses}
  for shape, grad_accum in [(s, 1) for s in SHAPES] + [((2, 2, 2), 2)]:
    losses, params, sampled, beams, emb_sharding = run(shd.make_mesh(*shape), grad_accum, decode=grad_accum == 1)
    diffs = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda a, b: float(np.abs(a - b).max()), params, ref_params))
    row = {"loss_diff": float(np.abs(np.asarray(losses) - ref_losses).max()), "param_diff": max(diffs),
           "embedding_spec": str(emb_sharding.spec)}
    if grad_accum == 1:
      row.update(sampled_equal=sampled == ref_sampled, beams_equal=beams == ref_beams)
    out[str(shape) + (f" grad_accum={grad_accum}" if grad_accum > 1 else "")] = row
  # the scanned blocks with jax.nn.dot_product_attention, sharded, against the unrolled einsum reference
  losses, params, _, _, _ = run(shd.make_mesh(2, 2, 2), 1, TwoTower(cfg, scan_layers=True, attention="xla"),
                                decode=False)
  diffs = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda a, b: float(np.abs(a - b).max()), params, ref_params))
  out["(2, 2, 2) scan_layers attention=xla"] = {"loss_diff": float(np.abs(np.asarray(losses) - ref_losses).max()),
                                                "param_diff": max(diffs)}
  out["activation_constraints"] = activation_constraints(model, tx, shapes, shd.make_mesh(2, 2, 2))
  print("RESULT " + json.dumps(out))


def activation_constraints(model, tx, shapes, mesh) -> list[str]:
  """The sharding constraints the lowered train step carries (the layers' logical activation names)."""
  state_sh, abstract = step_lib.state_shardings(model, tx, mesh, shapes)
  step = step_lib.jit_train_step(step_lib.make_train_step(model, tx, objective.LossConfig()), mesh, state_sh)
  text = step.lower(shd.abstract_with_sharding(abstract, state_sh), shapes).as_text()
  return sorted({line.split("<@mesh, ", 1)[1].split(">", 1)[0] for line in text.splitlines()
                 if "sdy.sharding_constraint" in line})


if __name__ == "__main__":
  main()
