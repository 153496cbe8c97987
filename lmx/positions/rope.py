"""RoPE: rotary position embedding (Su et al. 2021, RoFormer, Sec. 3.4).

Each pair of query/key channels ``(x_i, x_{i + K/2})`` is turned by the angle
``p * w_i`` where ``p`` is the token's position and

    w_i = theta^(-2i / K),   i = 0 .. K/2 - 1,   theta = 10000 by default.

Since rotations compose, ``<R(p) q, R(s) k> = <q, R(s - p) k>``: the logit
depends on positions only through ``p - s``. The pairing used here is the
"half split" one (channel ``i`` with ``i + K/2``), a fixed permutation of the
paper's adjacent pairs ``(2i, 2i+1)``; the two are the same model up to a
relabelling of the projection's output channels.
"""

import jax
import jax.numpy as jnp
import ml_collections

from lmx.positions.base import PositionEncoding


def rope_inv_freq(head_dim: int, theta: float = 10000.0) -> jax.Array:
  """The rotation frequencies ``w_i = theta^(-2i/head_dim)``: ``[head_dim/2]``."""
  if head_dim % 2:
    raise ValueError(f'RoPE needs an even head dimension, got {head_dim}.')
  i = jnp.arange(head_dim // 2, dtype=jnp.float32)
  return theta ** (-2.0 * i / head_dim)


def rope_angles(positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """``positions[..., None] * inv_freq``: the angle of every pair."""
  return positions.astype(jnp.float32)[..., None] * inv_freq


def apply_rope(x_BxTxHxK: jax.Array, positions_BxT: jax.Array,
               inv_freq: jax.Array) -> jax.Array:
  """Rotates each (i, i + K/2) channel pair of ``x`` by ``position * w_i``."""
  angle_BxTx1xK2 = rope_angles(positions_BxT, inv_freq)[:, :, None, :]
  cos, sin = jnp.cos(angle_BxTx1xK2), jnp.sin(angle_BxTx1xK2)
  x = x_BxTxHxK.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxHxK.dtype)


class RoPE(PositionEncoding):
  """Rotates queries and keys by their positions."""

  rotary = True

  def __init__(self, cfg, *, rngs):
    super().__init__(cfg, rngs=rngs)
    self.theta = float(cfg.rope.theta)

  @classmethod
  def default_config(cls):
    return ml_collections.ConfigDict({'theta': 10000.0})

  def rotate(self, q_BxTxHxK, k_BxSxHxK, q_positions_BxT, k_positions_BxS):
    inv_freq = rope_inv_freq(self.head_dim, self.theta)
    return (apply_rope(q_BxTxHxK, q_positions_BxT, inv_freq),
            apply_rope(k_BxSxHxK, k_positions_BxS, inv_freq))
