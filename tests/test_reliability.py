"""Runs that never trap the user: damaged checkpoints, non-finite settings and updates, finished and changed runs."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from calrec_jax.model import variables
from calrec_jax.errors import CalrecError, ConfigError
from tests.test_train import smoke_config


def _train_steps(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r["step"] for r in map(json.loads, f) if "train/loss" in r]


def _largest_file(folder):
  files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
  return max(files, key=os.path.getsize)


DAMAGE = {
    "truncated array file": lambda step: open(_largest_file(os.path.join(step, "state")), "r+b").truncate(
        os.path.getsize(_largest_file(os.path.join(step, "state"))) // 2),
    "missing _METADATA": lambda step: os.remove(os.path.join(step, "state", "_METADATA")),
    "missing data_iter item": lambda step: __import__("shutil").rmtree(os.path.join(step, "data_iter")),
}


@pytest.mark.slow
def test_damaged_newest_checkpoints_are_moved_aside_and_the_run_finishes(tmp_path):
  """Three kinds of damage on the three newest checkpoints: the run resumes from the one good checkpoint, moves
  the damaged ones aside (never deletes them), saves those steps again and finishes; rotation keeps good ones."""
  from calrec_jax.train.checkpoint import Checkpointer
  from calrec_jax.train.loop import train
  wd = str(tmp_path / "run")
  c = smoke_config(8, 2)
  c.ckpt.keep = 4
  train(c, wd)  # checkpoints 2, 4, 6, 8
  ckpt = os.path.join(wd, "checkpoints")
  for step, damage in zip((8, 6, 4), DAMAGE):
    DAMAGE[damage](os.path.join(ckpt, str(step)))
  c = smoke_config(10, 2)
  c.ckpt.keep = 4
  train(c, wd)  # resumes from 2, saves 4..10 again
  names = sorted(os.listdir(ckpt))
  assert {"4.damaged", "6.damaged", "8.damaged"} <= set(names)  # kept for inspection
  assert sorted(int(n) for n in names if n.isdigit()) == [4, 6, 8, 10]  # rotation kept four good ones
  mgr = Checkpointer(ckpt, keep=4, async_save=False)
  assert mgr.steps() == [4, 6, 8, 10]
  mgr.close()
  assert _train_steps(wd) == list(range(1, 11))  # steps 3..8 retrained once each, none duplicated in the log


@pytest.mark.parametrize("async_save", [True, False])
def test_a_save_in_bounded_pieces_restores_the_same_state(tmp_path, async_save):
  """ckpt.save_concurrent_gb bounds the host memory a save copies at once; the checkpoint is the same."""
  from calrec_jax.train.checkpoint import Checkpointer
  ckptr = Checkpointer(str(tmp_path / "c"), keep=2, async_save=async_save, save_concurrent_gb=1)
  state = {"step": jnp.int32(7), "params": {f"w{i}": jax.random.normal(jax.random.PRNGKey(i), (64, 32)) for i in range(5)}}
  assert ckptr.save(7, state, {"position": 3}, force=True)
  ckptr.wait()
  step, restored, it_state = ckptr.restore_latest(jax.eval_shape(lambda s: s, state))
  assert step == 7 and it_state == {"position": 3}
  for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state)):
    np.testing.assert_array_equal(a, b)
  ckptr.close()


def test_no_checkpoint_is_moved_aside_when_none_restores(tmp_path):
  """All checkpoints failing means another config, not damage: an error, and every checkpoint stays."""
  from calrec_jax.errors import CheckpointError
  from calrec_jax.train.checkpoint import Checkpointer
  ckptr = Checkpointer(str(tmp_path / "c"), keep=3, async_save=False)
  state = {"w": jnp.ones((3,))}
  ckptr.save(1, state, {"step": 1}, force=True)
  ckptr.save(2, state, {"step": 2}, force=True)
  wrong = {"w": jax.ShapeDtypeStruct((4,), jnp.float32)}
  with pytest.raises(CheckpointError, match="no checkpoint restores into this config"):
    ckptr.restore_latest(wrong)
  assert sorted(os.listdir(tmp_path / "c")) == ["1", "2"]
  ckptr.close()


def test_non_finite_config_values_are_rejected_up_front():
  from calrec_jax.config_check import validate_config
  for key, value in (("optim.learning_rate", float("nan")), ("loss.temperature", float("inf")),
                     ("loss.w_tt", float("nan"))):
    c = smoke_config(2, 2)
    section, name = key.split(".")
    c[section][name] = value
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
      validate_config(c)


def test_a_non_finite_update_is_never_applied():
  """A NaN learning rate gives a finite loss and gradient but a NaN update: the step must not apply it."""
  from calrec_jax.train import objective
  from calrec_jax.train import step as step_lib
  from calrec_jax.model.two_tower import TwoTower
  from calrec_jax.model.config import preset
  model = TwoTower(preset("tiny", vocab_size=64))
  shapes = variables.example_batch(2, 16, 5, 6)
  params = variables.init_params(model, jax.random.PRNGKey(0), shapes)
  batch = {k: jnp.zeros(v.shape, v.dtype) for k, v in shapes.items()}
  batch.update(tokens=jnp.full((2, 16), 5, jnp.int32), input_mask=jnp.ones((2, 16), bool),
               history_mask=jnp.ones((2, 16), bool).at[:, 8:].set(False),
               target_mask=jnp.zeros((2, 16), bool).at[:, 8:12].set(True), lm_labels=jnp.full((2, 5), 7, jnp.int32),
               lm_positions=jnp.tile(jnp.arange(7, 12), (2, 1)), lm_weights=jnp.ones((2, 5)),
               item_tokens=jnp.full((2, 6), 7, jnp.int32), item_mask=jnp.ones((2, 6), bool),
               item_text_mask=jnp.ones((2, 6), bool), target_id=jnp.asarray([0, 1], jnp.int32),
               example_weight=jnp.ones((2,)), positions=jnp.tile(jnp.arange(16), (2, 1)),
               item_positions=jnp.tile(jnp.arange(6), (2, 1)))
  tx = optax.adamw(float("nan"))
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
  new, m = jax.jit(step_lib.make_train_step(model, tx, objective.LossConfig()))(state, batch)
  assert np.isfinite(float(m["loss"])) and int(m["skipped"]) == 1
  for a, b in zip(jax.tree_util.tree_leaves(new["params"]), jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(a, b)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(new["opt_state"]))


@pytest.mark.slow
def test_a_finished_run_started_again_does_nothing_and_a_changed_one_is_refused(tmp_path):
  from calrec_jax.runner import train_run
  wd = str(tmp_path / "run")
  first = train_run(smoke_config(4, 2), wd)
  rows = open(os.path.join(wd, "metrics.jsonl")).read()
  export_time = os.path.getmtime(os.path.join(wd, "export", "model_config.json"))
  again = train_run(smoke_config(4, 2), wd)
  assert open(os.path.join(wd, "metrics.jsonl")).read() == rows  # no duplicate validation rows
  assert os.path.getmtime(os.path.join(wd, "export", "model_config.json")) == export_time  # not re-exported
  assert again["valid/loss"] == first["valid/loss"]
  for key, value in (("model.preset", "small"), ("data.categories", "Garden")):
    c = smoke_config(6, 2)
    section, name = key.split(".")
    c[section][name] = value
    with pytest.raises(CalrecError, match=rf"{key}='{value}' \(the run in .* has"):
      train_run(c, wd)
  assert json.load(open(os.path.join(wd, "config.json")))["model"]["preset"] == "tiny"  # not rewritten


def read_tensorboard_scalars(logdir):
  """{(tag, step): [values]} as TensorBoard shows them: its own EventAccumulator over the event files in order,
  orphaned events (those a restart's purge step drops) left out."""
  from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator
  acc = EventAccumulator(str(logdir), size_guidance={SCALARS: 0}, purge_orphaned_data=True)  # 0: keep every event
  acc.Reload()
  seen = {}
  for tag in acc.Tags()["scalars"]:
    for event in acc.Scalars(tag):
      seen.setdefault((tag, event.step), []).append(event.value)
  return seen


def _logged(workdir):
  """{(tag, step): [values]} of metrics.jsonl."""
  seen = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for row in map(json.loads, f):
      for tag, value in row.items():
        if tag != "step":
          seen.setdefault((tag, row["step"]), []).append(value)
  return seen


@pytest.mark.slow
def test_a_pipeline_killed_at_the_stage_boundary_and_in_each_export_logs_every_value_once(tmp_path):
  """SIGKILL after stage 1's last checkpoint, during stage 1's export, in stage 2 before its first checkpoint and
  during stage 2's export (tests/kill_point_worker.py), each followed by the same command: both stages' metrics.jsonl
  and TensorBoard (as TensorBoard reads it) hold one value per (tag, step), the same (tag, step)s, and the losses
  and validation metrics of an uninterrupted pipeline."""
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  flags = ["--config=configs/demo.py:smoke", "--mode=pipeline", "--config.train.progress=False",
           "--config.pipeline.stage1_steps=6", "--config.pipeline.stage2_steps=6", "--config.ckpt.every=3",
           "--config.ckpt.async_save=False", "--config.train.log_every=1", "--config.train.eval_every=3",
           "--config.eval.valid_users=8", "--config.eval.max_users=8", "--config.eval.num_samples=1",
           "--config.eval.max_new_tokens=8"]
  main = [sys.executable, "-m", "calrec_jax.main"]
  ref = subprocess.run(main + flags + [f"--workdir={tmp_path / 'ref'}"], cwd=root, capture_output=True, text=True)
  assert ref.returncode == 0, ref.stderr[-2000:]
  work = tmp_path / "run"
  for point in ["stage1_final_checkpoint", "stage1_export", "stage2_step2", "stage2_export"]:
    killed = subprocess.run([sys.executable, "tests/kill_point_worker.py", point, *flags, f"--workdir={work}"],
                            cwd=root, capture_output=True, text=True)
    assert killed.returncode == -9, (point, killed.stderr[-2000:])
  out = subprocess.run(main + flags + [f"--workdir={work}"], cwd=root, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "validation of step 6 was logged before the restart" in out.stderr  # stage 2's, not run again
  for stage in ("stage1", "stage2"):
    logged, shown = _logged(work / stage), read_tensorboard_scalars(work / stage / "tensorboard")
    assert all(len(v) == 1 for v in logged.values()), (stage, {k: v for k, v in logged.items() if len(v) > 1})
    assert all(len(v) == 1 for v in shown.values()), (stage, {k: v for k, v in shown.items() if len(v) > 1})
    assert set(shown) == set(logged), (stage, set(shown) ^ set(logged))
    expected = _logged(tmp_path / "ref" / stage)
    assert set(logged) == set(expected), (stage, set(logged) ^ set(expected))
    for key in (k for k in expected if k[0] == "train/loss" or k[0].startswith("valid/")):
      assert logged[key][0] == pytest.approx(expected[key][0], rel=1e-5, abs=1e-6), (stage, key)
      assert shown[key][0] == pytest.approx(logged[key][0], rel=1e-6), (stage, key)
  assert (work / "stage2" / "eval" / "metrics.json").exists()


@pytest.mark.slow
def test_tensorboard_has_one_value_per_tag_and_step_after_a_kill_and_restart(tmp_path):
  import signal
  import subprocess
  import sys
  import time
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  work = tmp_path / "run"
  args = [sys.executable, "-m", "calrec_jax.main", "--config=configs/demo.py:smoke", f"--workdir={work}",
          "--config.train.progress=False", "--config.data.categories=Office", "--config.data.synthetic_users=40",
          "--config.ckpt.every=3", "--config.ckpt.async_save=False", "--config.train.log_every=1",
          "--config.eval.valid_users=8"]
  proc = subprocess.Popen(args + ["--config.train.num_steps=100000"], cwd=root, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  metrics = work / "metrics.jsonl"
  while proc.poll() is None and not (metrics.exists() and len(_train_steps(str(work))) >= 5
                                     and len(_train_steps(str(work))) % 3):
    time.sleep(0.2)  # until the run has logged steps past its newest checkpoint
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max(_train_steps(str(work)))
  out = subprocess.run(args + [f"--config.train.num_steps={killed_at + 3}"], cwd=root, capture_output=True,
                       text=True)
  assert out.returncode == 0, out.stderr[-2000:]
  scalars = read_tensorboard_scalars(str(work / "tensorboard"))
  assert all(len(v) == 1 for v in scalars.values()), {k: v for k, v in scalars.items() if len(v) > 1}
  assert sorted(s for t, s in scalars if t == "train/loss") == list(range(1, killed_at + 4))
  assert _train_steps(str(work)) == list(range(1, killed_at + 4))
  assert any(t.startswith("valid/dense_recall_at_10") for t, _ in scalars)  # the same names as metrics.jsonl


@pytest.mark.parametrize("damage", ["empty step folder", "unreadable step folder"])
def test_an_empty_or_unreadable_step_folder_never_blocks_saving_that_step(damage, tmp_path):
  from calrec_jax.train.checkpoint import Checkpointer
  ckptr = Checkpointer(str(tmp_path / "c"), keep=3, async_save=False)
  ckptr.save(1, {"w": jnp.ones((3,))}, {"step": 1}, force=True)
  ckptr.save(2, {"w": jnp.full((3,), 2.0)}, {"step": 2}, force=True)
  ckptr.close()
  bad = tmp_path / "c" / "3"
  bad.mkdir()
  if damage == "unreadable step folder":
    (bad / "state").write_text("not a checkpoint")
    (bad / "_CHECKPOINT_METADATA").write_text("{not json")
  ckptr = Checkpointer(str(tmp_path / "c"), keep=3, async_save=False)
  step, state, it = ckptr.restore_latest({"w": jax.ShapeDtypeStruct((3,), jnp.float32)})
  assert step == 2 and it == {"step": 2} and float(state["w"][0]) == 2.0
  ckptr.save(3, {"w": jnp.full((3,), 3.0)}, {"step": 3}, force=True)  # the step is saved again, no error
  ckptr.save(4, {"w": jnp.full((3,), 4.0)}, {"step": 4}, force=True)
  assert ckptr.steps() == [2, 3, 4]
  ckptr.close()


def test_a_non_finite_step_names_what_went_non_finite_and_the_keys_that_feed_it(tmp_path):
  from calrec_jax.train.loop import NonFiniteLossError, nonfinite_cause, train
  from test_train import smoke_config
  nan, inf = float("nan"), float("inf")
  assert "loss term 'tt'" in nonfinite_cause({"loss": nan, "loss_nig": 2.0, "loss_tt": nan, "grad_norm": nan})
  assert "model.compute_dtype" in nonfinite_cause({"loss": inf, "loss_nig": inf, "loss_tt": 1.0, "grad_norm": 1.0})
  grad = nonfinite_cause({"loss": 3.0, "loss_nig": 2.0, "loss_tt": 1.0, "grad_norm": nan})
  assert grad.startswith("the gradient is not finite") and "loss_tt=1" in grad
  assert "optim.weight_decay" in nonfinite_cause({"loss": 3.0, "loss_nig": 3.0, "grad_norm": 2.5})
  c = smoke_config(4, 2)
  c.loss.temperature = 1e-40  # positive, but the similarities / temperature overflow float32
  c.train.max_consecutive_nonfinite = 2
  with pytest.raises(NonFiniteLossError, match=r"2 non-finite steps in a row at step 2: loss term '(tt|ut)' is "
                                               r"not finite .*loss.temperature"):
    train(c, str(tmp_path / "run"))
