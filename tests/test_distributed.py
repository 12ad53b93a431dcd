"""Sharded runs equal single-device runs; two jax.distributed processes equal one; SIGKILL mid-run resumes exactly.

Each test runs real subprocesses (simulated CPU devices through XLA_FLAGS, the `calrec_jax.main` entry point).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


# XLA aborts a process that waits at a cross-process collective more than 40 s for the others (its default); on a
# busy 2-core machine one process can fall that far behind while compiling, so the tests allow 30 minutes.
PATIENT_COLLECTIVES = "--xla_cpu_collective_call_terminate_timeout_seconds=1800"


def env_with(devices: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  env["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices} "
                      f"{PATIENT_COLLECTIVES}").strip()  # the suite's own flags (conftest.py) kept
  return env


def main_cmd(workdir, *overrides):
  return [sys.executable, "-m", "calrec_jax.main", "--config=configs/demo.py:smoke", f"--workdir={workdir}",
          "--config.train.log_every=1", "--config.train.progress=False", "--config.eval.valid_users=8", *overrides]


def losses(workdir) -> dict[int, float]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def exported(workdir):
  from calrec_jax.train.checkpoint import load_params
  import jax
  return jax.tree_util.tree_leaves(load_params(os.path.join(workdir, "export", "params")))


def why_it_failed(stderr: str) -> str:
  """A failed process's error lines (glog E/F lines, exceptions) and the end of its stderr."""
  lines = stderr.splitlines()
  errors = [l for l in lines if l[:1] in "EF" and l[1:5].isdigit() or "Error" in l or "Check failed" in l]
  return "\n".join(errors[:30]) + "\n...\n" + "\n".join(lines[-15:])


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_mesh_shapes_equal_single_device():
  out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "mesh_worker.py")], env=env_with(8), cwd=ROOT,
                       capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.split("RESULT ", 1)[1])
  for shape in ["(8, 1, 1)", "(2, 4, 1)", "(2, 2, 2)", "(2, 2, 2) grad_accum=2"]:
    r = result[shape]
    assert r["loss_diff"] < 1e-4 and r["param_diff"] < 1e-4, (shape, r)
    if "grad_accum" not in shape:  # decoding is checked once per mesh
      assert r["sampled_equal"] and r["beams_equal"], (shape, r)
  scanned = result["(2, 2, 2) scan_layers attention=xla"]
  assert scanned["loss_diff"] < 1e-4 and scanned["param_diff"] < 1e-4, scanned
  assert result["(2, 2, 2)"]["embedding_spec"] == "P('tensor', 'fsdp')"  # params really are sharded
  constraints = result["activation_constraints"]  # activations are placed by the logical rules
  assert '[{"data", "fsdp"}, {}, {}]' in constraints  # [batch, length, embed]
  assert '[{"data", "fsdp"}, {}, {"tensor"}]' in constraints  # [batch, length, mlp]


def test_a_process_that_reaches_a_host_collective_late_is_waited_for():
  """Gloo gives up on a peer that is 30 s late to a collective and aborts both processes; the host collectives
  (model/host_collectives.py) wait at a coordination barrier first, so a 45 s delay is survived."""
  port = free_port()
  procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "late_process_worker.py"),
                             f"127.0.0.1:{port}", str(i), "45", "aligned"], env=env_with(1), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate() for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, why_it_failed(err)
    assert "RESULT [1, 2]" in out


def test_two_processes_equal_one_process(tmp_path):
  steps = ["--config.train.num_steps=4", "--config.ckpt.every=2"]
  port = free_port()
  logs = [tmp_path / f"process{i}.log" for i in range(2)]
  procs = [subprocess.Popen(main_cmd(tmp_path / "two", *steps, "--config.multihost.enabled=True",
                                     f"--config.multihost.coordinator=127.0.0.1:{port}",
                                     "--config.multihost.num_processes=2", f"--config.multihost.process_id={i}"),
                            env=env_with(1), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(logs[i], "w"))
           for i in range(2)]
  single = subprocess.run(main_cmd(tmp_path / "one", *steps), env=env_with(2), cwd=ROOT, capture_output=True,
                          text=True)
  codes = [p.wait() for p in procs]
  errs = [log.read_text() for log in logs]
  assert single.returncode == 0, single.stderr[-3000:]
  for code, e in zip(codes, errs):
    assert code == 0, why_it_failed(e)
  assert "process 1 of 2" in errs[1]
  one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
  assert sorted(one) == sorted(two) == [1, 2, 3, 4]
  np.testing.assert_allclose([two[s] for s in one], [one[s] for s in one], rtol=1e-5)
  for a, b in zip(exported(tmp_path / "one"), exported(tmp_path / "two")):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_the_packed_recipe_with_the_item_bank_trains_alike_on_8_devices_with_fsdp_and_in_two_processes(tmp_path):
  """The recipe's packed step (packed rows, catalog-vocabulary L_NIG, L_UT and L_TT against the item bank, the item
  bias, LoRA on the top block; configs/recipe.py:tiny without the single-process frozen-layer cache): data
  parallel over 8 devices, FSDP over 2, and 2 processes of 1 device each give one device's losses and export."""
  common = ["--config=configs/recipe.py:tiny", "--config.stage=stage2", "--config.data.categories=Office",
            "--config.train.num_steps=3", "--config.train.log_every=1", "--config.train.eval_every=0",
            "--config.train.progress=False", "--config.ckpt.every=3", "--config.loss.bank_refresh_steps=2",
            "--config.optim.warmup_steps=1", "--config.eval.valid_users=8", "--config.model.cache_frozen_layers=False"]

  def cmd(name, *extra):
    return [sys.executable, "-m", "calrec_jax.main", *common, f"--workdir={tmp_path / name}", *extra]

  port = free_port()
  logs = [tmp_path / f"process{i}.log" for i in range(2)]
  procs = [subprocess.Popen(cmd("two", "--config.multihost.enabled=True",
                                f"--config.multihost.coordinator=127.0.0.1:{port}",
                                "--config.multihost.num_processes=2", f"--config.multihost.process_id={i}"),
                            env=env_with(1), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(logs[i], "w"))
           for i in range(2)]
  for name, devices, extra in (("one", 1, ()), ("eight", 8, ()), ("fsdp", 2, ("--config.mesh.fsdp=2",))):
    out = subprocess.run(cmd(name, *extra), env=env_with(devices), cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, (name, why_it_failed(out.stderr))
  for p, log in zip(procs, logs):
    assert p.wait() == 0, why_it_failed(log.read_text())
  one = losses(tmp_path / "one")
  assert sorted(one) == [1, 2, 3]
  for name in ("eight", "fsdp", "two"):
    other = losses(tmp_path / name)
    assert sorted(other) == sorted(one), name
    np.testing.assert_allclose([other[s] for s in one], [one[s] for s in one], rtol=1e-5, err_msg=name)
    for a, b in zip(exported(tmp_path / "one"), exported(tmp_path / name)):
      np.testing.assert_allclose(a, b, atol=1e-5, err_msg=name)


def test_sigkill_mid_training_resumes_exactly(tmp_path):
  steps = ["--config.train.num_steps=40", "--config.ckpt.every=3", "--config.ckpt.keep=2"]
  ref_log = tmp_path / "ref.log"
  reference = subprocess.Popen(main_cmd(tmp_path / "ref", *steps), env=env_with(1), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=open(ref_log, "w"))
  victim = subprocess.Popen(main_cmd(tmp_path / "run", *steps), env=env_with(1), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  metrics = tmp_path / "run" / "metrics.jsonl"
  deadline = time.time() + 600
  killed_after = 0
  while time.time() < deadline and victim.poll() is None:
    if metrics.exists():
      with open(metrics, encoding="utf-8") as f:
        logged = [json.loads(x)["step"] for x in f if x.strip().endswith("}")]
      if logged and max(logged) >= 17:
        victim.send_signal(signal.SIGKILL)
        killed_after = max(logged)
        break
    time.sleep(0.02)
  victim.wait()
  assert victim.returncode == -signal.SIGKILL and killed_after < 40, "the run ended before it could be killed"
  resumed = subprocess.run(main_cmd(tmp_path / "run", *steps), env=env_with(1), cwd=ROOT, capture_output=True,
                           text=True)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from" in resumed.stderr
  assert reference.wait() == 0, ref_log.read_text()[-3000:]
  ref, got = losses(tmp_path / "ref"), losses(tmp_path / "run")
  assert sorted(got) == sorted(ref) == list(range(1, 41))  # no step lost or logged twice
  assert [got[s] for s in sorted(ref)] == [ref[s] for s in sorted(ref)]  # bit-identical on CPU
  for a, b in zip(exported(tmp_path / "ref"), exported(tmp_path / "run")):
    np.testing.assert_array_equal(a, b)


def test_checkpoint_of_two_processes_restores_onto_other_meshes(tmp_path):
  """Saved by 2 processes x 4 devices on mesh (2, 4, 1), restored by 1 process x 8 devices on (8, 1, 1) and on
  (1, 2, 4) into those shardings: the continued losses and the final params equal an uninterrupted run."""
  import shutil
  schedule = ["--config.optim.schedule=constant", "--config.optim.warmup_steps=1", "--config.ckpt.every=3"]
  reference = subprocess.run(main_cmd(tmp_path / "ref", "--config.train.num_steps=6", *schedule), env=env_with(8),
                             cwd=ROOT, capture_output=True, text=True)
  assert reference.returncode == 0, reference.stderr[-3000:]
  port = free_port()
  saved = tmp_path / "saved"
  logs = [tmp_path / f"process{i}.log" for i in range(2)]
  procs = [subprocess.Popen(main_cmd(saved, "--config.train.num_steps=3", *schedule, "--config.mesh.data=2",
                                     "--config.mesh.fsdp=4", "--config.multihost.enabled=True",
                                     f"--config.multihost.coordinator=127.0.0.1:{port}",
                                     "--config.multihost.num_processes=2", f"--config.multihost.process_id={i}"),
                            env=env_with(4), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(logs[i], "w"))
           for i in range(2)]
  for p, log in zip(procs, logs):
    assert p.wait() == 0, log.read_text()[-3000:]
  ref = losses(tmp_path / "ref")
  for name, mesh in (("to_8x1x1", ("8", "1", "1")), ("to_1x2x4", ("1", "2", "4"))):
    work = tmp_path / name
    shutil.copytree(saved, work)
    out = subprocess.run(main_cmd(work, "--config.train.num_steps=6", *schedule, f"--config.mesh.data={mesh[0]}",
                                  f"--config.mesh.fsdp={mesh[1]}", f"--config.mesh.tensor={mesh[2]}"),
                         env=env_with(8), cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in out.stderr and "step 3" in out.stderr
    got = losses(work)
    assert sorted(got) == [1, 2, 3, 4, 5, 6], (name, sorted(got))  # steps 1-3 logged by the saving run, once
    np.testing.assert_allclose([got[s] for s in range(1, 7)], [ref[s] for s in range(1, 7)], rtol=1e-5, err_msg=name)
    for a, b in zip(exported(tmp_path / "ref"), exported(work)):
      np.testing.assert_allclose(a, b, atol=1e-5, err_msg=name)


def test_two_process_pipeline_through_the_local_launcher_equals_one_process(tmp_path):
  """launch/local_multiprocess.sh: stage 1 -> stage 2 -> evaluation with 2 processes x 4 devices gives the losses,
  params, metrics and per-user rankings of 1 process x 8 devices; the BM25 retrieval is split between the
  processes; only process 0 writes the tables."""
  short = ["--config.pipeline.stage1_steps=6", "--config.pipeline.stage2_steps=4", "--config.ckpt.every=3",
           "--config.train.log_every=1", "--config.eval.max_users=8", "--config.eval.valid_users=8"]
  two = subprocess.run(["bash", "launch/local_multiprocess.sh", "2", "configs/demo.py:smoke", str(tmp_path / "two"),
                        "--mode=pipeline", *short], env=env_with(4), cwd=ROOT, capture_output=True, text=True)
  logs = [(tmp_path / f"two.process{i}.log").read_text() for i in range(2)]
  assert two.returncode == 0, logs[0][-2000:] + logs[1][-2000:]
  one = subprocess.run(main_cmd(tmp_path / "one", "--mode=pipeline", *short), env=env_with(8), cwd=ROOT,
                       capture_output=True, text=True)
  assert one.returncode == 0, one.stderr[-3000:]
  for stage in ("stage1", "stage2"):
    a, b = losses(tmp_path / "one" / stage), losses(tmp_path / "two" / stage)
    assert sorted(a) == sorted(b) and len(a) == (6 if stage == "stage1" else 4)
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-5)
  for x, y in zip(exported(tmp_path / "one" / "stage2"), exported(tmp_path / "two" / "stage2")):
    np.testing.assert_allclose(x, y, atol=1e-5)
  ev = [json.loads((tmp_path / w / "stage2" / "eval" / "metrics.json").read_text()) for w in ("one", "two")]
  assert ev[0]["bm25"] == ev[1]["bm25"] and ev[0]["dense"] == ev[1]["dense"]
  rankings = [(tmp_path / w / "stage2" / "eval" / "rankings_bm25.jsonl").read_text() for w in ("one", "two")]
  assert rankings[0] == rankings[1]
  assert "wrote:" not in logs[1] and "process 1 of 2" in logs[1]
  assert "process 0 ranked 4 of 8 users" in logs[0] and "process 1 ranked 4 of 8 users" in logs[1]  # BM25 split


def test_two_process_recommend_writes_what_one_process_writes(tmp_path):
  """recommend --multihost: each process ranks every second line, process 0 writes one output in input order,
  equal to a single process's, and no share file is left behind."""
  work = tmp_path / "run"
  trained = subprocess.run(main_cmd(work, "--config.train.num_steps=2", "--config.data.categories=Office",
                                    "--config.data.synthetic_users=40", "--config.eval.max_users=4"),
                           env=env_with(1), cwd=ROOT, capture_output=True, text=True)
  assert trained.returncode == 0, trained.stderr[-3000:]
  from calrec_jax.data import synthetic
  data = synthetic.make_dataset(["Office"], [40])[0]
  src = tmp_path / "in.jsonl"
  src.write_text("".join(json.dumps({"user": u, "history": [data.catalog.item_ids[i] for i in s[:-1]]}) + "\n"
                         for u, s in zip(data.user_ids[:9], data.sequences[:9])))

  def recommend(output, *extra):
    return [sys.executable, "-m", "calrec_jax.recommend", f"--workdir={work}", f"--input={src}", f"--output={output}",
            "--top_k=5", "--batch_users=2", *extra]
  port = free_port()
  logs = [tmp_path / f"recommend{i}.log" for i in range(2)]
  procs = [subprocess.Popen(recommend(tmp_path / "two.jsonl", "--multihost", f"--coordinator=127.0.0.1:{port}",
                                      "--num_processes=2", f"--process_id={i}"),
                            env=env_with(1), cwd=ROOT, stdout=subprocess.PIPE, stderr=open(logs[i], "w"), text=True)
           for i in range(2)]
  outs = [p.communicate()[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log.read_text()[-3000:]
  one = subprocess.run(recommend(tmp_path / "one.jsonl"), env=env_with(1), cwd=ROOT, capture_output=True, text=True)
  assert one.returncode == 0, one.stderr[-3000:]
  assert (tmp_path / "two.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()
  assert len((tmp_path / "two.jsonl").read_text().splitlines()) == 9
  assert "wrote:" in outs[0] and "wrote:" not in outs[1] and "process 1 of 2" in logs[1].read_text()
  assert sorted(os.listdir(tmp_path)) == sorted(["run", "in.jsonl", "one.jsonl", "two.jsonl", "recommend0.log",
                                                 "recommend1.log"])
