"""Packed user sequences (data/packed.py): one pass per unit gives the same losses and gradients as the per-prefix
examples of its slots; units cover every training target once; the catalog sub-vocabulary L_NIG equals the
full-vocabulary log-softmax restricted to those tokens."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from calrec_jax.data.iterators import PackedMixtureIterator
from calrec_jax.data.packed import PackedEncoder, PackSpec, training_units
from calrec_jax.data.records import split_examples
from calrec_jax.train import objective
from calrec_jax.train import step as step_lib


@pytest.fixture(scope="module")
def tiny(tiny_model):
  return tiny_model


def test_units_cover_every_training_target_once():
  rng = np.random.default_rng(0)
  seqs = [list(rng.integers(0, 50, size=n)) for n in (3, 4, 5, 9, 17, 30)]
  for spec in (PackSpec(window=6, context=2), PackSpec(window=3, context=1), PackSpec(window=8, context=7)):
    units = training_units(seqs, spec)
    covered = sorted((int(u), t) for u, first, end in units for t in range(first, end))
    assert covered == sorted(split_examples(seqs, "train"))
    for u, first, end in units:  # every slot sees the context (or the whole training history before it)
      lo = max(0, end - spec.window)
      assert first - lo >= min(spec.context, first) and end - first <= spec.window - 1


def _packed_and_prefix(enc, units_spec, users, cat=0):
  """A packed batch of the users' units and the per-prefix batch of exactly its slots (in slot order)."""
  packed = PackedEncoder(enc, units_spec)
  seqs = enc.categories[cat].sequences
  rows = [r for r in training_units(seqs, units_spec) if r[0] in users]
  units = [packed.encode_unit(cat, *(int(x) for x in r)) for r in rows]
  pb = packed.collate(packed.pack(units))
  examples = []
  for (u, first, end) in rows:
    for t in range(first, end):
      examples.append(enc.encode(cat, seqs[u][:t], seqs[u][t]))
  return pb, enc.collate(examples), packed


def untruncated_users(enc, seqs, count=3):
  """Users with 3-5 training items whose every per-prefix example keeps its whole history (no truncation either
  way), so packed and per-prefix batches see the same tokens."""
  fits = lambda s: all(enc.encode(0, s[:t], s[t])["history_kept"] == t for t in range(1, len(s) - 2))  # noqa: E731
  return [u for u, s in enumerate(seqs) if 3 <= len(s) - 2 <= 5 and fits(s)][:count]


def test_packed_losses_and_gradients_equal_per_prefix(tiny):
  cats, enc, model, params = tiny
  seqs = cats[0].sequences
  spec = PackSpec(window=6, context=2, max_len=768, slots=8, item_len=768)
  users = untruncated_users(enc, seqs)
  assert len(users) == 3
  pb, eb, packed = _packed_and_prefix(enc, spec, set(users))
  assert packed.dropped_targets == 0 and pb["slot_weight"].sum() == len(eb["target_id"])
  assert pb["segment_ids"].max() >= 2  # several units share a row
  assert pb["slot_weight"].sum() < pb["slot_weight"].size  # unused slots are padding
  for lc in (objective.LossConfig(), objective.LossConfig(lm_vocab=enc_vocab(enc))):
    f = jax.jit(jax.value_and_grad(lambda p, b: step_lib.calrec_loss(model, p, b, lc), has_aux=True))
    (lp, mp), gp = f(params, {k: jnp.asarray(v) for k, v in pb.items()})
    (le, me), ge = f(params, {k: jnp.asarray(v) for k, v in eb.items()})
    for k in ("loss", "loss_nig", "loss_tt", "loss_ut", "acc_nig"):
      np.testing.assert_allclose(mp[k], me[k], rtol=2e-5, atol=1e-6, err_msg=k)
    for a, b in zip(jax.tree_util.tree_leaves(gp), jax.tree_util.tree_leaves(ge)):
      np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-6)


def enc_vocab(enc):
  from calrec_jax.data.examples import catalog_vocabulary
  return catalog_vocabulary(enc)


def test_catalog_vocabulary_loss_equals_restricted_log_softmax(tiny):
  cats, enc, model, params = tiny
  vocab = enc_vocab(enc)
  assert enc.tok.eos_id in vocab and list(vocab) == sorted(set(vocab))
  batch = {k: jnp.asarray(v) for k, v in enc.collate([enc.encode(0, s[:3], s[3]) for s in cats[0].sequences[:4]]).items()}
  out = model.apply({"params": params}, batch)
  lc = objective.LossConfig(lm_vocab=vocab, vocab_chunk=64)
  def nig_of(lc):
    return objective.Objective(lc).token_loss(step_lib.token_inputs(model, params, out, batch))[1]["loss_nig"]
  nig = nig_of(lc)
  logits = model.apply({"params": params}, out["lm_hidden"], method=lambda m, h: m.decoder.logits(h))  # [B, Lt, V]
  sub = jax.nn.log_softmax(logits[..., np.asarray(vocab)], axis=-1)
  col = np.searchsorted(np.asarray(vocab), np.asarray(batch["lm_labels"]))
  w = np.asarray(batch["lm_weights"])
  assert np.all(np.isin(np.asarray(batch["lm_labels"])[w > 0], vocab))
  ref = -(np.take_along_axis(np.asarray(sub), np.minimum(col, len(vocab) - 1)[..., None], -1)[..., 0] * w).sum() / w.sum()
  np.testing.assert_allclose(nig, ref, rtol=1e-5)
  full = nig_of(objective.LossConfig())
  assert float(full) > float(nig)  # the full softmax spreads mass over tokens no item text uses


def test_packed_iterator_resumes_and_counts_units(synthetic_parts):
  _, _, enc = synthetic_parts
  spec = PackSpec(window=5, context=2, max_len=384, item_len=4 * 66)
  a = PackedMixtureIterator(PackedEncoder(enc, spec), 4, seed=3)
  for _ in range(3):
    next(a)
  state = a.get_state()
  want = next(a)
  b = PackedMixtureIterator(PackedEncoder(enc, spec), 4, seed=3)
  b.set_state(state)
  got = next(b)
  for k in want:
    np.testing.assert_array_equal(want[k], got[k], err_msg=k)
  assert sum(state["drawn"]) >= 12 and want["history_mask"].shape[1] == spec.slots
  assert np.all(want["example_weight"] == 1) and want["slot_weight"].sum() > 4 * (spec.window - 1) / 2


def test_long_window_drops_oldest_items_to_fit(synthetic_parts):
  cats, _, enc = synthetic_parts
  seqs = cats[0].sequences
  u = max(range(len(seqs)), key=lambda i: len(seqs[i]))
  small = PackSpec(window=8, context=2, max_len=2 * (len(enc.header) + 80) + 80, item_len=7 * 66)
  packed = PackedEncoder(enc, small)
  rows = [r for r in training_units(seqs, small) if r[0] == u]
  for r in rows:
    unit = packed.encode_unit(0, *(int(x) for x in r))
    assert len(unit["ids"]) <= small.max_len
    for item, start, stop in unit["slots"]:
      assert unit["ids"][start:stop] == enc.item_tokens(0, item)


@pytest.mark.parametrize("with_bank", [False, True])
def test_packed_gradient_accumulation_equals_the_whole_batch_step(tiny, with_bank):
  """Microbatches of packed rows: the same loss and update as the whole batch (negatives: the whole batch's slots,
  or the item bank)."""
  import optax
  from calrec_jax.train.item_bank import ItemBank
  cats, enc, model, params = tiny
  packed = PackedEncoder(enc, PackSpec(window=5, context=2, max_len=384, slots=8, item_len=6 * 66))
  it = PackedMixtureIterator(packed, 4, seed=5)
  batch = {k: jnp.asarray(v) for k, v in next(it).items()}
  tx = optax.sgd(1.0)  # update = -gradient
  lc = objective.LossConfig(lm_vocab=enc_vocab(enc))

  def state():
    s = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    return dict(s, bank=ItemBank(model, enc, 32).encode(params)) if with_bank else s
  whole, m_whole = jax.jit(step_lib.make_train_step(model, tx, lc))(state(), batch)
  accum, m_accum = jax.jit(step_lib.make_train_step(model, tx, lc, grad_accum=2))(state(), batch)
  for k in ("loss", "loss_nig", "loss_tt", "loss_ut", "examples"):
    np.testing.assert_allclose(float(m_accum[k]), float(m_whole[k]), rtol=1e-5, err_msg=k)
  for p0, a, b in zip(*(jax.tree_util.tree_leaves(t) for t in (params, whole["params"], accum["params"]))):
    np.testing.assert_allclose(b - p0, a - p0, atol=2e-5)
  assert ("bank" in whole) == with_bank
