"""Contextual Position Encoding (Golovneva, Wang, Weston & Sukhbaatar 2024,
"Contextual Position Encoding: Learning to Count What's Important",
arXiv:2405.18719, Sec. 3 and the code listing of its appendix; as the
authors' released ``ContextPosSelfAttn`` computes it).

Positions are counted, not given. Query ``i`` gates every key it sees,

    g_ij = sigmoid(q_i . k_j / sqrt(d_head))        (0 for a masked key)

on the same scaled logits the attention uses, and the contextual position
of key ``j`` is the number of gated keys from ``j`` up to ``i``:

    p_ij = sum_{t = j .. i} g_it                     (clamped at npos_max - 1)

a reverse cumulative sum over the keys in token order (``k_idx``: a ring
cache holds its keys out of order). ``p`` is fractional, so the learned
embeddings ``e[0 .. npos_max - 1]`` (``head_dim`` wide, one table per
layer, shared by its heads as in the paper; ``cope.per_head`` gives each
head its own) are interpolated:

    z_ij = (1 - w) q_i . e[floor p_ij] + w q_i . e[ceil p_ij],   w = p_ij - floor p_ij

Scale. ``z`` is added to ``q.k`` before the division by ``sqrt(d_head)``,
as the released code does by default (without ``--cope-nodiv``): the
added logit is ``z / sqrt(d_head)``, on the scale of the other logits (the
paper's listing adds it unscaled; the two express the same functions,
``e`` scaled by ``sqrt(d_head)``, and both start the embeddings at zero).
``q_side = q . e / sqrt(d_head)`` (``[B, T, H, npos_max]``) is computed
once per query, and each pair gathers its two entries.

Not tiled: ``p_ij`` sums over all keys between ``j`` and ``i``, so a term
of one tile of keys needs the gates of the others. CoPE runs with the
dense backend only (``check`` refuses ``chunked`` and ``flash``).

CoPE runs alone, on unturned queries and keys, as the paper uses it: it
is not combined with RoPE here. Positions
never enter (only the mask and token order), so it is shift invariant and
randomized positions change nothing.
"""

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lmx.config.fields import require
from lmx.positions.base import ContentTerm, PositionEncoding, Tile


def cope_positions(logits_BxHxTxS: jax.Array, visible_TxS: jax.Array,
                   k_idx_S: jax.Array, npos_max: int) -> jax.Array:
  """``p_ij = min(sum_{t: k_idx_t >= k_idx_j} g_it, npos_max - 1)``,
  ``[B, H, T, S]`` float32, with ``g = sigmoid(logits)`` on visible keys
  and 0 on the others. Keys may come in any slot order: they are summed in
  the order of their token indices ``k_idx_S``."""
  gates = jnp.where(visible_TxS, jax.nn.sigmoid(
      logits_BxHxTxS.astype(jnp.float32)), 0.0)
  order = jnp.argsort(k_idx_S, stable=True)
  back = jnp.argsort(order, stable=True)
  ordered = jnp.take(gates, order, axis=-1)
  # From the latest key backwards: the near keys' (small) counts are sums
  # of few terms, accurate whatever the length.
  counts = jnp.flip(jnp.cumsum(jnp.flip(ordered, -1), axis=-1), -1)
  return jnp.minimum(jnp.take(counts, back, axis=-1), float(npos_max - 1))


def cope_interpolate(query_table_BxTxHxN: jax.Array,
                     p_BxHxTxS: jax.Array) -> jax.Array:
  """``(1 - w) z[floor p] + w z[ceil p]``, ``w = p - floor p``, gathered
  from ``z = q . e`` per query (``[B, T, H, npos_max]``): ``[B, H, T, S]``
  float32. Differentiable in ``p`` through ``w``."""
  table_BxHxTxN = jnp.transpose(query_table_BxTxHxN, (0, 2, 1, 3))
  lo = jnp.floor(p_BxHxTxS)
  w = p_BxHxTxS - lo
  lo_i = lo.astype(jnp.int32)
  hi_i = jnp.ceil(p_BxHxTxS).astype(jnp.int32)
  z_lo = jnp.take_along_axis(table_BxHxTxN, lo_i, axis=-1)
  z_hi = jnp.take_along_axis(table_BxHxTxN, hi_i, axis=-1)
  return (1.0 - w) * z_lo + w * z_hi


def cope_query_table(q_BxTxHxK: jax.Array, emb: jax.Array) -> jax.Array:
  """``q . e / sqrt(d_head)`` for every integer position: ``[B, T, H, N]``
  float32; ``emb`` is ``[N, K]`` (shared by the heads) or ``[H, N, K]``."""
  scale = q_BxTxHxK.shape[-1] ** -0.5
  q = q_BxTxHxK.astype(jnp.float32)
  spec = 'bthk,nk->bthn' if emb.ndim == 2 else 'bthk,hnk->bthn'
  return jnp.einsum(spec, q, emb.astype(jnp.float32)) * scale


def cope_scores(tile: Tile) -> jax.Array:
  """The added logits of a tile of all keys (``ContentTerm.fn``)."""
  npos = tile.q_side.shape[-1]
  p = cope_positions(tile.logits, tile.visible, tile.k_idx, npos)
  return cope_interpolate(tile.q_side, p)


class CoPE(PositionEncoding):
  """Counted positions with interpolated learned embeddings, per layer."""

  per_layer = True
  real_positions = True   # positions never enter (CAPE may train it)

  def __init__(self, cfg, *, rngs):
    super().__init__(cfg, rngs=rngs)
    del rngs
    c = cfg.cope
    n = int(c.npos_max)
    shape = ((self.num_heads, n, self.head_dim) if bool(c.per_head)
             else (n, self.head_dim))
    # Zeros, as the released code initialises them.
    self.emb = nnx.Param(jnp.zeros(shape, jnp.float32))

  @classmethod
  def default_config(cls):
    return ml_collections.ConfigDict({
        # Embeddings e[0 .. npos_max - 1]; the released code's default is
        # the training length + 1 (a count runs from 0 to the length): 65
        # for the default train.seq_len of 64.
        'npos_max': 65,
        'per_head': False,   # one table shared by the heads (the paper)
    })

  @classmethod
  def check(cls, model_cfg):
    super().check(model_cfg)
    f = cls.fields(model_cfg)
    f.int('cope.npos_max', 2)
    f.bool('cope.per_head')
    backend = model_cfg.get('attention', 'dense')
    require(backend not in ('chunked', 'flash'),
            f"config.model.attention={backend!r} computes the logits a tile "
            "of keys at a time, but CoPE's position of a key counts the "
            'gates of every key up to the query, so it needs them all at '
            "once. Use 'dense' or 'auto' (which stays dense for CoPE).")

  @classmethod
  def relative(cls):
    return False   # positions never enter: a clamp or regrouping has no effect

  def content(self, x_BxTxD, q_BxTxHxK, k_BxTxHxK, positions_BxT,
              previous=None):
    del x_BxTxD, k_BxTxHxK, positions_BxT, previous
    return ContentTerm(q_side=cope_query_table(q_BxTxHxK, self.emb[...]),
                       k_side=(), fn=cope_scores, tiled=False)
