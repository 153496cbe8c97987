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
``config.model.rope.scaling``; the formulas live in
``lmx.positions.rope_scaling``.
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

  def __init__(self, cfg, *, rngs):
    super().__init__(cfg, rngs=rngs)
    self.theta = float(cfg.rope.theta)
    # Configs saved before scaling existed have no such fields: plain RoPE.
    self.scaling = cfg.rope.get('scaling', 'none')
    # Frozen: hashable, so it can sit in the module's static graph.
    self.scaling_cfg = ml_collections.FrozenConfigDict({
        key: cfg.rope.get(key, default)
        for key, default in RoPE.default_config().items()})

  @classmethod
  def default_config(cls):
    return ml_collections.ConfigDict({
        'theta': 10000.0,
        # Length extension (lmx.positions.rope_scaling): none | linear | ntk
        # | dynamic | ntk_by_parts | yarn | llama3.
        'scaling': 'none',
        # The scale s: new context length / original_max_len (> 1; dynamic
        # also allows 1, the YaRN paper's form).
        'factor': 1.0,
        # L, the pretraining context length the scaling is relative to
        # (dynamic, ntk_by_parts, yarn, llama3); 0 = unset.
        'original_max_len': 0,
        # NTK-by-parts / YaRN ramp, in turns within L: pairs turning more
        # than beta_fast times are kept, fewer than beta_slow interpolated.
        'beta_fast': 32.0,
        'beta_slow': 1.0,
        # Llama 3.1: the same ramp between low_freq_factor and
        # high_freq_factor turns (wavelengths L/low .. L/high).
        'low_freq_factor': 1.0,
        'high_freq_factor': 4.0,
    })

  def keys_static(self) -> bool:
    # Dynamic NTK picks its frequencies from the longest key position.
    return self.scaling != 'dynamic'

  def rotate(self, q_BxTxHxK, k_BxSxHxK, q_positions_BxT, k_positions_BxS):
    if self.scaling == 'none':
      inv_freq = rope_inv_freq(self.head_dim, self.theta)
      return (apply_rope(q_BxTxHxK, q_positions_BxT, inv_freq),
              apply_rope(k_BxSxHxK, k_positions_BxS, inv_freq))
    # Imported here: rope_scaling builds on rope_inv_freq from this module.
    from lmx.positions import rope_scaling  # pylint: disable=g-import-not-at-top
    inv_freq, logit_scale = rope_scaling.scaled_frequencies(
        self.scaling_cfg, self.head_dim, self.theta, k_positions_BxS)
    if inv_freq.ndim == 2:  # dynamic: one set per sequence, [B, K/2]
      inv_freq = inv_freq[:, None, :]
    # The logits get logit_scale: q and k each its square root.
    scale = logit_scale ** 0.5
    return (apply_rope(q_BxTxHxK, q_positions_BxT, inv_freq, scale),
            apply_rope(k_BxSxHxK, k_positions_BxS, inv_freq, scale))
