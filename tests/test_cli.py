"""The commands as a user runs them: bad input is one clear line (never a traceback), SIGTERM saves a checkpoint
that a restart continues from, evaluation uses what the workdir was trained on and never overwrites results."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = ["--config=configs/demo.py:smoke", "--config.train.progress=False"]


def run(args, **kw):
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, **kw)


# (command and arguments, what the one error line must say, exit status). A new case is one line here.
BAD_INPUTS = [
    (["calrec_jax.main", *SMOKE, "--workdir={w}", "--config.train.num_stepz=5"], "did you mean 'num_steps'", 2),
    (["calrec_jax.main", *SMOKE, "--workdir={w}", "--config.trainx.num_steps=5"], "did you mean 'train'", 2),
    (["calrec_jax.main", *SMOKE, "--workdir={w}", "--config.train.num_steps=abc"], "num_steps=abc", 2),
    (["calrec_jax.main", "--config=configs/nofile.py", "--workdir={w}"], "configs/nofile.py", 2),
    (["calrec_jax.main", "--config=configs/demo.py:nope", "--workdir={w}"], "unknown demo variant 'nope'", 2),
    (["calrec_jax.main", *SMOKE, "--workdir={w}", "--config.eval.top_p=0"], "eval.top_p", 1),
    (["calrec_jax.main", *SMOKE, "--workdir={w}", "--config.data.min_attribute_coverage=2"],
     "data.min_attribute_coverage", 1),
    (["calrec_jax.main", *SMOKE, "--workdir={w}", "--config.model.preset=huge"], "model.preset='huge'", 1),
    (["calrec_jax.main", *SMOKE, "--workdir={w}", "--config.data.attributes=color"],
     "none of its 96 items has a value for data.attributes='color', so every item text would be empty", 1),
    (["calrec_jax.evaluate", *SMOKE, "--workdir={w}/none"], "no such workdir", 1),
    (["calrec_jax.evaluate", *SMOKE, "--workdir={empty}"], "nothing trained in this workdir yet", 1),
    (["calrec_jax.evaluate", *SMOKE, "--workdir={empty}", "--output={file}"], "is an existing file", 1),
    (["calrec_jax.evaluate", *SMOKE, "--workdir={trained}", "--config.model.preset=small"],
     "--config.model.preset='small', but {trained} was trained with model.preset='tiny'", 1),
    (["calrec_jax.evaluate", *SMOKE, "--workdir={trained}", "--config.model.projection_dim=64"],
     "was trained with model.projection_dim=0; evaluation reads the workdir's own model", 1),
    (["calrec_jax.main", *SMOKE, "--workdir={file}/run"], "--workdir={file}/run: cannot be written", 1),
    (["calrec_jax.main", *SMOKE, "--workdir={w}", "--config.optim.learning_rate=nan"], "optim.learning_rate=nan", 1),
    (["calrec_jax.main", *SMOKE, "--workdir={w}", "--config.data.length_buckets=abc"], "data.length_buckets", 1),
    (["calrec_jax.main", *SMOKE, "--workdir={w}", "--config.data.categories=Toys"], "unknown synthetic", 1),
    (["calrec_jax.main", *SMOKE, "--workdir={w}", "--config.eval.top_k=-5"], "eval.top_k=-5", 1),
    (["calrec_jax.main", *SMOKE, "--workdir={w}", "--config.data.packing=rows"], "data.packing='rows'", 1),
    (["calrec_jax.main", *SMOKE, "--workdir={w}", "--config.data.packing=sequence", "--config.data.pack_context=6"],
     "data.pack_context=6 must be in [1, data.pack_window - 1 = 5]", 1),
    (["calrec_jax.main", *SMOKE, "--workdir={w}", "--config.data.packing=sequence", "--config.data.pack_slots=3"],
     "data.pack_slots=3 must be >= data.pack_window - 1 = 5", 1),
    (["calrec_jax.main", *SMOKE, "--workdir={w}", "--config.loss.negatives=catalog", "--config.loss.symmetric=True"],
     "loss.symmetric is not available with loss.negatives='catalog'", 1),
    (["calrec_jax.main", *SMOKE, "--workdir={w}", "--config.eval.reference_valid_ndcg=SASRec"],
     "eval.reference_valid_ndcg='SASRec'", 1),
    (["calrec_jax.main", *SMOKE, "--workdir={w}", "--config.model.lora_rank=4", "--config.model.lora_layers=-1"],
     "model.lora_layers=-1", 1),
    (["calrec_jax.main", *SMOKE, "--workdir={w}", "--config.eval.ks=0,abc"], "eval.ks", 1),
    (["calrec_jax.main", *SMOKE, "--workdir={w}", "--config.data.categories=Office",
      "--config.data.eval_category=Garden"], "data.eval_category='Garden'", 1),
    (["calrec_jax.main", *SMOKE, "--workdir={w}", "--config.data.eval_category=Toys"], "data.eval_category='Toys'", 1),
    (["calrec_jax.main", *SMOKE, "--workdir={w}", "--config.model.lora_rank=4", "--config.model.lora_targets=qq"],
     "model.lora_targets", 1),
    (["calrec_jax.main", *SMOKE, "--workdir={w}", "--config.model.attention=cudnn"],
     "model.attention='cudnn' runs in bfloat16 only", 1),
    (["calrec_jax.main", *SMOKE, "--workdir={w}", "--config.model.attention=flash"], "model.attention='flash'", 1),
    (["calrec_jax.main", *SMOKE, "--workdir={w}", "--config.model.lora_rank=5000"],
     "model.lora_rank=5000 is not below the dimensions of", 1),
    (["calrec_jax.model.convert", "--input={w}/missing", "--output={w}/out"], "no such file or folder", 1),
    (["calrec_jax.model.convert", "--input={empty}", "--output={file}"], "--output={file}: is an existing file", 1),
    (["calrec_jax.model.convert", "--input={hf}", "--output={w}/out"], "--input={hf}: holds no tokenizer", 1),
    (["calrec_jax.model.convert", "--input={hf}", "--output={w}/out", "--tokenizer={w}/tok.model"],
     "--tokenizer={w}/tok.model: no such file", 1),
    (["calrec_jax.data.prepare", "--source=synthetic", "--output={file}"], "--output={file}: is an existing file", 1),
    (["calrec_jax.data.prepare", "--source=synthetic", "--output={file}/sub"], "--output={file}/sub: cannot be written",
     1),
    (["calrec_jax.plan", "--preset=tiny", "--batch=-8"], "--batch=-8: must be a positive count", 1),
    (["calrec_jax.plan", "--preset=tiny", "--seq=0"], "--seq=0: must be a positive count", 1),
    (["calrec_jax.plan", "--preset=tiny", "--mfu=0"], "--mfu=0.0: give the model FLOP utilisation", 1),
    (["calrec_jax.plan", "--table", "--mfu=-0.5"], "--mfu=-0.5", 1),
    (["calrec_jax.compare", "--config=configs/compare/synthetic.py:smoke", "--workdir={file}"],
     "--workdir={file}: is an existing file", 1),
    (["calrec_jax.compare", "--config=configs/compare/synthetic.py:smoke", "--workdir={w}",
      "--config.methods=sasrec,nope"], "unknown method 'nope'", 1),
    (["calrec_jax.compare", "--config=configs/compare/synthetic.py:smoke", "--workdir={w}",
      "--config.variants.calrec=loss.w_zz=1", "--config.methods=calrec"], "loss.w_zz", 1),
]


@pytest.mark.parametrize("args,message,status", BAD_INPUTS, ids=[" ".join(c[0][:1] + c[0][-1:]) for c in BAD_INPUTS])
def test_bad_input_is_one_clear_line_not_a_traceback(args, message, status, tmp_path):
  (tmp_path / "empty").mkdir()
  (tmp_path / "file").write_text("not a folder")
  (tmp_path / "trained").mkdir()  # what a trained run records of its config
  (tmp_path / "trained" / "config.json").write_text(json.dumps({"model": {"preset": "tiny", "pretrained": "",
                                                                          "projection_dim": 0}}))
  (tmp_path / "hf").mkdir()  # a HF checkpoint folder without its tokenizer files
  (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "llama"}))
  places = {"{w}": tmp_path / "w", "{empty}": tmp_path / "empty", "{file}": tmp_path / "file",
            "{trained}": tmp_path / "trained", "{hf}": tmp_path / "hf"}
  for k, v in places.items():
    message = message.replace(k, str(v))
  out = run([_fill(a, places) for a in args])
  assert out.returncode == status, (out.returncode, out.stderr[-2000:])
  assert "Traceback" not in out.stderr and "Traceback" not in out.stdout, out.stderr[-2000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and message in last, last


@pytest.mark.parametrize("module", ["calrec_jax.main", "calrec_jax.evaluate", "calrec_jax.compare",
                                    "calrec_jax.recommend", "calrec_jax.model.convert", "calrec_jax.data.prepare"])
def test_help_exits_zero_and_shows_the_pipeline_example(module):
  out = run([module, "--help"])
  assert out.returncode == 0, out.stderr[-2000:]
  assert "--workdir" in out.stdout or "--input" in out.stdout
  if module == "calrec_jax.main":
    assert "configs/demo.py:smoke --workdir=workdirs/smoke --mode=pipeline" in out.stdout


def _fill(arg, places):
  for k, v in places.items():
    arg = arg.replace(k, str(v))
  return arg


def _rows(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_same_command_continues(tmp_path):
  work = tmp_path / "run"
  args = ["calrec_jax.main", *SMOKE, f"--workdir={work}", "--config.data.categories=Office",
          "--config.data.synthetic_users=40", "--config.ckpt.every=1000", "--config.train.log_every=1",
          "--config.eval.valid_users=8", "--config.ckpt.async_save=False"]
  proc = subprocess.Popen([sys.executable, "-m", *args, "--config.train.num_steps=100000"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = work / "metrics.jsonl"
  while proc.poll() is None and not (metrics.exists() and len(_rows(metrics)) >= 3):
    time.sleep(0.5)  # progress, not a time limit: the loop ends when the run has logged three steps
  assert proc.poll() is None, proc.stderr.read()[-2000:]
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate()
  assert proc.returncode == 1, err[-2000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith("stopped: SIGTERM at step ") and "run the same command to continue" in last, last
  step = int(last.split("at step ")[1].split()[0])
  assert (work / "checkpoints" / str(step)).is_dir()
  assert "Traceback" not in err
  out = run(args + [f"--config.train.num_steps={step + 2}"])  # continue, and finish two steps later
  assert out.returncode == 0, out.stderr[-2000:]
  assert f"step {step}" in out.stderr and "resumed from" in out.stderr
  train_steps = [r["step"] for r in _rows(metrics) if "train/loss" in r]
  assert train_steps == list(range(1, step + 3))  # every step once: none lost, none repeated
  assert "wrote:" in out.stdout and "tensorboard --logdir" in out.stdout

  # evaluation uses the data the workdir was trained on (Office), not the config file's default (all four)
  ev = run(["calrec_jax.evaluate", *SMOKE, f"--workdir={work}", "--config.eval.max_users=6"])
  assert ev.returncode == 0, ev.stderr[-2000:]
  assert "data.categories='Office': what" in ev.stderr
  assert "evaluating a fixed random 6 of the 40 test users (eval.max_users=6; 0 evaluates every user)" in ev.stderr
  first = json.loads((work / "eval" / "metrics.json").read_text())
  assert first["category"] == "Office" and "popularity" in first
  again = run(["calrec_jax.evaluate", *SMOKE, f"--workdir={work}", "--config.eval.max_users=6",
               "--config.eval.num_samples=1"])
  assert again.returncode == 0, again.stderr[-2000:]
  assert json.loads((work / "eval" / "metrics.json").read_text()) == first  # earlier results kept
  assert (work / "eval-2" / "metrics.json").exists() and str(work / "eval-2") in again.stdout
  assert str(work / "eval" / "metrics.json") not in again.stdout  # what it wrote, not what was there

  # the finished run again: nothing to train, and the closing lines say its outputs are from earlier
  done = run(args + [f"--config.train.num_steps={step + 2}"])
  assert done.returncode == 0 and "nothing to train" in done.stderr, done.stderr[-2000:]
  kept = done.stdout.split("from earlier runs, kept:")[1]
  assert f"export (params, tokenizer, model config): {work / 'export'}" in kept
  assert "wrote nothing new" in done.stdout or str(work / "export") not in done.stdout.split("from earlier")[0]


def test_a_config_kept_outside_the_repository_loads_from_any_folder(tmp_path):
  """configs/ is installed with the package: a user's own config file imports it wherever it lives."""
  own = tmp_path / "experiments" / "mine.py"
  own.parent.mkdir()
  own.write_text("from configs import demo\n\n\ndef get_config():\n  c = demo.get_config('smoke')\n"
                 "  c.train.num_steps = 0\n  return c\n")
  out = subprocess.run([sys.executable, "-m", "calrec_jax.main", f"--config={own}", f"--workdir={tmp_path / 'w'}"],
                       cwd=tmp_path, capture_output=True, text=True)
  assert out.returncode == 1 and "train.num_steps=0 must be > 0" in out.stderr, out.stderr[-2000:]


@pytest.mark.parametrize("name", ["cosine", "linear", "constant"])
def test_every_schedule_takes_a_one_step_run(name):
  import ml_collections
  from calrec_jax.train.optim import schedule
  cfg = ml_collections.ConfigDict(dict(learning_rate=1e-3, warmup_steps=100, final_lr_fraction=0.1, schedule=name))
  lrs = [float(schedule(cfg, 1)(s)) for s in range(3)]
  assert all(0.0 <= lr <= 1.0001e-3 for lr in lrs) and max(lrs) > 0
