"""data.user_tokens: v_U as the mean over the prompt's last N tokens. The masks of the per-prefix batch, the
prompt-only batch (dense retrieval) and the packed batch name the same tokens; packed losses and gradients still
equal the per-prefix ones; N = 1 is the last prompt token's state; 0 is the paper's mean over the whole prompt."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from calrec_jax.data.examples import ExampleEncoder, user_span
from calrec_jax.errors import ConfigError


def _encoder(enc, n):
  return ExampleEncoder(enc.tok, enc.categories, dataclasses.replace(enc.spec, user_tokens=n))


def test_user_span_is_the_prompts_last_tokens_and_never_bos():
  assert user_span(20, 0) == (1, 20)      # the paper's: every prompt token but BOS
  assert user_span(20, 1) == (19, 20)     # the last token
  assert user_span(20, 5) == (15, 20)
  assert user_span(20, 50) == (1, 20)     # longer than the prompt: all of it but BOS


@pytest.mark.parametrize("n", [1, 6])
def test_training_and_prompt_only_masks_hold_the_last_n_prompt_tokens(synthetic_parts, n):
  cats, tok, base = synthetic_parts
  enc = _encoder(base, n)
  seqs = cats[0].sequences
  rows = [(seqs[u][:-1], seqs[u][-1]) for u in range(6)]
  train = enc.collate([enc.encode(0, h, t) for h, t in rows], 6)
  alone = enc.collate_prompts([enc.prompt_tokens(0, h)[0] for h, _ in rows], 6)
  for r, (h, _) in enumerate(rows):
    prompt = enc.prompt_tokens(0, h)[0]
    want = np.zeros(train["tokens"].shape[1], bool)
    want[len(prompt) - n:len(prompt)] = True
    np.testing.assert_array_equal(train["history_mask"][r], want)
    np.testing.assert_array_equal(alone["history_mask"][r], want[:alone["tokens"].shape[1]])
    assert not (train["history_mask"][r] & train["target_mask"][r]).any()


def test_last_token_user_vector_is_the_last_prompt_states_embedding(tiny_model):
  """N = 1: v_U is the embedding of the hidden state at the prompt's last token (the one that predicts the
  target's first token), computed here from the decoder's hidden states directly."""
  from calrec_jax.model.two_tower import TwoTower
  cats, base, model, params = tiny_model
  enc = _encoder(base, 1)
  seqs = cats[0].sequences
  prompts = [enc.prompt_tokens(0, seqs[u][:-1])[0] for u in range(4)]
  b = enc.collate_prompts(prompts, 4)
  got = model.apply({"params": params}, b["tokens"], b["positions"], b["input_mask"], b["history_mask"],
                    method=TwoTower.user_embedding)
  whole = base.collate_prompts(prompts, 4)  # the same tokens; the paper's mask
  assert (whole["tokens"] == b["tokens"]).all() and whole["history_mask"].sum() > b["history_mask"].sum()
  last = np.zeros_like(b["history_mask"])
  for r, p in enumerate(prompts):
    last[r, len(p) - 1] = True
  want = model.apply({"params": params}, b["tokens"], b["positions"], b["input_mask"], last,
                     method=TwoTower.user_embedding)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
  paper = model.apply({"params": params}, b["tokens"], b["positions"], b["input_mask"], whole["history_mask"],
                      method=TwoTower.user_embedding)
  assert not np.allclose(np.asarray(got), np.asarray(paper), atol=1e-3)  # the span changes v_U
  np.testing.assert_allclose(np.linalg.norm(np.asarray(got), axis=-1), 1.0, rtol=1e-5)


def test_packed_losses_and_gradients_equal_per_prefix_with_a_short_span(tiny_model):
  from calrec_jax.data.packed import PackSpec
  from calrec_jax.train import objective
  from calrec_jax.train import step as step_lib
  from tests.test_packed import _packed_and_prefix, untruncated_users
  cats, base, model, params = tiny_model
  enc = _encoder(base, 6)
  seqs = cats[0].sequences
  spec = PackSpec(window=6, context=2, max_len=768, slots=8, item_len=768)
  users = untruncated_users(enc, seqs)
  assert len(users) == 3
  pb, eb, _ = _packed_and_prefix(enc, spec, set(users))
  assert (pb["history_mask"].sum(-1)[pb["slot_weight"] > 0] == 6).all()
  f = jax.jit(jax.value_and_grad(lambda p, b: step_lib.calrec_loss(model, p, b, objective.LossConfig()),
                                 has_aux=True))
  (_, mp), gp = f(params, {k: jnp.asarray(v) for k, v in pb.items()})
  (_, me), ge = f(params, {k: jnp.asarray(v) for k, v in eb.items()})
  for k in ("loss", "loss_tt", "loss_ut"):
    np.testing.assert_allclose(mp[k], me[k], rtol=2e-5, atol=1e-6, err_msg=k)
  for a, b in zip(jax.tree_util.tree_leaves(gp), jax.tree_util.tree_leaves(ge)):
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-6)


def test_a_negative_span_is_a_config_error():
  from calrec_jax.config_check import validate_config
  from configs import base
  c = base.get_config()
  c.data.user_tokens = -1
  with pytest.raises(ConfigError, match="data.user_tokens"):
    validate_config(c)


def test_compare_results_stored_before_the_key_existed_still_match_and_a_span_does_not():
  from calrec_jax.compare import methods as methods_lib
  from configs.compare import synthetic as compare_synthetic
  cfg = compare_synthetic.get_config("smoke")
  now = {m: methods_lib.method_fingerprint(m, cfg) for m in ("sasrec", "calrec")}
  older = compare_synthetic.get_config("smoke")
  with older.calrec.data.unlocked():
    del older.calrec.data["user_tokens"]
  assert {m: methods_lib.method_fingerprint(m, older) for m in now} == now
  cfg.variants.calrec += "; data.user_tokens=1"  # a variant's own span: the baselines' results stay valid
  assert methods_lib.method_fingerprint("sasrec", cfg) == now["sasrec"]
  assert methods_lib.method_fingerprint("calrec", cfg) != now["calrec"]
