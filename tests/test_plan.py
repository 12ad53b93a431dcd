"""The capacity planner: its memory per device against XLA's compiled memory analysis of the real train step
(1 device and sharded meshes of 8 simulated devices), its FLOPs, layouts and command line."""
import json
import os
import subprocess
import sys

import pytest

from calrec_jax.model import variables
from calrec_jax.model.config import preset
from calrec_jax.plan.estimate import StepShape, estimate, sharded_elements
from calrec_jax.plan.recommend import meshes, recommend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (preset, global batch, joint tokens, mesh, options): 1 device, fsdp, data x tensor, scanned blocks on all three
# axes, Gemma's 262k-row embedding sharded and not, and a batch small enough that the update, not the backward
# pass, sets the peak
CASES = [["small", 16, 128, [1, 1, 1], {}], ["tiny-llama", 32, 256, [1, 1, 1], {}],
         ["small", 16, 128, [1, 8, 1], {}], ["small", 16, 128, [4, 1, 2], {}],
         ["small", 16, 128, [2, 2, 2], {"scan_layers": True}], ["gemma3-270m", 8, 128, [2, 4, 1], {}],
         ["gemma3-270m", 4, 256, [1, 1, 1], {}], ["small", 1, 32, [1, 1, 1], {}]]  # the last: the update's peak


@pytest.mark.slow
def test_planned_memory_is_within_15_percent_of_the_compiled_step():
  env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "plan_worker.py"), json.dumps(CASES)], env=env,
                       cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  for row in json.loads(out.stdout.split("RESULT ", 1)[1]):
    assert 0.85 <= row["ratio"] <= 1.15, row


def test_sharded_parameter_counts_follow_the_rules():
  cfg = preset("gemma3-1b")
  total, local = sharded_elements(cfg, (1, 1, 1))
  assert total == local == 999_885_952  # the published Gemma-3-1B count (tied embedding)
  _, local_fsdp = sharded_elements(cfg, (1, 8, 1))
  assert local_fsdp < total / 7.9  # 'embed' over fsdp: norms' scales are the only unsharded params


def test_remat_trades_activation_memory_for_a_forward_pass():
  cfg = preset("gemma3-1b")
  plain = estimate(cfg, StepShape(32, 256, 49, 50, (1, 1, 1), compute_bytes=2))
  remat = estimate(cfg, StepShape(32, 256, 49, 50, (1, 1, 1), compute_bytes=2, remat=True))
  assert remat["activations"] < plain["activations"] / 5
  assert remat["flops"] > plain["flops"] * 1.2  # one more forward of the blocks
  assert plain["flops"] == pytest.approx(6 * 0.697e9 * 32 * 306, rel=0.35)  # ~6 x non-embedding params per token


def test_recommendation_is_the_largest_fitting_batch():
  assert (1, 8, 1) in meshes(8) and (2, 2, 2) in meshes(8) and all(a * b * c == 8 for a, b, c in meshes(8))
  plan = recommend(preset("gemma3-1b"), "h100", 8, 256, 49, 50)
  assert plan.gib_per_device <= 0.9 * 80
  bigger = estimate(preset("gemma3-1b"), StepShape(plan.global_batch * 2, 256, 49, 50, plan.mesh, remat=plan.remat,
                                                    compute_bytes=2))
  assert bigger["total"] / 2 ** 30 > 0.9 * 80  # twice the batch would not fit
  assert recommend(preset("gemma3-12b"), "tpu-v5e", 1, 256, 49, 50) is None  # 12B on one 16 GiB chip


def run_plan(*args):
  return subprocess.run([sys.executable, "-m", "calrec_jax.plan", *args], cwd=ROOT, capture_output=True, text=True)


def test_command_prints_memory_flops_and_step_time():
  out = run_plan("--preset=gemma3-1b", "--mesh=1,8,1", "--batch=64", "--compute_dtype=bfloat16", "--accelerator=h100")
  assert out.returncode == 0, out.stderr
  for word in ("params", "optimizer", "gradients", "activations", "temporaries", "total", "TFLOP", "MFU", "fits"):
    assert word in out.stdout, (word, out.stdout)
  out = run_plan("--config=configs/stage1.py", "--mesh=2,4,1")
  assert out.returncode == 0 and "global batch" in out.stdout, out.stderr


@pytest.mark.parametrize("args,message", [
    (["--preset=tiny", "--mesh=1,3,1", "--batch=16"], "--batch=16 must be divisible by data x fsdp = 3"),
    (["--preset=tiny", "--mesh=8,1"], "--mesh='8,1': give three positive device counts"),
    (["--preset=nope"], "model.preset='nope' is not a preset"),
    (["--preset=tiny", "--accelerator=tpu-v9"], "--accelerator='tpu-v9'; choose one of"),
])
def test_bad_arguments_give_one_line(args, message):
  out = run_plan(*args)
  assert out.returncode != 0
  lines = [line for line in out.stderr.splitlines() if line.startswith("error")]
  assert len(lines) == 1 and message in lines[0], out.stderr


def test_help_exits_zero_and_shows_the_examples():
  out = run_plan("--help")
  assert out.returncode == 0, out.stderr
  assert "--mesh" in out.stdout and "python -m calrec_jax.plan --table" in out.stdout


def test_matmul_flops_count_loop_bodies_by_their_trip_count():
  import jax
  import jax.numpy as jnp
  from calrec_jax.plan.flops import matmul_flops
  x, w = jax.ShapeDtypeStruct((8, 32), jnp.float32), jax.ShapeDtypeStruct((16, 32, 32), jnp.float32)
  scanned = lambda x, w: jax.lax.scan(lambda c, wi: (c @ wi, None), x, w)[0]  # noqa: E731
  assert matmul_flops(scanned, x, w) == 16 * 2 * 8 * 32 * 32
  branches = lambda x, w: jax.lax.cond(x.sum() > 0, lambda: x @ w[0] @ w[1], lambda: x @ w[0])  # noqa: E731
  assert matmul_flops(branches, x, w) == 2 * (2 * 8 * 32 * 32)  # the costlier branch
  looped = lambda x, w: jax.lax.while_loop(lambda c: c.sum() < 1, lambda c: c @ w[0], x)  # noqa: E731
  with pytest.raises(ValueError, match="trip count"):
    matmul_flops(looped, x, w)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_planned_flops_equal_the_matmuls_the_step_runs(scan_layers):
  """The planner's FLOPs (what MFU divides by) against the traced loss, whose LM head scans vocabulary chunks."""
  import flax
  import jax
  from calrec_jax.model.decoder import count_params
  from calrec_jax.plan.estimate import step_flops
  from calrec_jax.plan.flops import matmul_flops
  from calrec_jax.train import objective
  from calrec_jax.train import step as step_lib
  from calrec_jax.model.two_tower import TwoTower
  cfg = preset("small")  # sliding-window and global layers
  model = TwoTower(cfg, scan_layers=scan_layers)
  batch = variables.example_batch(4, 64, 12, 14)
  params = flax.linen.meta.unbox(
      jax.eval_shape(lambda: variables.init_boxed(model, jax.random.PRNGKey(0), batch)))
  lc = objective.LossConfig(vocab_chunk=cfg.vocab_size // 3 + 1)  # 3 chunks, the last padded
  forward = matmul_flops(lambda p, b: step_lib.calrec_loss(model, p, b, lc)[0], params, batch)
  planned = step_flops(cfg, StepShape(4, 64, 12, 14, (1, 1, 1), scan_layers=scan_layers), count_params(params))
  assert planned == pytest.approx(3 * forward, rel=2e-3)  # backward = 2x forward; norms' scales count as matmul
