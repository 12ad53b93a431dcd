"""Launchers by dry run: the exact commands of a v5e-16 TPU slice job and a 2-node x 8-GPU job, arguments with
spaces intact through the remote shell, and one clear error per missing setting."""
import os
import shlex
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKDIR = "/mnt/runs/stage 1"  # a space: must reach calrec_jax.main as one argument
OVERRIDE = "--config.pipeline.stage1_categories=Garden, Office"  # a space, through the remote shell


def launch(script, *args, **env):
  full_env = {k: v for k, v in os.environ.items() if k not in ("TPU_NAME", "ZONE", "ACCELERATOR", "SLURM_PROCID")}
  full_env.update(env)
  return subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args], capture_output=True, text=True,
                        env=full_env, cwd=ROOT)


def remote_argv(line: str, marker: str) -> list[str]:
  """The argv the remote shell runs: the local command's argument after `marker`, parsed again by a shell."""
  local = shlex.split(line)
  remote = next(a[len(marker):] for a in local if a.startswith(marker)) if marker else local[-1]
  return shlex.split(remote)


def test_tpu_v5e_16_job_dry_run_prints_every_step_with_arguments_intact():
  out = launch("tpu_pod.sh", "--dry-run", "all", "pipeline", "configs/stage1.py", WORKDIR, "results here", OVERRIDE,
               TPU_NAME="calrec-v5e", ZONE="us-west4-a", ACCELERATOR="v5litepod-16", BUCKET="gs-bucket")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  create, tar, scp, install, mount, stage, mkdir, copy, delete = lines
  assert shlex.split(create) == ["gcloud", "compute", "tpus", "tpu-vm", "create", "calrec-v5e", "--zone=us-west4-a",
                                 "--accelerator-type=v5litepod-16", "--version=v2-alpha-tpuv5-lite"]
  assert "--worker=all" in shlex.split(scp) and "--worker=all" in shlex.split(install)
  assert "gcsfuse --implicit-dirs gs-bucket /mnt/runs" in " ".join(remote_argv(mount, "--command="))
  argv = remote_argv(stage, "--command=")
  assert "--worker=all" in shlex.split(stage)
  main = argv[argv.index("-m") - 1:argv.index("2>&1")]
  assert main[:3] == [".venv/bin/python", "-m", "calrec_jax.main"]
  assert f"--workdir={WORKDIR}" in main and OVERRIDE in main and "--mode=pipeline" in main
  assert "--config.multihost.enabled=True" in main
  assert shlex.split(copy)[-3:] == ["results here", "--zone=us-west4-a", "--worker=0"]
  assert f"calrec-v5e:{WORKDIR}" in shlex.split(copy)
  assert shlex.split(mkdir) == ["mkdir", "-p", "results here"]
  assert shlex.split(delete)[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "calrec-v5e"]


def test_tpu_launcher_names_each_missing_setting():
  for missing, hint in (("TPU_NAME", "--tpu-name"), ("ZONE", "--zone"), ("ACCELERATOR", "--accelerator")):
    env = dict(TPU_NAME="t", ZONE="z", ACCELERATOR="v5litepod-16")
    del env[missing]
    out = launch("tpu_pod.sh", "--dry-run", "create", **env)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: {missing} is not set") and hint in out.stderr
  out = launch("tpu_pod.sh", "--dry-run", "--tpu-name=t", "--zone=z", "--accelerator=v4-32", "train", "configs/stage1.py")
  assert out.returncode == 2 and "needs CONFIG and WORKDIR" in out.stderr
  assert launch("tpu_pod.sh", "--help").returncode == 0


def test_a_config_that_cannot_run_is_refused_on_this_machine_before_any_remote_one():
  """The launchers check the config here (python -m calrec_jax.check) before creating or reaching anything."""
  tpu = launch("tpu_pod.sh", "--dry-run", "all", "pipeline", "configs/stage1.py", WORKDIR, "results",
               "--config.train.num_stepz=3", TPU_NAME="t", ZONE="z", ACCELERATOR="v5litepod-16")
  gpu = launch("multihost_gpu.sh", "--dry-run", "--launcher=slurm", "--nodes=2", "pipeline", "configs/stage1.py",
               WORKDIR, "--config.pipeline.stage2_steps=0")
  for out, message in ((tpu, "did you mean 'num_steps'"), (gpu, "pipeline.stage2_steps=0 must be > 0")):
    assert out.returncode == 2 and out.stdout == "", out.stdout  # nothing created, not even printed
    assert out.stderr.strip().splitlines()[-1].startswith("error: ") and message in out.stderr


def test_gpu_two_nodes_by_eight_dry_run_for_slurm_and_ssh():
  out = launch("multihost_gpu.sh", "--dry-run", "--launcher=slurm", "--nodes=2", "--gpus-per-node=8", "train",
               "configs/stage1.py", WORKDIR, OVERRIDE)
  assert out.returncode == 0, out.stderr
  (line,) = out.stdout.strip().splitlines()
  argv = shlex.split(line)
  assert argv[:5] == ["srun", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8", "--kill-on-bad-exit=1"]
  assert argv[-5:] == ["--launcher=here", "train", "configs/stage1.py", WORKDIR, OVERRIDE]
  # each SLURM task: its process id from SLURM_PROCID, the coordinator from the environment
  task = launch("multihost_gpu.sh", "--dry-run", "--launcher=here", "train", "configs/stage1.py", WORKDIR, OVERRIDE,
                COORDINATOR="node1:12355", SLURM_NTASKS="2", SLURM_PROCID="1")
  main = shlex.split(task.stdout.strip())
  assert {"--config.multihost.coordinator=node1:12355", "--config.multihost.num_processes=2",
          "--config.multihost.process_id=1", f"--workdir={WORKDIR}", OVERRIDE} <= set(main)
  out = launch("multihost_gpu.sh", "--dry-run", "--launcher=ssh", "--hosts=gpu-a,gpu-b", "--port=2222", "pipeline",
               "configs/stage1.py", WORKDIR, OVERRIDE)
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 2
  for i, (line, host) in enumerate(zip(lines, ("gpu-a", "gpu-b"))):
    local = shlex.split(line)
    assert local[:2] == ["ssh", host]
    remote = shlex.split(local[2])
    assert "COORDINATOR=gpu-a:2222" in remote and "NUM_HOSTS=2" in remote and f"HOST_ID={i}" in remote
    assert remote[-4:] == ["pipeline", "configs/stage1.py", WORKDIR, OVERRIDE]


def test_gpu_launcher_names_each_missing_setting():
  cases = [((), "LAUNCHER is not set"), (("--launcher=slurm",), "NODES is not set"),
           (("--launcher=ssh",), "HOSTS is not set"), (("--launcher=here",), "COORDINATOR is not set")]
  for flags, message in cases:
    out = launch("multihost_gpu.sh", "--dry-run", *flags, "train", "configs/stage1.py", "/w")
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith(f"error: {message}"), out.stderr
  out = launch("multihost_gpu.sh", "--dry-run", "--launcher=slurm", "--nodes=2", "fly", "c", "w")
  assert out.returncode == 2 and "MODE must be" in out.stderr


def test_the_recipe_script_runs_both_stages_and_the_evaluation_on_a_tiny_config(tmp_path):
  """launch/recipe.sh (the accelerator recipe) through the same code path on CPU: stage 1 -> stage 2 -> evaluation,
  then the table and each stage's throughput."""
  import sys
  workdir = str(tmp_path / "recipe run")
  out = launch("recipe.sh", "--variant=tiny", workdir, "--config.train.progress=false", PYTHON=sys.executable)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "stage1:" in out.stdout and "stage2:" in out.stdout and "examples/s" in out.stdout
  assert "| CALRec (dense) | 24 |" in out.stdout
  assert os.path.exists(os.path.join(workdir, "stage2", "time_to_quality.png"))
  bad = launch("recipe.sh", "--variant=huge", workdir)
  assert bad.returncode == 2 and bad.stderr.strip() == "error: --variant must be gpu, cpu or tiny (got 'huge')"


def test_every_recipe_variant_is_a_valid_config_with_the_measured_options():
  """configs/recipe.py: each variant passes the config checks a run makes first; every variant learns the item bias
  and the LoRA variants cache the frozen blocks (the options measured better on Scientific, docs/training.md)."""
  import pytest

  from calrec_jax.config_check import validate_config
  from configs import recipe
  for variant in ("gpu", "cpu", "tiny"):
    c = recipe.get_config(variant)
    validate_config(c)
    assert c.model.item_bias and c.loss.negatives == "catalog" and c.data.packing == "sequence", variant
    assert c.model.cache_frozen_layers == (c.model.lora_layers > 0), variant
  with pytest.raises(ValueError, match="unknown recipe variant"):
    recipe.get_config("huge")
