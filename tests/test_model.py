"""Decoder vs transformers on the same weights, KV-cache decoding, HF export round trip, full-size shapes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from calrec_jax.model.config import preset
from calrec_jax.model.decoder import Decoder, count_params, init_cache
from calrec_jax.model.weights import export_hf_checkpoint, load_hf_checkpoint

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def tiny_hf(family, tmp_path):
  torch.manual_seed(0)
  if family == "gemma3":
    cfg = transformers.Gemma3TextConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=4,
                                        layer_types=["sliding_attention", "full_attention"] * 2,
                                        query_pre_attn_scalar=16, rope_theta=10000.0)
    model = transformers.Gemma3ForCausalLM(cfg)
  elif family in ("qwen3", "qwen2"):  # QK-norm with scale w / q,k,v biases; GQA; tied and untied embeddings
    kind = {"qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
            "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[family]
    cfg = kind[0](vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, tie_word_embeddings=family == "qwen3", rope_theta=1e6,
                  use_sliding_window=False)
    model = kind[1](cfg)
  else:
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg)
  with torch.no_grad():  # non-trivial norm weights and biases so (1 + w) vs w and missing-bias mistakes show
    for n, p in model.named_parameters():
      if "norm" in n or n.endswith("bias"):
        p.add_(torch.randn_like(p) * 0.1)
  model.eval()
  model.save_pretrained(tmp_path)
  return model


def padded_batch():
  rng = np.random.default_rng(0)
  toks = rng.integers(3, 300, size=(2, 10)).astype(np.int32)
  mask = np.ones((2, 10), bool)
  mask[1, 7:] = False  # right padding
  return toks, mask


@pytest.mark.parametrize("family", ["gemma3", "llama", "qwen3", "qwen2"])
def test_logits_match_transformers(family, tmp_path):
  ref = tiny_hf(family, tmp_path)
  cfg, params = load_hf_checkpoint(str(tmp_path))
  toks, mask = padded_batch()
  pos = np.broadcast_to(np.arange(10), (2, 10))
  dec = Decoder(cfg)
  h, _ = dec.apply({"params": params}, jnp.asarray(toks), jnp.asarray(pos), jnp.asarray(mask))
  ours = np.asarray(dec.apply({"params": params}, h, method=Decoder.logits))
  with torch.no_grad():
    theirs = ref(torch.tensor(toks, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long)).logits.numpy()
  assert np.abs(ours[mask] - theirs[mask]).max() < 1e-4


@pytest.mark.parametrize("family", ["gemma3", "llama", "qwen3", "qwen2"])
def test_hf_export_round_trip(family, tmp_path):
  ref = tiny_hf(family, tmp_path / "a")
  cfg, params = load_hf_checkpoint(str(tmp_path / "a"))
  export_hf_checkpoint(params, cfg, str(tmp_path / "b"))
  cfg2, params2 = load_hf_checkpoint(str(tmp_path / "b"))
  assert cfg2 == cfg
  back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "b")).eval()
  toks, mask = padded_batch()
  with torch.no_grad():
    a = ref(torch.tensor(toks, dtype=torch.long)).logits.numpy()
    b = back(torch.tensor(toks, dtype=torch.long)).logits.numpy()
  assert np.abs(a - b).max() < 1e-5


def test_missing_and_misshapen_tensors_are_named(tmp_path):
  from safetensors.numpy import load_file, save_file
  from calrec_jax.errors import WeightImportError
  tiny_hf("llama", tmp_path)
  f = tmp_path / "model.safetensors"
  t = load_file(str(f))
  del t["model.layers.1.mlp.up_proj.weight"]
  save_file(t, str(f))
  with pytest.raises(WeightImportError, match="missing tensor 'layers.1.mlp.up_proj.weight'"):
    load_hf_checkpoint(str(tmp_path))
  t["model.layers.1.mlp.up_proj.weight"] = np.zeros((5, 5), np.float32)
  save_file(t, str(f))
  with pytest.raises(WeightImportError, match="up_proj.weight' has shape"):
    load_hf_checkpoint(str(tmp_path))


@pytest.mark.parametrize("name", ["tiny", "tiny-llama"])
def test_kv_cache_decoding_equals_full_forward(name):
  cfg = preset(name, vocab_size=100)
  dec = Decoder(cfg)
  toks = jnp.asarray(np.random.default_rng(1).integers(3, 100, size=(2, 24)), jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(24), (2, 24))
  params = dec.init(jax.random.PRNGKey(0), toks, pos, toks > -1)["params"]
  full, _ = dec.apply({"params": params}, toks, pos, toks > -1)
  cache = init_cache(cfg, 2, 24)
  keymask = jnp.ones((2, 24), bool)
  h, cache = dec.apply({"params": params}, toks[:, :8], pos[:, :8], keymask, cache, 0)  # prefill
  steps = [h]
  for t in range(8, 24):
    h, cache = dec.apply({"params": params}, toks[:, t:t + 1], pos[:, t:t + 1], keymask, cache, t)
    steps.append(h)
  np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=1e-5)


def test_full_size_presets_have_published_parameter_counts():
  published = {"gemma3-270m": 268_098_176, "gemma3-1b": 999_885_952, "llama-3.2-1b": 1_235_814_400,
               "llama-3.2-3b": 3_212_749_824, "llama-3-8b": 8_030_261_248, "smollm2-135m": 134_515_008,
               "qwen3-0.6b": 596_049_920, "qwen3-1.7b": 1_720_574_976}
  for name, n in published.items():
    dec = Decoder(preset(name))
    t = jnp.zeros((1, 4), jnp.int32)
    assert count_params(jax.eval_shape(lambda: dec.init(jax.random.PRNGKey(0), t, t, t > -1))) == n, name


def test_hub_id_loads_the_cached_snapshot(tmp_path, monkeypatch):
  """hf://org/name goes through huggingface_hub's snapshot resolution; offline it reads the HF cache."""
  import huggingface_hub.constants as hub_constants
  from calrec_jax.errors import WeightImportError
  from calrec_jax.model.loading import load_pretrained
  revision = "0123456789abcdef0123456789abcdef01234567"
  repo_dir = tmp_path / "hub" / "models--acme--tiny-llama"
  tiny_hf("llama", repo_dir / "snapshots" / revision)
  (repo_dir / "refs").mkdir()
  (repo_dir / "refs" / "main").write_text(revision)
  monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
  monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  cfg, params, _ = load_pretrained("hf://acme/tiny-llama")
  cfg_dir, params_dir = load_hf_checkpoint(str(repo_dir / "snapshots" / revision))
  assert cfg == cfg_dir
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params_dir)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(WeightImportError, match=r"hf://acme/missing.*Hugging Face Hub.*local checkpoint"):
    load_pretrained("hf://acme/missing")
  with pytest.raises(WeightImportError, match=r"expected hf://<org>/<name>"):
    load_pretrained("hf://just-a-name")


@pytest.mark.parametrize("transpose_w,dtype,out_dtype", [(False, jnp.float32, None), (True, jnp.float32, jnp.float32),
                                                         (False, jnp.bfloat16, None), (True, jnp.bfloat16, jnp.float32)])
def test_dense_equals_einsum_values_and_grads(transpose_w, dtype, out_dtype):
  """`dense` (its backward written as two plain products) against the einsum JAX differentiates itself."""
  from calrec_jax.model.linear import dense
  r = np.random.default_rng(0)
  x = jnp.asarray(r.normal(size=(3, 5, 16)), dtype)
  w = jnp.asarray(r.normal(size=(24, 16) if transpose_w else (16, 24)), dtype)
  spec = "BTD,FD->BTF" if transpose_w else "BTD,DF->BTF"
  cot = jnp.asarray(r.normal(size=(3, 5, 24)), jnp.float32)
  ours = lambda x, w: (dense(x, w, transpose_w, out_dtype).astype(jnp.float32) * cot).sum()  # noqa: E731
  ref = lambda x, w: (jnp.einsum(spec, x, w, preferred_element_type=out_dtype).astype(jnp.float32) * cot).sum()  # noqa: E731
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=tol)
  for a, c in zip(jax.grad(ours, (0, 1))(x, w), jax.grad(ref, (0, 1))(x, w)):
    assert a.dtype == c.dtype and a.shape == c.shape
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(c, np.float32), rtol=tol, atol=tol)


@pytest.mark.parametrize("offset,dtype", [(0.0, jnp.float32), (1.0, jnp.float32), (1.0, jnp.bfloat16)])
def test_rms_norm_equals_autodiff_values_and_grads(offset, dtype):
  """`rms_norm` (its backward written out) against the formula JAX differentiates itself, under jit as in the
  step; a row of zeros (padding) included."""
  from calrec_jax.model.rms_norm import rms_norm
  r = np.random.default_rng(1)
  x = np.asarray(r.normal(size=(3, 5, 16)) * 3, np.float32)
  x[1, 2] = 0.0
  x, w = jnp.asarray(x, dtype), jnp.asarray(r.normal(size=(16,)), dtype)
  cot = jnp.asarray(r.normal(size=(3, 5, 16)), jnp.float32)

  def ref_norm(x, w):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + 1e-6)
    return (y * (offset + w.astype(jnp.float32))).astype(x.dtype)
  ours = lambda x, w: (rms_norm(x, w, 1e-6, offset).astype(jnp.float32) * cot).sum()  # noqa: E731
  ref = lambda x, w: (ref_norm(x, w).astype(jnp.float32) * cot).sum()  # noqa: E731
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(jax.jit(ours)(x, w), ref(x, w), rtol=tol)
  for a, c in zip(jax.jit(jax.grad(ours, (0, 1)))(x, w), jax.grad(ref, (0, 1))(x, w)):
    assert a.dtype == c.dtype and a.shape == c.shape
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(c, np.float32), rtol=tol, atol=tol)


@pytest.mark.parametrize("first_position", [0, -2 ** 31])  # the loop that materialises the tables runs once / never
def test_rope_tables_equal_sin_and_cos(first_position):
  from calrec_jax.model.layers import rope_tables
  positions = np.arange(24, dtype=np.int32).reshape(2, 12)
  positions[0, 0] = first_position
  inv_freq = 1.0 / 10000 ** (np.arange(0, 16, 2) / 16)
  sin, cos = jax.jit(rope_tables)(jnp.asarray(positions), jnp.asarray(inv_freq, jnp.float32))
  angles = positions[..., None].astype(np.float32) * inv_freq.astype(np.float32)
  # XLA's own sin/cos as the reference: the zero-trip case has angles near -2^31, where numpy's float32 range
  # reduction and XLA's may round differently on another CPU
  np.testing.assert_allclose(sin, jnp.sin(angles), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(cos, jnp.cos(angles), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(sin[1], np.sin(angles[1]), rtol=1e-5, atol=1e-5)  # ordinary positions: numpy too
  np.testing.assert_allclose(cos[1], np.cos(angles[1]), rtol=1e-5, atol=1e-5)


def test_attend_equals_masked_softmax_values_and_grads():
  """`attend` against jax.nn.softmax attention differentiated by JAX: causal + sliding-window masks, a padded
  tail, and a row with no visible key (uniform weights, no gradient to the masked logits)."""
  from calrec_jax.model.softmax_attention import NEG_INF, attend
  r = np.random.default_rng(0)
  b, t, k, g, h = 3, 7, 2, 2, 8
  q = jnp.asarray(r.normal(size=(b, t, k, g, h)), jnp.float32)
  key, val = (jnp.asarray(r.normal(size=(b, t, k, h)), jnp.float32) for _ in range(2))
  pos = np.arange(t)[None].repeat(b, 0)
  key_mask = np.ones((b, t), bool)
  key_mask[1, 5:] = False   # padded tail
  key_mask[2, :] = False    # nothing visible
  visible = jnp.asarray(key_mask[:, None, :] & (pos[:, None, :] <= pos[:, :, None]) & (pos[:, :, None] - pos[:, None, :] < 3))
  cot = jnp.asarray(r.normal(size=(b, t, k, g, h)), jnp.float32)

  def ref_attend(q, key, val):
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, key) * 0.3
    probs = jax.nn.softmax(jnp.where(visible[:, None, None], logits, NEG_INF), axis=-1)
    return jnp.einsum("BKGTS,BSKH->BTKGH", probs, val)
  ours = lambda *a: (attend(*a, visible, 0.3) * cot).sum()  # noqa: E731
  ref = lambda *a: (ref_attend(*a) * cot).sum()  # noqa: E731
  np.testing.assert_allclose(attend(q, key, val, visible, 0.3), ref_attend(q, key, val), atol=1e-5)
  np.testing.assert_allclose(attend(q, key, val, visible, 0.3)[2], jnp.broadcast_to(val[2].mean(0)[:, None], (t, k, g, h)), atol=1e-5)
  for a, c in zip(jax.grad(ours, (0, 1, 2))(q, key, val), jax.grad(ref, (0, 1, 2))(q, key, val)):
    np.testing.assert_allclose(a, c, atol=1e-5)


@pytest.mark.parametrize("attention", ["einsum", "xla"])
def test_a_row_of_segments_equals_each_sequence_alone(attention):
  """Packed rows (int32 segment ids as the key mask, positions restarting per segment): every token's hidden state
  is the one it has when its sequence runs alone; values and gradients."""
  cfg = preset("tiny", vocab_size=100)
  dec = Decoder(cfg, attention=attention)
  r = np.random.default_rng(2)
  lens = [7, 5, 9]
  seqs = [jnp.asarray(r.integers(3, 100, size=(1, n)), jnp.int32) for n in lens]
  params = dec.init(jax.random.PRNGKey(0), seqs[0], jnp.arange(7)[None], seqs[0] > 0)["params"]
  row = jnp.concatenate(seqs + [jnp.zeros((1, 3), jnp.int32)], 1)                                 # [1, 24]
  pos = jnp.concatenate([jnp.arange(n) for n in lens] + [jnp.zeros(3, jnp.int32)])[None]
  seg = jnp.concatenate([jnp.full(n, i + 1) for i, n in enumerate(lens)] + [jnp.zeros(3, jnp.int32)])[None]
  seg = seg.astype(jnp.int32)

  def packed(p):
    return dec.apply({"params": p}, row, pos, seg)[0][:, :sum(lens)]

  def alone(p):
    return jnp.concatenate([dec.apply({"params": p}, s, jnp.arange(s.shape[1])[None], s > 0)[0] for s in seqs], 1)
  np.testing.assert_allclose(packed(params), alone(params), atol=2e-5)
  cot = jnp.asarray(r.normal(size=(1, sum(lens), cfg.d_model)), jnp.float32)
  ga = jax.grad(lambda p: (packed(p) * cot).sum())(params)
  gb = jax.grad(lambda p: (alone(p) * cot).sum())(params)
  for a, b in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6 * float(np.abs(b).max()))  # summation order


def test_a_model_family_is_one_row_of_traits(monkeypatch):
  """FAMILY_TRAITS drives the decoder: a new row (Llama with Gemma's GeGLU) builds the same parameters as
  Llama, and only the trait it changes changes the output."""
  import dataclasses
  from calrec_jax.model import config as model_config
  llama = preset("tiny", vocab_size=100).replace(family="llama")
  monkeypatch.setitem(model_config.FAMILY_TRAITS, "llama_geglu",
                      dataclasses.replace(model_config.FAMILY_TRAITS["llama"], mlp_activation="gelu_tanh"))
  geglu = llama.replace(family="llama_geglu")
  tokens = jnp.asarray([[5, 9, 13, 2]], jnp.int32)
  positions = jnp.arange(4)[None]
  params = Decoder(llama).init(jax.random.PRNGKey(0), tokens, positions, tokens > 0)["params"]
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
      Decoder(geglu).init(jax.random.PRNGKey(0), tokens, positions, tokens > 0)["params"])
  out = {c.family: Decoder(c).apply({"params": params}, tokens, positions, tokens > 0)[0] for c in (llama, geglu)}
  assert not np.allclose(out["llama"], out["llama_geglu"])
  with pytest.raises(Exception, match="model family 'nope'"):
    llama.replace(family="nope")
