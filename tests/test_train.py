"""Fused loss against a plain reference, contrastive masking, and exact resume from checkpoints."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from calrec_jax.train.losses import chunked_lm_loss, info_nce


@pytest.mark.parametrize("chunk", [8, 64])  # 5 chunks, the last padded (rematerialised); one whole chunk
@pytest.mark.parametrize("softcap", [0.0, 3.0])  # Gemma 2's final soft-cap: logits -> cap * tanh(logits / cap)
def test_chunked_lm_loss_equals_full_softmax_values_and_grads(softcap, chunk):
  rng = np.random.default_rng(0)
  h = jnp.asarray(rng.normal(size=(3, 5, 8)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(37, 8)), jnp.float32)  # 37: not a multiple of the chunk
  labels = jnp.asarray(rng.integers(0, 37, size=(3, 5)))
  weights = jnp.asarray(rng.random((3, 5)) > 0.3, jnp.float32)

  labels = labels.at[0, :2].set(jnp.argmax(jnp.einsum("LD,VD->LV", h[0, :2], w), -1))  # two hits at least

  def plain(h, w):
    logits = jnp.einsum("BLD,VD->BLV", h, w)
    logp = jax.nn.log_softmax(jnp.tanh(logits / softcap) * softcap if softcap else logits, -1)
    nll = -jnp.take_along_axis(logp, labels[..., None], -1)[..., 0]
    return (nll * weights).sum() / weights.sum()

  ours = lambda h, w: chunked_lm_loss(h, w, labels, weights, chunk=chunk, softcap=softcap)[0]  # noqa: E731
  np.testing.assert_allclose(ours(h, w), plain(h, w), rtol=1e-5)
  hits = jnp.argmax(jnp.einsum("BLD,VD->BLV", h, w), -1) == labels
  acc = chunked_lm_loss(h, w, labels, weights, chunk=chunk, softcap=softcap)[1]
  np.testing.assert_allclose(acc, (hits * weights).sum() / weights.sum(), rtol=1e-6)
  assert acc > 0
  for a, b in zip(jax.grad(ours, (0, 1))(h, w), jax.grad(plain, (0, 1))(h, w)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_info_nce_masks_duplicate_targets_and_padding():
  rng = np.random.default_rng(1)
  q = rng.normal(size=(4, 6)).astype(np.float32)
  q /= np.linalg.norm(q, axis=1, keepdims=True)
  k = q.copy()
  ids = jnp.asarray([7, 7, 3, 5])
  valid = jnp.asarray([True, True, True, False])
  loss, _ = info_nce(jnp.asarray(q), jnp.asarray(k), ids, valid, 1.0)
  logits = q @ k.T / 1.0
  expect = []
  for i in range(3):
    allowed = [j for j in range(3) if j == i or ids[j] != ids[i]]
    expect.append(-(logits[i, i] - np.log(np.exp(logits[i, allowed]).sum())))
  np.testing.assert_allclose(loss, np.mean(expect), rtol=1e-5)


def smoke_config(num_steps, every):
  from configs import demo
  c = demo.get_config("smoke")
  c.data.categories = "Office"
  c.data.synthetic_users = "40"
  c.train.num_steps = num_steps
  c.train.progress = False
  c.train.log_every = 1
  c.ckpt.every = every
  c.ckpt.async_save = False
  c.eval.valid_users = 8
  c.data.batch_size = 8
  c.optim.schedule = "constant"  # the schedule must not depend on num_steps, which differs between the runs
  c.optim.warmup_steps = 1
  return c


def test_resume_reproduces_uninterrupted_run(tmp_path):
  from calrec_jax.train.loop import train
  from calrec_jax.train.checkpoint import load_params
  train(smoke_config(6, 6), str(tmp_path / "full"))
  train(smoke_config(3, 3), str(tmp_path / "part"))  # stops at step 3 with a checkpoint
  train(smoke_config(6, 3), str(tmp_path / "part"))  # resumes at step 3
  read = lambda d: {r["step"]: r["train/loss"] for r in map(json.loads, open(tmp_path / d / "metrics.jsonl")) if "train/loss" in r}  # noqa: E731
  full, part = read("full"), read("part")
  assert [full[s] for s in range(1, 7)] == pytest.approx([part[s] for s in range(1, 7)], rel=1e-6)
  a = load_params(str(tmp_path / "full" / "export" / "params"))
  b = load_params(str(tmp_path / "part" / "export" / "params"))
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(x, y, atol=1e-6)
  assert os.path.exists(tmp_path / "full" / "training_curves.png")
  assert os.listdir(tmp_path / "full" / "tensorboard")


def test_a_stop_inside_a_logging_window_logs_the_uninterrupted_runs_mean_after_the_resume(tmp_path, monkeypatch):
  """train.log_every=4, stopped (as by SIGINT) after step 5: the checkpoint carries the window's sums, so the row
  of step 8 after the resume averages steps 5-8 like the uninterrupted run's, not only steps 6-8."""
  from calrec_jax.train import loop

  def config():
    c = smoke_config(8, 100)
    c.train.log_every = 4
    return c
  loop.train(config(), str(tmp_path / "full"))
  stops = iter([False] * 4 + [True])
  with monkeypatch.context() as m:
    m.setattr(loop.StopSignals, "stop_now", lambda self: next(stops))
    with pytest.raises(loop.TrainingInterrupted, match="at step 5 of 8"):
      loop.train(config(), str(tmp_path / "part"))
  loop.train(config(), str(tmp_path / "part"))
  read = lambda d: {r["step"]: r["train/loss"] for r in map(json.loads, open(tmp_path / d / "metrics.jsonl")) if "train/loss" in r}  # noqa: E731
  full, part = read("full"), read("part")
  assert sorted(full) == sorted(part) == [4, 8]
  assert part[8] == pytest.approx(full[8], rel=1e-6)


def test_a_scanned_run_keeps_its_blocks_stacked_and_trains_resumes_and_exports_like_an_unscanned_one(tmp_path):
  """With scan_layers the train state holds the blocks stacked (model/layer_stack.py): the losses, the resume
  from a checkpoint and the exported per-layer params are those of the unscanned run, and the workdir refuses
  to continue with scan_layers flipped."""
  import orbax.checkpoint as ocp
  from calrec_jax.errors import CalrecError
  from calrec_jax.model.layer_stack import STACKED
  from calrec_jax.train.checkpoint import load_params, params_from_workdir
  from calrec_jax.train.loop import train

  def scanned(num_steps, every):
    c = smoke_config(num_steps, every)
    c.model.scan_layers = True
    return c
  train(smoke_config(4, 2), str(tmp_path / "plain"))
  train(scanned(2, 2), str(tmp_path / "scan"))  # stops at step 2 with a checkpoint
  train(scanned(4, 2), str(tmp_path / "scan"))  # resumes at step 2
  read = lambda d: [r["train/loss"] for r in map(json.loads, open(tmp_path / d / "metrics.jsonl")) if "train/loss" in r]  # noqa: E731
  assert read("scan") == pytest.approx(read("plain"), rel=1e-5) and len(read("scan")) == 4
  from calrec_jax.train.optim import schedule
  rows = [r for r in map(json.loads, open(tmp_path / "plain" / "metrics.jsonl")) if "train/loss" in r]
  lr = schedule(smoke_config(4, 2).optim, 4)
  assert [r["train/learning_rate"] for r in rows] == pytest.approx([float(lr(r["step"] - 1)) for r in rows])
  assert rows[-1]["train/learning_rate"] > 0  # logged: the rate each step's update used
  mgr = ocp.CheckpointManager(str(tmp_path / "scan" / "checkpoints"), item_names=("state", "data_iter"))
  saved = mgr.restore(4, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  assert STACKED in saved["params"]["decoder"] and "layers_0" not in saved["params"]["decoder"]
  moments = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(saved["opt_state"])]
  assert any(STACKED in k for k in moments) and not any("layers_0" in k for k in moments)  # AdamW's alike
  plain = load_params(str(tmp_path / "plain" / "export" / "params"))
  for got in (load_params(str(tmp_path / "scan" / "export" / "params")), params_from_workdir(str(tmp_path / "scan"), 4)):
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(plain)
    for x, y in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(plain)):
      np.testing.assert_allclose(x, y, atol=1e-5)
  with pytest.raises(CalrecError, match="model.scan_layers=False"):
    train(smoke_config(6, 2), str(tmp_path / "scan"))


def test_evaluate_a_named_checkpoint_and_reject_a_mismatched_config(tmp_path):
  from calrec_jax.errors import CheckpointError
  from calrec_jax.runner import evaluate_workdir
  from calrec_jax.train.loop import train
  wd = str(tmp_path / "run")
  train(smoke_config(4, 2), wd)
  c = smoke_config(4, 2)
  c.eval.max_users, c.eval.num_samples, c.eval.max_new_tokens, c.eval.beam_search = 6, 2, 12, True
  results = evaluate_workdir(c, wd, split="valid", step=2)
  out = tmp_path / "run" / "eval_step2"
  saved = json.load(open(out / "metrics.json"))
  assert saved["split"] == "valid" and saved["bm25"]["users"] == saved["dense"]["users"] == 6
  assert saved["bm25"] == pytest.approx(results["bm25"])
  rows = [json.loads(x) for x in open(out / "rankings_bm25.jsonl")]
  assert len(rows) == 6 and all(len(r["generations"]) == 2 for r in rows)
  assert (out / "metrics.md").read_text().count("| CALRec") == 2
  with pytest.raises(CheckpointError, match="no checkpoint at step 3"):
    evaluate_workdir(c, wd, step=3)
  c.model.projection_dim = 16  # a model with a projection head the checkpoint does not have
  with pytest.raises(CheckpointError, match="missing.*proj"):
    evaluate_workdir(c, wd)


def test_a_run_initialised_from_another_reads_its_config_and_tokenizer_not_the_pretrained_weights(tmp_path):
  """Stage 2 (and its evaluation) take params, tokenizer and model config from the ckpt.init_from run: the
  pretrained weights, a 1 GB read and dequantisation for Gemma-3-270M, are not loaded again."""
  from calrec_jax.model.config import ModelConfig
  from calrec_jax.train.loop import train
  from calrec_jax.model.run_parts import build
  from calrec_jax.errors import ConfigError
  first = str(tmp_path / "stage1")
  train(smoke_config(2, 2), first)
  recorded = json.load(open(os.path.join(first, "config.json")))
  recorded["model"]["pretrained"] = "no-such-weights"  # as if stage 1 had started from these weights
  json.dump(recorded, open(os.path.join(first, "config.json"), "w"))
  c = smoke_config(2, 2)
  c.model.pretrained = "no-such-weights"  # reading them would raise
  c.ckpt.init_from = first
  parts = build(c, str(tmp_path / "stage2"))
  assert parts.pretrained_params is None
  assert parts.model_cfg == ModelConfig.from_dict(json.load(open(os.path.join(first, "model_config.json"))))
  assert parts.tokenizer.encode("Office desk lamp") == build(smoke_config(2, 2), first).tokenizer.encode("Office desk lamp")
  other = smoke_config(2, 2)  # a config naming another model than the init run trained: an error, not a switch
  other.model.pretrained = "gemma3-270m-gguf"
  other.ckpt.init_from = first
  with pytest.raises(ConfigError, match=r"model.pretrained='gemma3-270m-gguf', but ckpt.init_from=.* trained "
                                        r"model.pretrained='no-such-weights'"):
    build(other, str(tmp_path / "stage2b"))


@pytest.mark.parametrize("width", [8, 300, 1024])
def test_blocked_max_and_first_argmax_equal_jnp_on_ties(width):
  """The LM loss's accuracy takes the FIRST index of the max, as jnp.argmax does, also when values tie."""
  from calrec_jax.train.losses import _max_and_first_argmax
  z = jnp.asarray(np.random.default_rng(width).integers(0, 5, (3, 7, width)), jnp.float32)  # many ties
  zmax, first = _max_and_first_argmax(z)
  np.testing.assert_array_equal(zmax, z.max(-1))
  np.testing.assert_array_equal(first, jnp.argmax(z, -1))


def test_packed_training_with_the_item_bank_resumes_exactly_and_plots_time_to_quality(tmp_path):
  """The packed recipe's options (packed rows, catalog-vocabulary L_NIG, item-bank negatives refreshed every 2
  steps with 4 sampled catalog items per step, LoRA on the top block): stopped at step 3 and resumed, the losses,
  the bank and the exported params are the uninterrupted run's; examples seen and training time carry across the resume into the validation rows."""
  import orbax.checkpoint as ocp
  from calrec_jax.train.checkpoint import load_params
  from calrec_jax.runner import train_run

  def packed(num_steps, every):
    c = smoke_config(num_steps, every)
    c.data.packing, c.loss.lm_vocab, c.loss.negatives, c.loss.bank_refresh_steps = "sequence", "catalog", "catalog", 2
    c.loss.sampled_negatives = 4  # catalog items drawn per step: a resume draws what the uninterrupted run drew
    c.data.batch_size, c.data.pack_max_len, c.data.pack_item_len = 2, 256, 256
    c.model.lora_rank, c.model.lora_layers = 4, 1
    c.train.eval_every, c.eval.reference_valid_ndcg = 2, "SASRec=0.05"
    return c
  train_run(packed(6, 6), str(tmp_path / "full"))
  train_run(packed(3, 3), str(tmp_path / "part"))
  train_run(packed(6, 3), str(tmp_path / "part"))
  rows = lambda d: [json.loads(x) for x in open(tmp_path / d / "metrics.jsonl")]  # noqa: E731
  losses = lambda d: {r["step"]: r["train/loss"] for r in rows(d) if "train/loss" in r}  # noqa: E731
  full, part = losses("full"), losses("part")
  assert sorted(full) == list(range(1, 7)) and [full[s] for s in full] == pytest.approx([part[s] for s in full], rel=1e-6)
  assert all(r["perf/examples_per_s"] > 0 for r in rows("full") if "perf/examples_per_s" in r)
  seen = {r["step"]: r["perf/examples_seen"] for r in rows("part") if "perf/examples_seen" in r}
  seen_full = {r["step"]: r["perf/examples_seen"] for r in rows("full") if "perf/examples_seen" in r}
  assert {s: seen[s] for s in seen_full} == seen_full and seen[6] > seen[4] > seen[2] > 0  # across the resume
  a, b = (load_params(str(tmp_path / d / "export" / "params")) for d in ("full", "part"))
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(x, y, atol=1e-6)
  mgr = ocp.CheckpointManager(str(tmp_path / "part" / "checkpoints"), item_names=("state", "data_iter"))
  saved = mgr.restore(6, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  assert saved["bank"].shape[0] == 96 and np.abs(saved["bank"]).sum() > 0
  assert os.path.exists(tmp_path / "part" / "time_to_quality.png")
