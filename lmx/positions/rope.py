"""RoPE: rotary position embedding (Su et al. 2021, RoFormer, Sec. 3.4).

Each pair of query/key channels ``(x_i, x_{i + K/2})`` is turned by the angle
``p * w_i`` where ``p`` is the token's position and

    w_i = theta^(-2i / K),   i = 0 .. K/2 - 1,   theta = 10000 by default.

Since rotations compose, ``<R(p) q, R(s) k> = <q, R(s - p) k>``: the logit
depends on positions only through ``p - s``. The pairing used here is the
"half split" one (channel ``i`` with ``i + K/2``), a fixed permutation of the
paper's adjacent pairs ``(2i, 2i+1)``; the two are the same model up to a
relabelling of the projection's output channels.

Length extension by frequency scaling (Position Interpolation, NTK-aware,
dynamic NTK, NTK-by-parts, YaRN, Llama 3.1) is selected by
``config.model.rope.scaling``; the methods, their settings and formulas
live in the registry of ``lmx.positions.rope_scaling`` (which also holds
the frequencies ``rope_inv_freq``, so the two modules import one way).
"""

import jax
import jax.numpy as jnp
import ml_collections

from lmx.checks import require
from lmx.positions import rope_scaling
from lmx.positions.base import PositionEncoding
from lmx.positions.rope_scaling import rope_inv_freq

__all__ = ['RoPE', 'apply_rope', 'rope_angles', 'rope_inv_freq']


def rope_angles(positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """``positions[..., None] * inv_freq``: the angle of every pair."""
  return positions.astype(jnp.float32)[..., None] * inv_freq


def apply_rope(x_BxTxHxK: jax.Array, positions_BxT: jax.Array,
               inv_freq: jax.Array, scale: float = 1.0) -> jax.Array:
  """Rotates each (i, i + K/2) channel pair of ``x`` by ``position * w_i``.

  ``inv_freq`` is ``[K/2]``, or ``[B, 1, K/2]`` for per-sequence frequencies
  (dynamic NTK). ``scale`` (a Python float) multiplies the result, folded into
  the rotation so it is rounded once (YaRN's ``sqrt(1/t)``).
  """
  angle_BxTx1xK2 = rope_angles(positions_BxT, inv_freq)[:, :, None, :]
  cos, sin = jnp.cos(angle_BxTx1xK2), jnp.sin(angle_BxTx1xK2)
  if scale != 1.0:
    cos, sin = cos * scale, sin * scale
  x = x_BxTxHxK.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxHxK.dtype)


class RoPE(PositionEncoding):
  """Rotates queries and keys by their positions (optionally scaled)."""

  rotary = True
  scalable = True

  def __init__(self, cfg, *, rngs):
    super().__init__(cfg, rngs=rngs)
    self.theta = float(cfg.rope.theta)
    self.scaling = str(cfg.rope.scaling)
    # Frozen: hashable, so it can sit in the module's static graph.
    self.scaling_cfg = ml_collections.FrozenConfigDict(cfg.rope)

  @classmethod
  def default_config(cls):
    return ml_collections.ConfigDict({
        'theta': 10000.0,
        # Length extension: one of rope_scaling.SCALINGS (none | linear |
        # ntk | dynamic | ntk_by_parts | yarn | llama3), with the settings
        # of every method and their defaults.
        'scaling': rope_scaling.NONE,
        **rope_scaling.default_settings(),
    })

  @classmethod
  def check(cls, model_cfg):
    super().check(model_cfg)
    cls.fields(model_cfg).positive('rope.theta')
    rope_scaling.check(model_cfg)

  @classmethod
  def check_unused(cls, model_cfg):
    scaling = model_cfg.rope.scaling
    require(scaling == rope_scaling.NONE,
            f'config.model.rope.scaling={scaling!r} rescales RoPE '
            f'frequencies, but this model uses the {model_cfg.position!r} '
            "encoding. Set config.model.rope.scaling='none', or use "
            "config.model.position='rope'.")

  def keys_static(self) -> bool:
    # A scaling that follows the sequence length picks its frequencies
    # from the longest key position.
    return not rope_scaling.get(self.scaling).follows_length

  def rotate(self, q_BxTxHxK, k_BxSxHxK, q_positions_BxT, k_positions_BxS):
    inv_freq, logit_scale = rope_scaling.scaled_frequencies(
        self.scaling_cfg, self.head_dim, self.theta, k_positions_BxS)
    if inv_freq.ndim == 2:  # dynamic: one set per sequence, [B, K/2]
      inv_freq = inv_freq[:, None, :]
    # The logits get logit_scale: q and k each its square root.
    scale = logit_scale ** 0.5
    return (apply_rope(q_BxTxHxK, q_positions_BxT, inv_freq, scale),
            apply_rope(k_BxSxHxK, k_positions_BxS, inv_freq, scale))
