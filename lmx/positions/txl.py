"""Transformer-XL's relative positions (Dai et al. 2019, "Transformer-XL:
Attentive Language Models Beyond a Fixed-Length Context", Sec. 3.3, the
score ``A^rel_ij``; the formulas of the authors' released code).

The logit of query ``i`` and key ``j`` is the sum of four terms,

    A_ij = q_i . k_j                 (a) content
         + q_i . W_R R_(i-j)         (b) content-dependent position
         + u . k_j                   (c) global content bias
         + v . W_R R_(i-j)           (d) global position bias

all scaled by ``1/sqrt(d_head)`` as the released code scales them, with
``R_d = [sin(d w_f), cos(d w_f)]`` the sinusoid of the distance (no learned
parameters: ``w_f = theta^(-2f/C)``, ``C = txl.dim`` channels, ``d_model``
in the paper), ``W_R`` a learned ``C -> heads x d_head`` projection per
layer, and ``u``, ``v`` learned per head. (a) is the model's own ``q . k``;
(b)-(d) are this encoding's content term: ``(q_i + v) . W_R R_(i-j) +
u . k_j``. The released PyTorch code shares one ``u``, ``v`` pair across
layers; here each layer has its own, the untied form its TensorFlow code
offers (``untie_r``), so that an encoding stays one instance per layer.

Computed without ``R`` per pair: with ``a_i = W_R^T (q_i + v)`` (``C``
channels per head, halves ``a^s``, ``a^c`` against the sines and cosines),
the angle-difference identities give

    a_i . R_(i-j) = sum_f cos(p_j w_f) (a^s_f sin(p_i w_f) + a^c_f cos(p_i w_f))
                  + sin(p_j w_f) (a^c_f sin(p_i w_f) - a^s_f cos(p_i w_f)),

a product of per-query and per-key features (as RoPE's rotation is), so
the chunked backend computes it tile by tile from ``a`` (the query side,
``[B, T, H, C]``) and the positions; the keys' features come from their
positions alone, so the KV cache holds nothing extra. It equals the direct
form up to float32 rounding of the angles. The term depends on positions
through ``i - j`` only: shift invariant.
"""

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lmx.config.fields import require
from lmx.positions.base import ContentTerm, PositionEncoding


def txl_inv_freq(dim: int, theta: float = 10000.0) -> jax.Array:
  """``w_f = theta^(-2f/dim)``, ``f = 0 .. dim/2 - 1`` (``[dim/2]``)."""
  return theta ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)


def txl_relative_sinusoid(distance: jax.Array, dim: int,
                          theta: float = 10000.0) -> jax.Array:
  """``R_d = [sin(d w), cos(d w)]`` (``[..., dim]``): the sines first, as
  the paper's code lays them out."""
  angle = jnp.asarray(distance, jnp.float32)[..., None] * txl_inv_freq(
      dim, theta)
  return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)


def txl_position_scores(a_BxTxHxC: jax.Array, q_pos_BxT: jax.Array,
                        k_pos_BxS: jax.Array, theta: float = 10000.0
                        ) -> jax.Array:
  """``a_i . R_(p_i - p_j)`` for every pair, ``[B, H, T, S]`` float32,
  through the angle-difference identities (module docstring): ``a`` are
  the projected queries ``W_R^T (q + v)``."""
  dim = a_BxTxHxC.shape[-1]
  w = txl_inv_freq(dim, theta)
  a = a_BxTxHxC.astype(jnp.float32)
  a_s, a_c = a[..., :dim // 2], a[..., dim // 2:]
  qa = q_pos_BxT.astype(jnp.float32)[:, :, None] * w         # [B, T, F]
  ka = k_pos_BxS.astype(jnp.float32)[:, :, None] * w         # [B, S, F]
  s_i, c_i = jnp.sin(qa)[:, :, None], jnp.cos(qa)[:, :, None]
  with_cos = a_s * s_i + a_c * c_i                            # [B, T, H, F]
  with_sin = a_c * s_i - a_s * c_i
  return (jnp.einsum('bthf,bsf->bhts', with_cos, jnp.cos(ka))
          + jnp.einsum('bthf,bsf->bhts', with_sin, jnp.sin(ka)))


class TransformerXL(PositionEncoding):
  """Terms (b)-(d) of Transformer-XL's score, per layer (``W_R``, u, v)."""

  per_layer = True
  real_positions = True

  def __init__(self, cfg, *, rngs):
    super().__init__(cfg, rngs=rngs)
    c = cfg.txl
    self.dim = int(c.dim) or self.d_model
    self.theta = float(c.theta)
    h, k = self.num_heads, self.head_dim
    # W_R as the model's key projection is initialised (fan-in C);
    # u and v as the released code initialises them (normal, std 0.02).
    self.w_r = nnx.Param(jax.random.normal(rngs.params(), (self.dim, h, k))
                         * self.dim ** -0.5)
    self.u = nnx.Param(0.02 * jax.random.normal(rngs.params(), (h, k)))
    self.v = nnx.Param(0.02 * jax.random.normal(rngs.params(), (h, k)))

  @classmethod
  def default_config(cls):
    return ml_collections.ConfigDict({
        'dim': 0,            # channels of R (0: d_model, as the paper)
        'theta': 10000.0,    # the sinusoid's base
    })

  @classmethod
  def check(cls, model_cfg):
    super().check(model_cfg)
    f = cls.fields(model_cfg)
    dim = f.int('txl.dim', 0) or int(model_cfg.d_model)
    require(dim % 2 == 0,
            f'Transformer-XL\'s R pairs a sine with a cosine, so its '
            f'channels must be even, but config.model.txl.dim gives {dim} '
            '(0 takes d_model). Set an even config.model.txl.dim.')
    f.positive('txl.theta')

  @classmethod
  def relative(cls):
    return True   # its term reads positions: clamps and regroupings reach it

  def content(self, x_BxTxD, q_BxTxHxK, k_BxTxHxK, positions_BxT,
              previous=None):
    del x_BxTxD, k_BxTxHxK, positions_BxT, previous
    a_BxTxHxC = jnp.einsum('bthk,chk->bthc',
                           q_BxTxHxK.astype(jnp.float32) + self.v[...],
                           self.w_r[...])
    u, theta, scale = self.u[...], self.theta, self.head_dim ** -0.5

    def fn(tile):
      pos = txl_position_scores(tile.q_side['a'], tile.q_pos, tile.k_pos,
                                theta)
      glob = jnp.einsum('hk,bshk->bhs', u, tile.k.astype(jnp.float32))
      return (pos + glob[:, :, None, :]) * scale

    return ContentTerm({'a': a_BxTxHxC}, {}, fn)
