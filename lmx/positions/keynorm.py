"""KeyNorm: L2-normalised keys (Su 2023, "Transformer升级之路：15、Key归一化
助力长度外推" [Key normalisation helps length extrapolation],
kexue.fm/archives/9859).

Scaled dot-product attention divides ``q . k`` by ``sqrt(d)`` because, for
entries of mean 0 and variance 1, ``||q|| ~ ||k|| ~ sqrt(d)``. The note
replaces that constant by the key's own norm:

    logit(i, j) = q_i . k_j / ||k_j|| = ||q_i|| cos(q_i, k_j)

so every key has unit length and the query's norm alone sets the
temperature of its softmax (no other scale, nothing learned). The note
evaluates it on top of RoPE, where it extrapolates past the training length
(``keynorm.rope``, the default: queries and keys are turned as RoPE turns
them, with ``keynorm.theta``); ``keynorm.rope=false`` normalises the keys
of a model without positions (NoPE), the comparison the note also draws.
A rotation keeps lengths, so normalising before or after it is the same.

The model scales every logit by ``1/sqrt(d)``; the keys are returned as
``sqrt(d) k / ||k||``, so the logits are exactly ``q . k / ||k||``. The
norm is computed in float32 whatever the compute dtype, with ``eps`` under
the square root.

Each key is turned and normalised by itself alone (``keys_static``): a KV
cache holds the keys already normalised.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections

from lmx.positions.base import PositionEncoding
from lmx.positions.rope import apply_rope, rope_inv_freq

EPS = 1e-6


def normalize_keys(k_BxSxHxK: jax.Array, scale: float = 1.0,
                   eps: float = EPS) -> jax.Array:
  """``scale * k / sqrt(||k||^2 + eps)`` over the last axis, computed in
  float32 and returned in ``k``'s dtype."""
  k = k_BxSxHxK.astype(jnp.float32)
  inv_norm = jax.lax.rsqrt(jnp.sum(k * k, axis=-1, keepdims=True) + eps)
  return (k * (inv_norm * scale)).astype(k_BxSxHxK.dtype)


def keynorm_logits(q_BxTxHxK: jax.Array, k_BxSxHxK: jax.Array,
                   eps: float = EPS) -> jax.Array:
  """KeyNorm's logits ``q_i . k_j / ||k_j||``: ``[B, H, T, S]`` float32
  (queries and keys as given, turned or not)."""
  k = normalize_keys(k_BxSxHxK.astype(jnp.float32), 1.0, eps)
  return jnp.einsum('bthk,bshk->bhts', q_BxTxHxK.astype(jnp.float32), k)


class KeyNorm(PositionEncoding):
  """Unit-length keys (times ``sqrt(d)``, against the model's ``1/sqrt(d)``),
  turned by RoPE first unless ``keynorm.rope`` is off."""

  rotary = True
  real_positions = True

  def __init__(self, cfg, *, rngs):
    super().__init__(cfg, rngs=rngs)
    self.rope = bool(cfg.keynorm.rope)
    self.theta = float(cfg.keynorm.theta)
    self.eps = float(cfg.keynorm.eps)

  @classmethod
  def default_config(cls):
    return ml_collections.ConfigDict({
        # Turn q and k as RoPE does before the keys are normalised (the
        # note's setting); False: normalised keys alone.
        'rope': True,
        'theta': 10000.0,      # RoPE's base, with rope
        'eps': EPS,            # under the square root of ||k||^2
    })

  @classmethod
  def check(cls, model_cfg):
    f = cls.fields(model_cfg)
    rope = f.bool('keynorm.rope')
    if rope:  # turns channel pairs: an even head dimension
      super().check(model_cfg)
    f.positive('keynorm.theta')
    f.positive('keynorm.eps')

  @classmethod
  def is_rotary(cls, model_cfg):
    return bool(model_cfg.keynorm.rope)

  def keys_static(self) -> bool:
    return True

  def key_norm(self, k_BxSxHxK):
    return normalize_keys(k_BxSxHxK, math.sqrt(self.head_dim), self.eps)

  def rotate(self, q_BxTxHxK, k_BxSxHxK, q_positions_BxT, k_positions_BxS):
    if self.rope:
      inv_freq = rope_inv_freq(self.head_dim, self.theta)
      q_BxTxHxK = apply_rope(q_BxTxHxK, q_positions_BxT, inv_freq)
      k_BxSxHxK = apply_rope(k_BxSxHxK, k_positions_BxS, inv_freq)
    return q_BxTxHxK, self.key_norm(k_BxSxHxK)
