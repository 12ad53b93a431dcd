"""Learned item identities (model.item_id_offsets): the item vector normalize(v_T(text) + offsets[item]) in the
losses (against a direct full-catalog softmax, values and gradients), a zero table equal to none, accumulation
equal to one pass, and a run that trains, exports, evaluates and serves the table, new items by text alone."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from calrec_jax.data.iterators import MixtureIterator
from calrec_jax.model import item_ids, variables
from calrec_jax.model.pooling import l2_normalize
from calrec_jax.train import objective
from calrec_jax.train import step as step_lib
from calrec_jax.train.losses import bank_info_nce, info_nce
from tests.test_item_bank import _case
from tests.test_recommend import train_and_evaluate
from tests.test_train import smoke_config


def test_bank_loss_with_identities_is_the_softmax_over_every_items_offset_vector():
  """With an up-to-date bank, the loss is the plain softmax of q against normalize(v_T + E) of every item; its
  gradients with respect to the queries, the batch's keys and EVERY row of the table are the plain ones."""
  q, _, bank, ids, valid = _case(5)
  safe = jnp.maximum(ids, 0)
  table = 0.3 * jnp.asarray(np.random.default_rng(0).normal(size=bank.shape), jnp.float32)
  t = 0.1

  def plain(q, bank, table):
    logp = jax.nn.log_softmax(q @ l2_normalize(bank + table).T / t, axis=-1)            # [N, I]
    nll = -jnp.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
    return (nll * valid).sum() / valid.sum()

  def ours(q, bank, table):
    return bank_info_nce(q, bank[safe], ids, valid, bank, t, offsets=table)[0]
  in_batch, g_table = assert_bank_loss_is_the_plain_softmax(ours, plain, q, bank, table, ids, valid)
  assert float(jnp.abs(g_table[~in_batch]).sum()) > 0  # negatives' identities learn too


def assert_bank_loss_is_the_plain_softmax(ours, plain, q, bank, table, ids, valid):
  """ours(q, bank, table) equals plain(q, bank, table), and so do their gradients with respect to the queries,
  the batch's keys (the bank rows of its targets) and the whole per-item `table`. Returns ([I] bool: the items
  that are a target of a real row, the table's gradient)."""
  np.testing.assert_allclose(ours(q, bank, table), plain(q, bank, table), rtol=1e-6)
  g_ours = jax.grad(ours, argnums=(0, 1, 2))(q, bank, table)
  g_plain = jax.grad(plain, argnums=(0, 1, 2))(q, bank, table)
  np.testing.assert_allclose(g_ours[0], g_plain[0], rtol=1e-5, atol=1e-7)               # queries
  in_batch = np.zeros(bank.shape[0], bool)
  in_batch[np.asarray(ids)[np.asarray(valid)]] = True
  np.testing.assert_allclose(np.asarray(g_ours[1])[in_batch], np.asarray(g_plain[1])[in_batch], rtol=1e-5,
                             atol=1e-7)                                                 # the batch's keys
  np.testing.assert_allclose(g_ours[2], g_plain[2], rtol=1e-5, atol=1e-7)               # the whole table
  return in_batch, np.asarray(g_ours[2])


def test_in_batch_loss_with_identities_and_a_zero_table_is_none():
  q, k, _, ids, valid = _case(6, items=10)
  table = 0.5 * jnp.asarray(np.random.default_rng(1).normal(size=(10, q.shape[1])), jnp.float32)
  x = objective.EmbeddingInputs({"v_u": q, "v_t_given_u": q, "v_t": k}, ids, valid, None, table)
  lc = objective.LossConfig(weights=(("ut", 1.0),), temperature=0.1)
  got = objective.TERMS["ut"].fn(x, lc)[0]
  keys = l2_normalize(k + table[jnp.maximum(ids, 0)])
  np.testing.assert_allclose(got, info_nce(q, keys, ids, valid, 0.1)[0], rtol=1e-6)
  zero = objective.EmbeddingInputs({"v_u": q, "v_t_given_u": q, "v_t": k}, ids, valid, None, jnp.zeros_like(table))
  none = objective.EmbeddingInputs({"v_u": q, "v_t_given_u": q, "v_t": k}, ids, valid, None)
  np.testing.assert_allclose(objective.TERMS["ut"].fn(zero, lc)[0], objective.TERMS["ut"].fn(none, lc)[0],
                             rtol=1e-6)
  _, _, bank, _, _ = _case(6, items=10)
  np.testing.assert_allclose(bank_info_nce(q, k, ids, valid, bank, 0.1, offsets=jnp.zeros_like(bank))[0],
                             bank_info_nce(q, k, ids, valid, bank, 0.1)[0], rtol=1e-6)


def test_an_id_outside_the_table_adds_nothing():
  v = l2_normalize(jnp.ones((3, 4)))
  table = jnp.full((2, 4), 5.0).at[1].set(-1.0)
  out = np.asarray(item_ids.with_offsets(v, table, jnp.asarray([-1, 2, 1])))
  np.testing.assert_allclose(out[:2], np.asarray(v)[:2], rtol=1e-6)  # padding and a new item: the text vector
  np.testing.assert_allclose(out[2], np.asarray(l2_normalize(v[2] - 1.0)), rtol=1e-6)


@pytest.mark.parametrize("bank", [False, True])
def test_accumulation_equals_one_pass_with_the_table(tiny_model, bank):
  cats, _, model, _ = tiny_model
  model = model.clone(num_item_ids=sum(len(c.catalog) for c in cats))
  moved = accumulation_equals_one_pass(tiny_model, model, item_ids.PARAM, (model.num_item_ids, model.cfg.d_model),
                                       bank).sum(1)
  assert (moved > 0).sum() >= (len(moved) if bank else 2)  # the bank moves every identity; in-batch the targets'


def accumulation_equals_one_pass(tiny_model, model, name: str, shape: tuple[int, ...], bank: bool) -> np.ndarray:
  """`model`'s per-item table `name` starts at zero with `shape`; from a random table, one step with
  optim.grad_accum=2 equals one pass (loss and every param), with the item bank or in-batch negatives. Returns
  |the table's change| in the one-pass step."""
  _, enc, _, _ = tiny_model
  shapes = variables.example_batch(2, enc.buckets[-1], enc.spec.target_len, enc.spec.item_len)
  params = jax.jit(lambda r: variables.init_params(model, r, shapes))(jax.random.PRNGKey(1))
  assert params[name].shape == shape
  assert float(jnp.abs(params[name]).sum()) == 0.0  # starts at zero: the text vectors alone
  params = dict(params, **{name: 0.2 * jax.random.normal(jax.random.PRNGKey(2), shape)})
  batch = {k: jnp.asarray(v) for k, v in next(MixtureIterator(enc, 4, seed=3)).items()}
  bank_arr = None
  if bank:
    from calrec_jax.train.item_bank import ItemBank
    bank_arr = ItemBank(model, enc, batch_size=16).encode(params)
  tx, lc = optax.sgd(1.0), objective.LossConfig()
  state = lambda: dict({"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)},  # noqa: E731
                       **({"bank": bank_arr} if bank else {}))
  whole, m_whole = jax.jit(step_lib.make_train_step(model, tx, lc))(state(), batch)
  accum, m_accum = jax.jit(step_lib.make_train_step(model, tx, lc, grad_accum=2))(state(), batch)
  np.testing.assert_allclose(float(m_accum["loss"]), float(m_whole["loss"]), rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(whole["params"]), jax.tree_util.tree_leaves(accum["params"])):
    np.testing.assert_allclose(a, b, atol=2e-5)
  return np.abs(np.asarray(whole["params"][name]) - np.asarray(params[name]))


def identity_config(steps, every):
  c = smoke_config(steps, every)
  c.model.item_id_offsets = True
  c.optim.learning_rate = 1e-2
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  c = identity_config(4, 2)
  c.optim.item_id_sgd_rate = 1.0  # the table by SGD: its state rides in the checkpoints like the optimizer's
  return train_and_evaluate(c, str(tmp_path_factory.mktemp("identities") / "run"), ""), c


def test_a_run_trains_exports_and_serves_the_table(trained, tmp_path):
  import shutil
  from calrec_jax.eval import evaluate as ev
  from calrec_jax.eval.recommender import Recommender
  from calrec_jax.train.checkpoint import load_params
  wd, c = trained
  exported = load_params(os.path.join(wd, "export", "params"))
  table = np.asarray(exported[item_ids.PARAM])
  rec = Recommender.load(wd)
  data = rec.parts.categories[rec.category]
  assert table.shape[0] == len(data.catalog) and np.abs(table).sum() > 0  # trained
  # the item vectors evaluation ranks with are the text vectors plus each item's identity
  text_only = ev.item_embeddings(rec.parts, {k: v for k, v in exported.items() if k != item_ids.PARAM}, 0)
  np.testing.assert_allclose(rec.item_embeddings(), np.asarray(l2_normalize(jnp.asarray(text_only) + table)),
                             rtol=1e-5, atol=1e-6)
  metrics = json.loads(open(os.path.join(wd, "eval", "metrics.json")).read())
  assert "dense" in json.dumps(metrics)
  # the export alone serves the same rankings (its serving.json names the category's rows of the table)
  export = tmp_path / "served"
  shutil.copytree(os.path.join(wd, "export"), export)
  assert json.loads((export / "serving.json").read_text())["item_id_row"] == 0
  histories = [[data.catalog.item_ids[i] for i in data.sequences[u][:-1]] for u in range(4)]
  assert Recommender.load(str(export)).recommend(histories, k=8) == rec.recommend(histories, k=8)


def test_a_new_catalog_item_is_ranked_by_its_text_and_known_items_keep_their_identity(trained, tmp_path):
  from calrec_jax.eval.recommender import Recommender
  wd, _ = trained
  base = Recommender.load(wd)
  data = base.parts.categories[base.category]
  rows = [{"id": i, **a} for i, a in zip(data.catalog.item_ids, data.catalog.attributes)]
  twin = {**rows[3], "id": "NEW-twin"}  # the text of a known item, no identity
  path = tmp_path / "catalog.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in [twin] + rows[::-1]))  # another order of the items
  rec = Recommender.load(wd, catalog=str(path))
  emb, known = rec.item_embeddings(), base.item_embeddings()
  order = {r["id"]: n for n, r in enumerate([twin] + rows[::-1])}
  for i, item_id in enumerate(data.catalog.item_ids):  # a known item keeps its vector wherever it is listed
    np.testing.assert_allclose(emb[order[item_id]], known[i], rtol=1e-5, atol=1e-6)
  from calrec_jax.eval import evaluate as ev
  text_only = ev.item_embeddings(base.parts, {k: v for k, v in base.params.items() if k != item_ids.PARAM}, 0)
  np.testing.assert_allclose(emb[0], text_only[3], rtol=1e-5, atol=1e-6)  # the twin: item 3's text alone
  assert not np.allclose(emb[0], known[3], atol=1e-4)                    # item 3 itself: text + identity


def test_a_stage_carries_the_identities_of_the_items_both_catalogs_hold(trained, tmp_path, caplog):
  import logging
  import shutil
  from calrec_jax.errors import DataError
  from calrec_jax.train.checkpoint import load_params
  from calrec_jax.train.loop import train
  wd, _ = trained
  source = np.asarray(load_params(os.path.join(wd, "export", "params"))[item_ids.PARAM])
  layout = json.loads(open(os.path.join(wd, item_ids.LAYOUT_FILE)).read())["categories"]
  assert [c["name"] for c in layout] == ["Office"] and len(layout[0]["item_ids"]) == source.shape[0]
  same = identity_config(1, 1)
  same.ckpt.init_from = wd
  same.optim.learning_rate = 0.0
  train(same, str(tmp_path / "same"))
  carried = np.asarray(load_params(str(tmp_path / "same" / "export" / "params"))[item_ids.PARAM])
  np.testing.assert_allclose(carried, source)  # a zero rate: the source's identities unchanged
  # a mixture holding the source's category: its items keep their rows (found by category and id), Garden's are 0
  other = identity_config(1, 1)
  other.data.categories, other.data.synthetic_users = "Garden,Office", "40,40"
  other.ckpt.init_from = wd
  other.optim.learning_rate = 0.0
  caplog.set_level(logging.INFO)
  train(other, str(tmp_path / "other"))
  mixed = np.asarray(load_params(str(tmp_path / "other" / "export" / "params"))[item_ids.PARAM])
  rows = json.loads(open(tmp_path / "other" / item_ids.LAYOUT_FILE).read())["categories"]
  n_garden = len(rows[0]["item_ids"])
  assert [c["name"] for c in rows] == ["Garden", "Office"] and rows[1] == layout[0]
  assert np.abs(mixed[:n_garden]).sum() == 0
  np.testing.assert_allclose(mixed[n_garden:], source)
  assert f"item_offsets: carried {source.shape[0]} of {mixed.shape[0]} items' rows" in caplog.text
  # a source without its layout file: another shape starts from zeros; a damaged one is named
  bare = tmp_path / "bare"
  shutil.copytree(wd, bare)
  os.remove(bare / item_ids.LAYOUT_FILE)
  other.ckpt.init_from = str(bare)
  train(other, str(tmp_path / "other_bare"))
  assert np.abs(np.asarray(load_params(str(tmp_path / "other_bare" / "export" / "params"))[item_ids.PARAM])).sum() == 0
  assert "starting from zeros" in caplog.text
  (bare / item_ids.LAYOUT_FILE).write_text("{not json")
  with pytest.raises(DataError, match=f"{bare / item_ids.LAYOUT_FILE}.*unreadable"):
    train(other, str(tmp_path / "other_damaged"))
  plain = smoke_config(1, 1)  # a run without identities from one with: the table is left out
  plain.ckpt.init_from = wd
  train(plain, str(tmp_path / "plain"))
  assert item_ids.PARAM not in load_params(str(tmp_path / "plain" / "export" / "params"))


def test_lora_trains_the_table_beside_the_adapters(trained, tmp_path):
  from calrec_jax.train.checkpoint import load_params
  from calrec_jax.train.loop import train
  wd, _ = trained
  c = identity_config(2, 2)
  c.model.lora_rank, c.model.lora_alpha = 4, 8.0
  c.ckpt.init_from = wd
  train(c, str(tmp_path / "lora"))
  before = np.asarray(load_params(os.path.join(wd, "export", "params"))[item_ids.PARAM])
  after = np.asarray(load_params(str(tmp_path / "lora" / "export" / "params"))[item_ids.PARAM])
  assert after.shape == before.shape and not np.allclose(after, before)


def test_sgd_rate_moves_the_table_by_its_clipped_gradient_and_the_rest_by_adamw():
  """optim.item_id_sgd_rate > 0: the table's update is -rate(step) x the (globally clipped) gradient, the other
  params get exactly the AdamW update they get without the option; 0 leaves the optimizer as it was."""
  import ml_collections
  from calrec_jax.train import optim
  c = ml_collections.ConfigDict(dict(name="adamw", learning_rate=1e-3, schedule="cosine", warmup_steps=2,
                                     final_lr_fraction=0.1, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01,
                                     grad_clip_norm=1.0, item_id_sgd_rate=0.5))
  rng = np.random.default_rng(3)
  params = {item_ids.PARAM: jnp.asarray(rng.normal(size=(6, 4)), jnp.float32),
            "decoder": {"w": jnp.asarray(rng.normal(size=(4, 4)), jnp.float32)}}
  grads = [jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
           for _ in range(3)]
  plain_c = ml_collections.ConfigDict(dict(c.to_dict(), item_id_sgd_rate=0.0))
  ours, plain = optim.make_optimizer(c, 10), optim.make_optimizer(plain_c, 10)
  s_ours, s_plain = ours.init(params), plain.init(params)
  rate = optim.schedule(c, 10, 0.5)
  for step, g in enumerate(grads):
    u_ours, s_ours = ours.update(g, s_ours, params)
    u_plain, s_plain = plain.update(g, s_plain, params)
    clip = min(1.0, 1.0 / float(optax.global_norm(g)))
    np.testing.assert_allclose(u_ours[item_ids.PARAM], -float(rate(step)) * clip * np.asarray(g[item_ids.PARAM]),
                               rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(u_ours["decoder"]["w"], u_plain["decoder"]["w"], rtol=1e-6)
    if step:  # (the warmup's first rate is 0) AdamW would move the table otherwise
      assert not np.allclose(u_plain[item_ids.PARAM], u_ours[item_ids.PARAM])


@pytest.mark.parametrize("key,value,message", [
    ("item_id_sgd_rate", 0.1, "optim.item_id_sgd_rate=0.1 trains the item identity table"),
    ("item_id_min_count", 5, "optim.item_id_min_count=5 chooses which rows of the per-item tables train")])
def test_a_table_option_without_the_table_is_a_config_error(key, value, message):
  from calrec_jax.config_check import validate_config
  from calrec_jax.errors import ConfigError
  c = smoke_config(2, 2)
  c.optim[key] = value
  with pytest.raises(ConfigError, match=message):
    validate_config(c)
  c.model.item_id_offsets = True
  validate_config(c)


def test_min_count_freezes_the_rows_of_rarer_items_and_leaves_the_rest_to_adamw():
  """optim.item_id_min_count: the frozen rows' update is exactly zero (no moment, no weight decay moves them, even
  from a non-zero start); the trained rows and every other param get exactly AdamW's update."""
  import ml_collections
  from calrec_jax.train import optim
  c = ml_collections.ConfigDict(dict(name="adamw", learning_rate=1e-3, schedule="cosine", warmup_steps=2,
                                     final_lr_fraction=0.1, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01,
                                     grad_clip_norm=1.0, item_id_sgd_rate=0.0, item_id_min_count=3))
  rng = np.random.default_rng(5)
  params = {item_ids.PARAM: jnp.asarray(rng.normal(size=(6, 4)), jnp.float32),
            "decoder": {"w": jnp.asarray(rng.normal(size=(4, 4)), jnp.float32)}}
  counts = np.asarray([0, 3, 1, 7, 2, 3])
  trained = optim.table_rows_trained(counts, 3)
  np.testing.assert_array_equal(trained, [False, True, False, True, False, True])
  assert optim.table_rows_trained(counts, 0) is None
  ours, plain = optim.make_optimizer(c, 10, trained), optim.make_optimizer(c, 10)
  s_ours, s_plain = ours.init(params), plain.init(params)
  p_ours = p_plain = params
  for _ in range(4):
    g = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    u_ours, s_ours = ours.update(g, s_ours, p_ours)
    u_plain, s_plain = plain.update(g, s_plain, p_plain)
    np.testing.assert_array_equal(np.asarray(u_ours[item_ids.PARAM])[~trained], 0.0)
    np.testing.assert_allclose(np.asarray(u_ours[item_ids.PARAM])[trained],
                               np.asarray(u_plain[item_ids.PARAM])[trained], rtol=1e-6)
    np.testing.assert_allclose(u_ours["decoder"]["w"], u_plain["decoder"]["w"], rtol=1e-6)
    p_ours, p_plain = optax.apply_updates(p_ours, u_ours), optax.apply_updates(p_plain, u_plain)
  np.testing.assert_array_equal(np.asarray(p_ours[item_ids.PARAM])[~trained],
                                np.asarray(params[item_ids.PARAM])[~trained])
  assert not np.allclose(np.asarray(p_plain[item_ids.PARAM])[~trained], np.asarray(params[item_ids.PARAM])[~trained])


def test_a_run_with_min_count_trains_only_the_rows_of_frequent_items(tmp_path):
  """Through the training loop: the exported table is zero exactly in the rows of the items training holds fewer
  than optim.item_id_min_count times (their vectors are their texts'), and moved in the others."""
  from calrec_jax.data.records import item_counts
  from calrec_jax.model.run_parts import build
  from calrec_jax.train.checkpoint import load_params
  from calrec_jax.train.loop import train
  c = identity_config(3, 3)
  c.loss.negatives = "catalog"  # every row is a negative of every query: each trained row moves
  parts = build(c, str(tmp_path / "probe"))
  counts = np.concatenate([item_counts(d.sequences, len(d.catalog)) for d in parts.categories])
  c.optim.item_id_min_count = int(np.median(counts[counts > 0])) + 1
  frequent = counts >= c.optim.item_id_min_count
  assert 0 < frequent.sum() < len(frequent)
  train(c, str(tmp_path / "run"))
  table = np.asarray(load_params(str(tmp_path / "run" / "export" / "params"))[item_ids.PARAM])
  assert table.shape[0] == len(counts)
  np.testing.assert_array_equal(table[~frequent], 0.0)
  assert (np.abs(table[frequent]).sum(1) > 0).all()
