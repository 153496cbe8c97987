"""xPos: extrapolatable position embedding (Sun et al. 2023, "A
Length-Extrapolatable Transformer", Sec. 3.2).

RoPE plus an exponential decay per frequency. For channel pair ``i`` of a
head of size ``K``:

    zeta_i = (2i / K + gamma) / (1 + gamma),        gamma = 0.4

the query at position ``n`` is scaled by ``zeta_i^(n / scale_base)`` and the
key at position ``m`` by ``zeta_i^(-m / scale_base)`` (``scale_base`` = 512),
so their product carries ``zeta_i^((n - m) / scale_base)``: a decay that
depends on the distance only. Because only ``n - m`` matters, both exponents
are taken relative to a per-sequence centre (the middle of the key
positions), which keeps ``zeta^(+-p/scale_base)`` inside float32 range at long
positions without changing any logit.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections

from lmx.positions.base import PositionEncoding
from lmx.positions.rope import apply_rope, rope_inv_freq


def xpos_zeta(head_dim: int, gamma: float = 0.4) -> jax.Array:
  """The per-pair decay base ``zeta_i``: ``[head_dim / 2]``, in (0, 1]."""
  i = jnp.arange(head_dim // 2, dtype=jnp.float32)
  return (2.0 * i / head_dim + gamma) / (1.0 + gamma)


def xpos_scale(positions: jax.Array, head_dim: int, gamma: float = 0.4,
               scale_base: float = 512.0) -> jax.Array:
  """``zeta_i^(position / scale_base)`` for every pair: ``[..., head_dim/2]``.

  Queries are multiplied by ``xpos_scale(n)``, keys by ``1 / xpos_scale(m)``.
  """
  zeta = xpos_zeta(head_dim, gamma)
  return zeta ** (positions.astype(jnp.float32)[..., None] / scale_base)


class XPos(PositionEncoding):
  """RoPE rotation with xPos's distance-dependent decay."""

  rotary = True
  real_positions = True   # angles and scales of float32 positions

  def __init__(self, cfg, *, rngs):
    super().__init__(cfg, rngs=rngs)
    c = cfg.xpos
    self.theta = float(c.theta)
    self.gamma = float(c.gamma)
    self.scale_base = float(c.scale_base)

  @classmethod
  def default_config(cls):
    return ml_collections.ConfigDict(
        {'theta': 10000.0, 'gamma': 0.4, 'scale_base': 512.0})

  @classmethod
  def check(cls, model_cfg):
    super().check(model_cfg)
    f = cls.fields(model_cfg)
    f.positive('xpos.theta')
    # gamma > 0 keeps zeta_0 = gamma / (1 + gamma) > 0 (no 0^-x).
    f.positive('xpos.gamma')
    f.positive('xpos.scale_base')

  # zeta^(+-p / scale_base) leaves float32 (overflows, or underflows to 0,
  # which the key then divides by) near exp(+-87); 84 leaves room for the
  # magnitude of q and k.
  _LOG_LIMIT = 84.0

  @classmethod
  def max_span(cls, model_cfg):
    c = model_cfg.xpos
    gamma, scale_base = float(c.gamma), float(c.scale_base)
    decay = math.log((1.0 + gamma) / gamma)  # -log zeta_0, the fastest
    span = int(2 * cls._LOG_LIMIT * scale_base / decay)
    return span, (
        f'its scales zeta^(+-p/scale_base), taken from the centre of the '
        f'keys, leave float32 beyond a span of {span} positions with '
        f'config.model.xpos.gamma={gamma} and scale_base={scale_base}. Raise '
        'config.model.xpos.scale_base (or gamma), or use shorter lengths')

  def keys_static(self) -> bool:
    # A key's scale is centred on the span of all the keys' positions.
    return False

  def rotate(self, q_BxTxHxK, k_BxSxHxK, q_positions_BxT, k_positions_BxS):
    inv_freq = rope_inv_freq(self.head_dim, self.theta)
    q = apply_rope(q_BxTxHxK, q_positions_BxT, inv_freq)
    k = apply_rope(k_BxSxHxK, k_positions_BxS, inv_freq)
    # Any offset common to q and k leaves every logit unchanged.
    lo = jnp.min(k_positions_BxS, axis=1, keepdims=True)
    hi = jnp.max(k_positions_BxS, axis=1, keepdims=True)
    centre_Bx1 = (lo + hi) // 2
    q_scale = xpos_scale(q_positions_BxT - centre_Bx1, self.head_dim,
                         self.gamma, self.scale_base)
    k_scale = xpos_scale(k_positions_BxS - centre_Bx1, self.head_dim,
                         self.gamma, self.scale_base)
    q_scale = jnp.concatenate([q_scale, q_scale], axis=-1)[:, :, None, :]
    k_scale = jnp.concatenate([k_scale, k_scale], axis=-1)[:, :, None, :]
    return ((q.astype(jnp.float32) * q_scale).astype(q.dtype),
            (k.astype(jnp.float32) / k_scale).astype(k.dtype))
