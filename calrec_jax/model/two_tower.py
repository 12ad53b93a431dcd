"""Two towers on one shared decoder: the joint pass (history + target) and the item pass (target alone)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from calrec_jax.model.config import ModelConfig
from calrec_jax.model.decoder import Decoder
from calrec_jax.model.pooling import l2_normalize, masked_mean, slot_means

Array = jax.Array


class TwoTower(nn.Module):
  """Wraps the decoder (params under 'decoder') and an optional projection head (params under 'proj')."""
  cfg: ModelConfig
  projection_dim: int = 0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  remat: bool = False
  scan_layers: bool = False
  attention: str = "einsum"
  cached_layers: int = 0  # packed batches with cached lower-block outputs start at this block
  num_item_ids: int = 0   # > 0: learned per-item tables (model/item_ids.py) of this many rows, which the towers
  #                         never read (the loss and the item vectors of evaluation do); init_boxed adds them:
  id_offsets: bool = True  # params['item_offsets'] [I, E] (model.item_id_offsets)
  id_bias: bool = False    # params['item_bias'] [I] (model.item_bias)

  def setup(self):
    self.decoder = Decoder(self.cfg, self.dtype, self.param_dtype, self.remat, self.scan_layers, self.attention)
    if self.projection_dim:
      self.proj = nn.Dense(self.projection_dim, use_bias=False, param_dtype=self.param_dtype,
                           kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                                    ("embed", None)))

  def embed(self, pooled: Array) -> Array:
    if self.projection_dim:
      pooled = self.proj(pooled)
    return l2_normalize(pooled.astype(jnp.float32))

  def __call__(self, batch: dict[str, Array]) -> dict[str, Array]:
    """Both towers; returns hidden states at the LM positions and the three L2-normalised embeddings."""
    joint, _ = self.decoder(batch["tokens"], batch["positions"], batch["input_mask"])  # [B, T, D]
    item, _ = self.decoder(batch["item_tokens"], batch["item_positions"], batch["item_mask"])  # [B, Li, D]
    lm_hidden = jnp.take_along_axis(joint, batch["lm_positions"][..., None], axis=1)  # [B, Lt, D]
    return {
        "lm_hidden": lm_hidden,
        "v_u": self.embed(masked_mean(joint, batch["history_mask"])),        # [B, E]
        "v_t_given_u": self.embed(masked_mean(joint, batch["target_mask"])),  # [B, E]
        "v_t": self.embed(masked_mean(item, batch["item_text_mask"])),       # [B, E]
    }

  def packed(self, batch: dict[str, Array]) -> dict[str, Array]:
    """Both towers on a packed batch (data/packed.py): one causal pass per row gives every slot's LM hidden
    states and embeddings (attention stays inside each unit by its segment id); the item tower encodes the
    slots' targets, packed the same way. Shapes: lm_hidden [B, K, Lt, D], embeddings [B, K, E].

    A batch carrying `joint_hidden` [B, T, D] and `item_hidden` [B, Ti, D] (the frozen lower blocks' outputs,
    train/layer_cache.py) runs only the blocks from `cached_layers` up."""
    if "joint_hidden" in batch:
      joint = self.decoder.upper(batch["joint_hidden"], batch["positions"], batch["segment_ids"],
                                 self.cached_layers)                                      # [B, T, D]
      item = self.decoder.upper(batch["item_hidden"], batch["item_positions"], batch["item_segment_ids"],
                                self.cached_layers)                                       # [B, Ti, D]
    else:
      joint, _ = self.decoder(batch["tokens"], batch["positions"], batch["segment_ids"])  # [B, T, D]
      item, _ = self.decoder(batch["item_tokens"], batch["item_positions"], batch["item_segment_ids"])  # [B, Ti, D]
    b, k, lt = batch["lm_positions"].shape
    lm_hidden = jnp.take_along_axis(joint, batch["lm_positions"].reshape(b, k * lt)[..., None], axis=1)
    return {
        "lm_hidden": lm_hidden.reshape(b, k, lt, -1),                                     # [B, K, Lt, D]
        "v_u": self.embed(slot_means(joint, batch["history_mask"])),                       # [B, K, E]
        "v_t_given_u": self.embed(slot_means(joint, batch["target_mask"])),                # [B, K, E]
        "v_t": self.embed(slot_means(item, batch["item_text_mask"])),                      # [B, K, E]
    }

  def lower_hidden(self, tokens: Array, positions: Array, key_mask: Array) -> Array:
    """The residual stream after the first `cached_layers` blocks: [B, T, D] (what the cache stores)."""
    return self.decoder.lower(tokens, positions, key_mask, self.cached_layers)

  def item_embedding_from_hidden(self, hidden: Array, positions: Array, input_mask: Array, text_mask: Array
                                 ) -> Array:
    """`item_embedding` from the lower blocks' outputs `hidden` [B, T, D] (lower_hidden of the same tokens)."""
    return self.embed(masked_mean(self.decoder.upper(hidden, positions, input_mask, self.cached_layers), text_mask))

  def user_embedding(self, tokens: Array, positions: Array, input_mask: Array, history_mask: Array) -> Array:
    hidden, _ = self.decoder(tokens, positions, input_mask)
    return self.embed(masked_mean(hidden, history_mask))

  def item_embedding(self, tokens: Array, positions: Array, input_mask: Array, text_mask: Array) -> Array:
    hidden, _ = self.decoder(tokens, positions, input_mask)
    return self.embed(masked_mean(hidden, text_mask))

  def output_embedding(self) -> Array:
    return self.decoder.output_embedding()
