"""The objective as one object: terms looked up by name, weighted by loss.w_<name>, and a new term registered once
reaches the plain step, gradient accumulation (values and gradients equal) and config validation."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from calrec_jax.config_check import validate_config
from calrec_jax.data.iterators import MixtureIterator
from calrec_jax.errors import ConfigError
from calrec_jax.train import objective
from calrec_jax.train import step as step_lib
from calrec_jax.train.losses import info_nce
from configs import base


@pytest.fixture()
def extra_terms():
  """Registers two terms for one test: InfoNCE(v_U, v_T|U) and an L2 pull of v_U towards v_T (token-free)."""
  def user_pull(x, lc):
    d = ((x.embeddings["v_u"] - x.embeddings["v_t"]) ** 2).sum(-1)
    loss = (d * x.valid).sum() / jnp.maximum(x.valid.sum(), 1)
    return loss, jnp.zeros(())
  objective.register_term("uu", "embedding", objective.info_nce_term("v_u", "v_t_given_u"))
  objective.register_term("pull", "embedding", user_pull)
  yield
  del objective.TERMS["uu"], objective.TERMS["pull"]


def test_the_default_objective_is_the_papers_three_terms():
  lc = objective.loss_config(base.get_config().loss)
  assert lc.weights == (("nig", 1.0), ("tt", 0.5), ("ut", 0.5))
  assert objective.Objective(lc).metric_names("embedding") == ["loss_tt", "acc_tt", "loss_ut", "acc_ut"]


def test_a_registered_term_is_weighted_and_equal_under_accumulation(tiny_model, extra_terms):
  cats, enc, model, params = tiny_model
  batch = {k: jnp.asarray(v) for k, v in next(MixtureIterator(enc, 4, seed=3)).items()}
  section = ml_collections.ConfigDict(dict(base.get_config().loss))
  section.w_uu, section.w_pull = 0.25, 2.0
  lc = objective.loss_config(section)
  assert dict(lc.weights) == {"nig": 1.0, "tt": 0.5, "ut": 0.5, "uu": 0.25, "pull": 2.0}
  loss, m = step_lib.calrec_loss(model, params, batch, lc)
  # the total is the weighted sum of every term's own value, the new ones included
  total = sum(w * float(m[f"loss_{n}"]) for n, w in lc.weights)
  np.testing.assert_allclose(float(loss), total, rtol=1e-6)
  out, rows = step_lib.tower_outputs(model, params, batch)
  uu, _ = info_nce(out["v_u"], out["v_t_given_u"], rows["target_id"], rows["example_weight"] > 0, lc.temperature)
  np.testing.assert_allclose(float(m["loss_uu"]), float(uu), rtol=1e-6)
  # accumulation (embedding terms on the whole batch's cached embeddings) gives the same loss and gradient
  tx = optax.sgd(1.0)
  state = lambda: {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}  # noqa: E731
  whole, m_whole = jax.jit(step_lib.make_train_step(model, tx, lc))(state(), batch)
  accum, m_accum = jax.jit(step_lib.make_train_step(model, tx, lc, grad_accum=2))(state(), batch)
  for k in ("loss", "loss_uu", "loss_pull", "loss_nig"):
    np.testing.assert_allclose(float(m_accum[k]), float(m_whole[k]), rtol=1e-5, err_msg=k)
  for a, b in zip(jax.tree_util.tree_leaves(whole["params"]), jax.tree_util.tree_leaves(accum["params"])):
    np.testing.assert_allclose(a, b, atol=2e-5)
  # a weight of 0 removes the term's gradient: only the paper's terms remain
  section.w_uu = section.w_pull = 0.0
  lc0 = objective.loss_config(section)
  g0 = jax.grad(lambda p: step_lib.calrec_loss(model, p, batch, lc0)[0])(params)
  g_paper = jax.grad(lambda p: step_lib.calrec_loss(model, p, batch, objective.LossConfig())[0])(params)
  for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g_paper)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_weights_of_unknown_or_negative_terms_are_named(extra_terms):
  section = ml_collections.ConfigDict(dict(base.get_config().loss))
  section.w_typo = 1.0
  with pytest.raises(ConfigError, match="loss.w_typo: no loss term 'typo'"):
    objective.loss_config(section)
  config = base.get_config()
  config.loss.w_uu = -1.0
  with pytest.raises(ConfigError, match=r"loss.w_uu=-1.0 must be >= 0"):
    validate_config(config)
  with pytest.raises(ValueError, match="kind must be"):
    objective.register_term("bad", "sequence", lambda x, lc: (0.0, 0.0))
