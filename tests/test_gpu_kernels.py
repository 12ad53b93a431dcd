"""cuDNN's fused attention (model.attention='cudnn') against the einsum reference, in bfloat16 on an NVIDIA GPU.

Skipped where JAX has no GPU (CI); run on a GPU machine with `pytest tests/test_gpu_kernels.py`.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from calrec_jax.model.config import gemma3_layer_types, preset
from calrec_jax.model.decoder import Decoder

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs an NVIDIA GPU")


@pytest.mark.parametrize("head_dim", [64, 256])  # 256: Gemma 3's head size
@pytest.mark.parametrize("scan", [False, True])
def test_cudnn_attention_equals_einsum_on_valid_positions(head_dim, scan):
  cfg = preset("tiny", n_layers=4, head_dim=head_dim, d_model=128, sliding_window=8,
               layer_types=gemma3_layer_types(4, 2), query_pre_attn_scalar=head_dim)
  b, t = 4, 40
  rng = np.random.RandomState(0)
  tokens = jnp.asarray(rng.randint(3, cfg.vocab_size, (b, t)))
  positions = jnp.broadcast_to(jnp.arange(t), (b, t))
  mask = jnp.arange(t)[None] < jnp.asarray([[40], [33], [17], [5]])  # right padding, as training batches are
  params = Decoder(cfg).init(jax.random.PRNGKey(0), tokens, positions, mask)["params"]

  def loss(p, kernel):
    dec = Decoder(cfg, jnp.bfloat16, scan_layers=scan, attention=kernel)
    h, _ = dec.apply({"params": p}, tokens, positions, mask)
    h = jnp.where(mask[..., None], h.astype(jnp.float32), 0.0)
    return jnp.sum(h * jnp.sin(jnp.arange(cfg.d_model))) / mask.sum(), h

  (l_ref, h_ref), g_ref = jax.value_and_grad(loss, has_aux=True)(params, "einsum")
  (l_dnn, h_dnn), g_dnn = jax.value_and_grad(loss, has_aux=True)(params, "cudnn")
  scale = float(jnp.max(jnp.abs(h_ref)))
  assert float(jnp.max(jnp.abs(h_ref - h_dnn))) < 0.03 * scale  # bfloat16 rounding, not a different function
  for a, c in zip(jax.tree_util.tree_leaves(g_ref), jax.tree_util.tree_leaves(g_dnn)):
    a, c = np.asarray(a, np.float32), np.asarray(c, np.float32)
    assert np.abs(a - c).max() <= 0.05 * np.abs(a).max() + 1e-6
