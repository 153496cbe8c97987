"""Relative position representations (Shaw, Uszkoreit & Vaswani 2018,
"Self-Attention with Relative Position Representations", NAACL, Sec. 3,
Eq. 3-5; as tensor2tensor's ``dot_product_attention_relative`` computes
them).

A learned vector ``a^K_d`` (``head_dim`` wide, shared by the heads of a
layer, one table per layer) for every relative distance ``d``, clipped at
``k = shaw.max_distance`` (Sec. 3.2), is added to the key in the logit
(Eq. 4):

    e_ij = q_i (k_j + a^K_clip(i - j))^T / sqrt(d_head)
         = q_i k_j^T / sqrt(d_head) + q_i a^K_clip(i - j)^T / sqrt(d_head)

A causal decoder sees only ``i - j >= 0``, so the table has ``k + 1`` rows
(distances ``0 .. k``), not the paper's ``2k + 1``; every distance at or
past ``k`` shares the last row, which is what lets it run at any length.

The efficient form of Sec. 3.3: the second term is a content term
(``PositionEncoding.content``). Each query is multiplied with the whole
table once (``q_side = q . a^K / sqrt(d_head)``, ``[B, T, H, k + 1]``), and
the logit of a pair gathers the entry of its clipped distance
(``shaw_scores``), tile by tile: no ``[T, S, d_head]`` array of
embeddings exists. Only ``q_i - k_j`` enters: shift invariant.

With ``shaw.value_embeddings=true`` the value embeddings of Eq. 3 are
added as well:
``z_i = sum_j alpha_ij (v_j + a^V_clip(i - j))``, a second table ``a^V``
of the same shape. It is the content term's ``value``: per tile, the
weights are summed per clipped distance (``shaw_weight_sums``,
``[B, H, t, k + 1]``, a segment sum with no ``[t, s, k + 1]`` array), and
the sums times ``a^V`` (``shaw_values``) join the output, so the chunked
backend accumulates them with its running softmax. Off by default: the
paper's ablation of a^V and a^K finds the key term alone about as good;
tensor2tensor's function always adds both, which is
``value_embeddings=true``.
"""

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lmx.positions.base import ContentTerm, PositionEncoding, Tile


def shaw_distances(q_pos_BxT: jax.Array, k_pos_BxS: jax.Array,
                   max_distance: int) -> jax.Array:
  """``clip(i - j, 0, k)``, ``[B, T, S]`` int32: the row of ``a^K`` each
  pair reads (Sec. 3.2, one-sided for a causal decoder). Fractional positions
  (a far branch) are truncated after clipping."""
  d = q_pos_BxT[:, :, None] - k_pos_BxS[:, None, :]
  return jnp.clip(d, 0, max_distance).astype(jnp.int32)


def shaw_query_table(q_BxTxHxK: jax.Array, table_DxK: jax.Array) -> jax.Array:
  """``q_i . a^K_d / sqrt(d_head)`` for every clipped distance ``d``:
  ``[B, T, H, k + 1]`` float32 (the ``q_side`` of the content term)."""
  scale = q_BxTxHxK.shape[-1] ** -0.5
  return jnp.einsum('bthk,dk->bthd', q_BxTxHxK.astype(jnp.float32),
                    table_DxK.astype(jnp.float32)) * scale


def shaw_scores(query_table_BxTxHxD: jax.Array, q_pos_BxT: jax.Array,
                k_pos_BxS: jax.Array) -> jax.Array:
  """The added logits ``q_i a^K_clip(i-j)^T / sqrt(d_head)``, ``[B, H, T, S]``
  float32, from ``shaw_query_table``'s output (its last axis has ``k + 1``
  entries)."""
  k = query_table_BxTxHxD.shape[-1] - 1
  idx_BxTxS = shaw_distances(q_pos_BxT, k_pos_BxS, k)
  table_BxHxTxD = jnp.transpose(query_table_BxTxHxD, (0, 2, 1, 3))
  h = table_BxHxTxD.shape[1]
  idx_BxHxTxS = jnp.broadcast_to(idx_BxTxS[:, None],
                                 (idx_BxTxS.shape[0], h) + idx_BxTxS.shape[1:])
  return jnp.take_along_axis(table_BxHxTxD, idx_BxHxTxS, axis=-1)


def shaw_weight_sums(p_BxHxTxS: jax.Array, q_pos_BxT: jax.Array,
                     k_pos_BxS: jax.Array, max_distance: int) -> jax.Array:
  """``W_id = sum_j alpha_ij [clip(i - j, 0, k) = d]``: each query's
  attention weights summed per clipped distance, ``[B, H, T, k + 1]``
  float32 (linear in the weights)."""
  b, h, t, s = p_BxHxTxS.shape
  rows = max_distance + 1
  # A segment sum: pair (i, j) adds to bucket i * (k + 1) + clip(i - j), so
  # no [T, S, k + 1] array is built (a one-hot product builds one, and so
  # do k + 1 masked sums, which XLA:CPU merges into one such array).
  seg_BxTxS = (jnp.arange(t, dtype=jnp.int32)[None, :, None] * rows
               + shaw_distances(q_pos_BxT, k_pos_BxS, max_distance))

  def one(p_TxS, seg_TxS):
    return jax.ops.segment_sum(p_TxS.reshape(-1), seg_TxS.reshape(-1),
                               num_segments=t * rows)

  per_head = jax.vmap(one, in_axes=(0, None))        # heads share the ids
  sums = jax.vmap(per_head)(p_BxHxTxS.astype(jnp.float32), seg_BxTxS)
  return sums.reshape(b, h, t, rows)


def shaw_values(weight_sums_BxHxTxD: jax.Array,
                table_DxK: jax.Array) -> jax.Array:
  """``sum_j alpha_ij a^V_clip(i - j) = sum_d W_id a^V_d`` (Eq. 3's second
  term), ``[B, H, T, K]`` float32."""
  return jnp.einsum('bhtd,dk->bhtk', weight_sums_BxHxTxD,
                    table_DxK.astype(jnp.float32))


def _tile_scores(tile: Tile) -> jax.Array:
  return shaw_scores(tile.q_side, tile.q_pos, tile.k_pos)


class Shaw(PositionEncoding):
  """Learned key embeddings of the clipped distance, one table per layer."""

  per_layer = True
  switches = {'value_embeddings': "adds Shaw et al.'s value embeddings"}

  def __init__(self, cfg, *, rngs):
    super().__init__(cfg, rngs=rngs)
    self.max_distance = int(cfg.shaw.max_distance)
    # Glorot uniform, tensor2tensor's default for the [vocab, depth] table.
    init = nnx.initializers.glorot_uniform()
    self.table = nnx.Param(init(rngs.params(),
                                (self.max_distance + 1, self.head_dim),
                                jnp.float32))
    self.value_table = (nnx.Param(init(
        rngs.params(), (self.max_distance + 1, self.head_dim), jnp.float32))
                        if cfg.shaw.value_embeddings else None)

  @classmethod
  def default_config(cls):
    # The paper finds small clipping distances enough (its ablation of k).
    # value_embeddings: the value embeddings a^V of Eq. 3 as well.
    return ml_collections.ConfigDict({'max_distance': 16,
                                     'value_embeddings': False})

  @classmethod
  def check(cls, model_cfg):
    super().check(model_cfg)
    fields = cls.fields(model_cfg)
    fields.int('shaw.max_distance', 1)
    fields.bool('shaw.value_embeddings')

  @classmethod
  def relative(cls):
    return True   # its term reads positions: clamps and regrouping reach it

  def content(self, x_BxTxD, q_BxTxHxK, k_BxTxHxK, positions_BxT,
              previous=None):
    del x_BxTxD, k_BxTxHxK, positions_BxT, previous
    value = None
    if self.value_table is not None:
      table, k = self.value_table[...], self.max_distance

      def value(tile: Tile, p_BxHxTxS: jax.Array) -> jax.Array:
        return shaw_values(
            shaw_weight_sums(p_BxHxTxS, tile.q_pos, tile.k_pos, k), table)
    return ContentTerm(q_side=shaw_query_table(q_BxTxHxK, self.table[...]),
                       k_side=(), fn=_tile_scores, tiled=True, value=value)
