"""Forgetting Attention (Lin, Nikishin, He & Courville 2025, "Forgetting
Transformer: Softmax Attention with a Forget Gate", ICLR 2025: its
Forgetting Attention, as the authors' ``forgetting-transformer`` code
computes it).

Every head has a scalar forget gate per token, a linear map of the
attention layer's input (the normed hidden state, as in the authors'
``fgate_proj``):

    f_t = sigmoid(w_h . x_t + b_h)

and the logit of query ``i`` and key ``j <= i`` is decayed by the product
of the gates between them:

    logit_ij += sum_{l = j+1 .. i} log f_l = F_i - F_j,   F_t = sum_{l<=t} log f_l

This is a content term (``PositionEncoding.content``) whose query and key
sides are both ``F``: it decomposes into tiles, and when decoding each new
token continues ``F`` from the latest cached one (``previous``). Positions
do not enter: FoX is the paper's model without any other position
encoding, shift invariant by construction, and randomized or shifted
positions change nothing.

Initialisation as the authors' code: ``w ~ N(0, init_std = 0.02)``,
``b = bias_init = 0`` (so ``f ~ 1/2``, a strong recency bias at first).

Numerics. ``log f`` is ``log_sigmoid`` in float32. ``F`` falls linearly
with the length (about ``-0.69`` per token at initialisation), so at
``T = 10^5`` it is near ``-7 x 10^4``, where a float32 carries only ~0.008
of absolute precision, and a float32 prefix sum loses more than that.
``F`` is therefore kept as two float32 numbers ``hi + lo`` (a
compensated prefix sum, ``fox_prefix``: Knuth's two-sum in each step of
an associative scan), and a pair's term is ``(hi_i - hi_j) + (lo_i -
lo_j)``: correct to float32 rounding of ``F_i - F_j`` itself, at any
length (tests/test_shaw_fox_cope.py checks 2^17 tokens against float64).
"""

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lmx.positions.base import ContentTerm, PositionEncoding, Tile


def fox_log_gates(x_BxTxD: jax.Array, w_DxH: jax.Array,
                  b_H: jax.Array) -> jax.Array:
  """``log f = log_sigmoid(x w + b)``, ``[B, T, H]`` float32."""
  z = jnp.einsum('btd,dh->bth', x_BxTxD.astype(jnp.float32),
                 w_DxH.astype(jnp.float32)) + b_H.astype(jnp.float32)
  return jax.nn.log_sigmoid(z)


def _two_sum(a, b):
  """``(s, e)`` with ``s = fl(a + b)`` and ``s + e = a + b`` exactly."""
  s = a + b
  bb = s - a
  return s, (a - (s - bb)) + (b - bb)


def _add(x, y):
  """The sum of two ``(hi, lo)`` numbers, renormalised."""
  s, e = _two_sum(x[0], y[0])
  e = e + (x[1] + y[1])
  hi = s + e
  return hi, e - (hi - s)


def fox_prefix(log_f_BxTxH: jax.Array, previous=None):
  """``F_t = F_prev + sum_{l<=t} log f_l`` along axis 1, as ``(hi, lo)``
  float32 arrays ``[B, T, H]`` whose sum is ``F`` to far better than one
  float32 rounding of ``F`` (``lo`` holds what ``hi`` rounds off).
  ``previous``: ``(hi, lo)`` ``[B, H]`` of the token before the first,
  or None (``F`` starts at 0)."""
  x = (log_f_BxTxH.astype(jnp.float32), jnp.zeros_like(log_f_BxTxH,
                                                        jnp.float32))
  hi, lo = jax.lax.associative_scan(_add, x, axis=1)
  if previous is not None:
    prev = tuple(jnp.broadcast_to(p[:, None], hi.shape) for p in previous)
    hi, lo = _add(prev, (hi, lo))
  return hi, lo


def fox_decay(q_side, k_side) -> jax.Array:
  """``F_i - F_j``, ``[B, H, T, S]`` float32, from the ``(hi, lo)`` of the
  queries ``[B, T, H]`` and of the keys ``[B, S, H]``."""
  (qh, ql), (kh, kl) = q_side, k_side
  d = ((qh[:, :, None] - kh[:, None, :]) + (ql[:, :, None] - kl[:, None, :]))
  return jnp.transpose(d, (0, 3, 1, 2))


def _tile_decay(tile: Tile) -> jax.Array:
  return fox_decay(tile.q_side, tile.k_side)


class FoX(PositionEncoding):
  """A data-dependent forget gate per head and token, one map per layer."""

  per_layer = True
  real_positions = True   # positions never enter (CAPE may train it)

  def __init__(self, cfg, *, rngs):
    super().__init__(cfg, rngs=rngs)
    c = cfg.fox
    init = nnx.initializers.normal(float(c.init_std))
    self.gate_w = nnx.Param(init(rngs.params(), (self.d_model, self.num_heads),
                                 jnp.float32))
    self.gate_b = nnx.Param(jnp.full((self.num_heads,), float(c.bias_init),
                                     jnp.float32))

  @classmethod
  def default_config(cls):
    return ml_collections.ConfigDict({
        'init_std': 0.02,   # the authors' initializer_range
        'bias_init': 0.0,   # their zero bias: f = 1/2 at first
    })

  @classmethod
  def check(cls, model_cfg):
    super().check(model_cfg)
    f = cls.fields(model_cfg)
    f.float('fox.init_std', 0.0)
    f.float('fox.bias_init')

  @classmethod
  def relative(cls):
    return False   # positions never enter: a clamp or regrouping has no effect

  def content(self, x_BxTxD, q_BxTxHxK, k_BxTxHxK, positions_BxT,
              previous=None):
    del q_BxTxHxK, k_BxTxHxK, positions_BxT
    log_f = fox_log_gates(x_BxTxD, self.gate_w[...], self.gate_b[...])
    side = fox_prefix(log_f, previous)
    return ContentTerm(q_side=side, k_side=side, fn=_tile_decay, tiled=True)
