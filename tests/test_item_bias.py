"""A learned bias per catalog item (model.item_bias): the contrastive logits (q . k + bias[item]) / temperature
against a direct softmax (values and gradients, in-batch and whole-catalog), accumulation equal to one pass, SGD
steps for the bias beside AdamW, and a run whose evaluation and serving rank by v_U . v_T + bias."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from calrec_jax.model import item_ids
from calrec_jax.train import objective, optim
from calrec_jax.train.losses import bank_info_nce, info_nce
from tests.test_item_bank import _case
from tests.test_item_ids import accumulation_equals_one_pass, assert_bank_loss_is_the_plain_softmax
from tests.test_recommend import train_and_evaluate
from tests.test_train import smoke_config


def test_bank_loss_with_a_bias_is_the_softmax_over_every_items_score():
  """With an up-to-date bank, the loss is the plain softmax of (q . v_T + b) / t over every item; its gradients
  with respect to the queries, the batch's keys and EVERY item's bias are the plain ones."""
  q, _, bank, ids, valid = _case(7)
  safe = jnp.maximum(ids, 0)
  bias = 0.3 * jnp.asarray(np.random.default_rng(0).normal(size=bank.shape[0]), jnp.float32)
  t = 0.1

  def plain(q, bank, bias):
    logp = jax.nn.log_softmax((q @ bank.T + bias[None, :]) / t, axis=-1)                 # [N, I]
    nll = -jnp.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
    return (nll * valid).sum() / valid.sum()

  def ours(q, bank, bias):
    return bank_info_nce(q, bank[safe], ids, valid, bank, t, bias=bias)[0]
  in_batch, g_bias = assert_bank_loss_is_the_plain_softmax(ours, plain, q, bank, bias, ids, valid)
  assert (g_bias[~in_batch] > 0).all()  # items no query bought are pushed down
  # the softmax's gradient with respect to the bias: (the items' mean probability - their share of targets) / t
  assert abs(float(g_bias.sum())) < 1e-5


def test_in_batch_loss_with_a_bias_and_a_zero_bias_is_none():
  q, k, _, ids, valid = _case(8, items=10)
  bias = jnp.asarray(np.random.default_rng(1).normal(size=10), jnp.float32)
  lc = objective.LossConfig(weights=(("ut", 1.0),), temperature=0.1)
  embs = {"v_u": q, "v_t_given_u": q, "v_t": k}
  got = objective.TERMS["ut"].fn(objective.EmbeddingInputs(embs, ids, valid, None, item_bias=bias), lc)[0]
  # the reference: logits (q_i . k_j + bias[target_j]) / t, padding columns masked, a repeated target one column
  b = jnp.where(ids >= 0, bias[jnp.maximum(ids, 0)], 0.0)
  logits = (q @ k.T + b[None, :]) / 0.1
  same = (ids[:, None] == ids[None, :]) & ~jnp.eye(len(ids), dtype=bool)
  logits = jnp.where(same | ~valid[None, :], -1e9, logits)
  nll = -jnp.diagonal(jax.nn.log_softmax(logits, axis=-1))
  np.testing.assert_allclose(got, (nll * valid).sum() / valid.sum(), rtol=1e-6)
  zero = objective.EmbeddingInputs(embs, ids, valid, None, item_bias=jnp.zeros(10))
  none = objective.EmbeddingInputs(embs, ids, valid, None)
  np.testing.assert_allclose(objective.TERMS["ut"].fn(zero, lc)[0], objective.TERMS["ut"].fn(none, lc)[0], rtol=1e-6)
  np.testing.assert_allclose(info_nce(q, k, ids, valid, 0.1, key_bias=jnp.zeros(len(ids)))[0],
                             info_nce(q, k, ids, valid, 0.1)[0], rtol=1e-6)


def test_the_catalog_vectors_carry_the_bias_as_one_more_coordinate():
  """v_U @ v_T.T of the evaluation's vectors is v_U . v_T + bias[item]; an id outside the table (a new item) adds
  nothing; params without a bias leave both sides as they are."""
  rng = np.random.default_rng(2)
  items, users = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(2, 3)).astype(np.float32)
  params = {item_ids.BIAS: np.asarray([0.5, -1.0, 2.0], np.float32)}
  ids = np.asarray([2, -1, 0, 7])
  got = item_ids.user_side(users, params) @ item_ids.apply_to_catalog(items, params, ids).T   # [U, I]
  np.testing.assert_allclose(got, users @ items.T + np.asarray([2.0, 0.0, 0.5, 0.0])[None, :], rtol=1e-6)
  np.testing.assert_array_equal(item_ids.apply_to_catalog(items, {}, ids), items)
  np.testing.assert_array_equal(item_ids.user_side(users, {}), users)


@pytest.mark.parametrize("bank", [False, True])
def test_accumulation_equals_one_pass_with_the_bias(tiny_model, bank):
  cats, _, model, _ = tiny_model
  model = model.clone(num_item_ids=sum(len(c.catalog) for c in cats), id_offsets=False, id_bias=True)
  moved = accumulation_equals_one_pass(tiny_model, model, item_ids.BIAS, (model.num_item_ids,), bank)
  # the bank moves every item's bias (but those whose probability underflows); in-batch the targets'
  assert (moved > 0).sum() >= (len(moved) // 2 if bank else 2)
  model = model.clone(id_offsets=True)  # beside the identity table: both tables
  moved = accumulation_equals_one_pass(tiny_model, model, item_ids.BIAS, (model.num_item_ids,), bank)
  assert (moved > 0).sum() >= 2


def test_the_bias_takes_sgd_steps_and_the_rest_adamw():
  """make_optimizer(item_bias=True): the bias's update is -rate(step) x its (globally clipped) gradient at
  optim.item_bias_rate; every other param gets exactly the AdamW update it gets without a bias."""
  c = ml_collections.ConfigDict(dict(name="adamw", learning_rate=1e-3, schedule="cosine", warmup_steps=2,
                                     final_lr_fraction=0.1, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01,
                                     grad_clip_norm=1.0, item_id_sgd_rate=0.0, item_bias_rate=0.3))
  rng = np.random.default_rng(4)
  params = {item_ids.BIAS: jnp.asarray(rng.normal(size=6), jnp.float32),
            "decoder": {"w": jnp.asarray(rng.normal(size=(4, 4)), jnp.float32)}}
  ours, plain = optim.make_optimizer(c, 10, item_bias=True), optim.make_optimizer(c, 10)
  s_ours, s_plain = ours.init(params), plain.init(params)
  rate = optim.schedule(c, 10, 0.3)
  for step in range(3):
    g = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    u_ours, s_ours = ours.update(g, s_ours, params)
    u_plain, s_plain = plain.update(g, s_plain, params)
    clip = min(1.0, 1.0 / float(optax.global_norm(g)))
    np.testing.assert_allclose(u_ours[item_ids.BIAS], -float(rate(step)) * clip * np.asarray(g[item_ids.BIAS]),
                               rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(u_ours["decoder"]["w"], u_plain["decoder"]["w"], rtol=1e-6)


def test_a_bias_without_a_rate_is_a_config_error():
  from calrec_jax.config_check import validate_config
  from calrec_jax.errors import ConfigError
  c = smoke_config(2, 2)
  c.model.item_bias, c.optim.item_bias_rate = True, 0.0
  with pytest.raises(ConfigError, match="model.item_bias=True with optim.item_bias_rate=0"):
    validate_config(c)
  c.optim.item_bias_rate = 0.01
  validate_config(c)
  c.model.item_bias, c.optim.item_id_min_count = False, 3  # the rows' option needs a table
  with pytest.raises(ConfigError, match="optim.item_id_min_count=3 chooses which rows of the per-item tables"):
    validate_config(c)


def bias_config(steps, every):
  c = smoke_config(steps, every)
  c.model.item_bias = True
  c.optim.item_bias_rate = 0.5
  c.loss.negatives = "catalog"  # every item is a negative of every query: every bias moves
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  c = bias_config(4, 2)
  return train_and_evaluate(c, str(tmp_path_factory.mktemp("bias") / "run"), "dense,popularity"), c


def test_a_run_trains_the_bias_and_ranks_and_serves_with_it(trained, tmp_path):
  import shutil
  from calrec_jax.eval import evaluate as ev
  from calrec_jax.eval.recommender import Recommender
  from calrec_jax.train.checkpoint import load_params
  wd, _ = trained
  exported = load_params(os.path.join(wd, "export", "params"))
  bias = np.asarray(exported[item_ids.BIAS])
  rec = Recommender.load(wd)
  data = rec.parts.categories[rec.category]
  assert bias.shape == (len(data.catalog),) and (bias != 0).all()  # every item trained as a negative
  # the dense ranking is v_U . v_T(text) + bias, as the evaluation scores it
  text_params = {k: v for k, v in exported.items() if k != item_ids.BIAS}
  text_items = ev.item_embeddings(rec.parts, text_params, 0)                                  # [I, E]
  histories = [data.sequences[u][:-1] for u in range(4)]
  rows = [(0, h, h[-1]) for h in histories]
  users = ev.user_embeddings(rec.config, rec.parts, text_params, rows, 0)                      # [U, E]
  np.testing.assert_allclose(rec.scores(histories, "dense"), users @ text_items.T + bias[None, :], rtol=1e-5,
                             atol=1e-5)
  metrics = json.loads(open(os.path.join(wd, "eval", "metrics.json")).read())
  assert "dense" in json.dumps(metrics)
  export = tmp_path / "served"  # the export alone serves the same rankings
  shutil.copytree(os.path.join(wd, "export"), export)
  by_id = [[data.catalog.item_ids[i] for i in h] for h in histories]
  assert Recommender.load(str(export)).recommend(by_id, k=8) == rec.recommend(by_id, k=8)


def test_an_evaluation_reads_the_bias_from_the_run_not_the_config_file(trained, tmp_path):
  """`python -m calrec_jax.evaluate` with the config file the run started from (no model.item_bias): the run's
  config.json says the params hold a bias, so evaluation builds that model and ranks as the run's own config."""
  import copy
  from calrec_jax.runner import evaluate_workdir, recorded_run_config
  wd, c = trained
  plain = smoke_config(4, 2)
  plain.eval.max_users, plain.eval.retrieval = 12, "dense"
  assert not plain.model.item_bias
  config = recorded_run_config(plain, wd)
  assert config.model.item_bias and config.data.to_dict() == c.data.to_dict()
  own = copy.deepcopy(c)
  own.eval = plain.eval
  got = evaluate_workdir(config, wd, "test", out_dir=str(tmp_path / "recorded"))
  want = evaluate_workdir(own, wd, "test", out_dir=str(tmp_path / "own"))
  assert json.loads((tmp_path / "recorded" / "metrics.json").read_text())["dense"]["users"] == 12
  assert got["dense"] == want["dense"]


def test_a_stage_carries_the_bias_of_the_items_both_catalogs_hold(trained, tmp_path):
  from calrec_jax.train.checkpoint import load_params
  from calrec_jax.train.loop import train
  wd, _ = trained
  source = np.asarray(load_params(os.path.join(wd, "export", "params"))[item_ids.BIAS])
  other = bias_config(1, 1)
  other.data.categories, other.data.synthetic_users = "Garden,Office", "40,40"
  other.ckpt.init_from = wd
  other.optim.learning_rate, other.optim.item_bias_rate = 0.0, 1e-12  # (a zero rate is a config error)
  train(other, str(tmp_path / "other"))
  mixed = np.asarray(load_params(str(tmp_path / "other" / "export" / "params"))[item_ids.BIAS])
  n_garden = len(json.loads(open(tmp_path / "other" / item_ids.LAYOUT_FILE).read())["categories"][0]["item_ids"])
  np.testing.assert_allclose(mixed[n_garden:], source, atol=1e-6)  # Office's items keep their bias
  assert np.abs(mixed[:n_garden]).max() < 1e-6                      # Garden's start at zero
