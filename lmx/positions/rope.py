"""RoPE: rotary position embedding (Su et al. 2021, RoFormer, Sec. 3.4).

Each pair of query/key channels ``(x_i, x_{i + K/2})`` is turned by the angle
``p * w_i`` where ``p`` is the token's position and

    w_i = theta^(-2i / K),   i = 0 .. K/2 - 1,   theta = 10000 by default.

Since rotations compose, ``<R(p) q, R(s) k> = <q, R(s - p) k>``: the logit
depends on positions only through ``p - s``. The pairing used here is the
"half split" one (channel ``i`` with ``i + K/2``), a fixed permutation of the
paper's adjacent pairs ``(2i, 2i+1)``; the two are the same model up to a
relabelling of the projection's output channels.

Two variants change which channels turn:

* partial rotary (``config.model.rope.partial``, GPT-NeoX's
  ``rotary_pct``): only the first ``R = int(K * partial)`` channels of
  each head turn, with the frequencies of a head of size R
  (``theta^(-2i/R)``, ``i < R/2``), paired half and half within them; the
  other ``K - R`` pass through unchanged.
* p-RoPE (Barbero et al. 2025, "Round and Round We Go! What makes Rotary
  Positional Encodings useful?", Sec. 6; ``config.model.rope.p``): only the
  highest fraction ``p`` of the frequencies is kept, the first
  ``floor(p R / 2)`` pairs (rounded down, as DeepMind's gemma ``apply_rope``
  computes ``int(rope_proportion * head_dim // 2)`` and Hugging Face's
  ``proportional`` rope type does: 57 of 64 pairs at R = 128, p = 0.9);
  the lowest frequencies are set to 0, so those pairs do not turn and carry
  content alone. ``p = 1`` is RoPE, ``p = 0`` turns nothing (NoPE).

Length extension by frequency scaling (Position Interpolation, NTK-aware,
dynamic NTK, NTK-by-parts, YaRN, Llama 3.1, LongRoPE) is selected by
``config.model.rope.scaling``; the methods, their settings and formulas
live in the registry of ``lmx.positions.rope_scaling`` (which also holds
the frequencies ``rope_inv_freq``, so the two modules import one way).
"""

import math

import jax
import jax.numpy as jnp
import ml_collections

from lmx.config.fields import require
from lmx.positions import rope_scaling
from lmx.positions.base import PositionEncoding
from lmx.positions.rope_scaling import rope_inv_freq

__all__ = ['RoPE', 'apply_rope', 'kept_pairs', 'p_rope', 'rope_angles',
           'rope_inv_freq']


def rope_angles(positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """``positions[..., None] * inv_freq``: the angle of every pair."""
  return positions.astype(jnp.float32)[..., None] * inv_freq


P_ROUNDINGS = ('floor', 'half_up')


def kept_pairs(n_pairs: int, p: float, rounding: str = 'floor') -> int:
  """p-RoPE: how many of ``n_pairs`` frequencies are kept,
  ``floor(p R / 2)`` with ``R = 2 n_pairs`` the rotated channels, computed
  as the reference code computes it (gemma's ``apply_rope``:
  ``int(rope_proportion * head_dim // 2)``), so float rounding of ``p R``
  falls the same way. ``rounding='half_up'``: ``round(p R / 2)`` with
  halves rounded up, what lmx computed before it followed the reference
  (``config.model.rope.p_rounding``; runs saved then load with it)."""
  if rounding == 'half_up':
    return int(math.floor(p * n_pairs + 0.5))
  return int(math.floor(p * (2 * n_pairs) // 2))


def p_rope(inv_freq: jax.Array, p: float, rounding: str = 'floor'
           ) -> jax.Array:
  """p-RoPE: the frequencies ``[..., R/2]`` with all but the highest
  ``kept_pairs(R/2, p, rounding)`` set to 0 (``inv_freq`` falls with the
  index)."""
  n_pairs = inv_freq.shape[-1]
  if p >= 1.0:
    return inv_freq
  keep = jnp.arange(n_pairs) < kept_pairs(n_pairs, p, rounding)
  return jnp.where(keep, inv_freq, 0.0)


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
  real_positions = True   # angles of float32 positions
  switches = {'scaling': 'rescales RoPE frequencies',
              'partial': 'changes which RoPE channels turn',
              'p': 'changes which RoPE channels turn'}

  def __init__(self, cfg, *, rngs):
    super().__init__(cfg, rngs=rngs)
    self.theta = float(cfg.rope.theta)
    self.scaling = str(cfg.rope.scaling)
    self.rot_dim = rope_scaling.rotary_dim(cfg)
    self.p = float(cfg.rope.p)
    self.p_rounding = str(cfg.rope.p_rounding)
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
        # Partial rotary: the fraction of each head's channels that turn
        # (the first ones); 1 = all.
        'partial': 1.0,
        # p-RoPE: the fraction of frequencies kept (the highest); the
        # others are 0. 1 = RoPE, 0 = no rotation.
        'p': 1.0,
        # How p R / 2 becomes a count of pairs: 'floor' (the reference
        # code's) or 'half_up' (lmx before it followed it).
        'p_rounding': 'floor',
    })

  @classmethod
  def check(cls, model_cfg):
    super().check(model_cfg)
    f = cls.fields(model_cfg)
    f.positive('rope.theta')
    partial = f.float('rope.partial', 0.0, 1.0, lo_open=True)
    head_dim = model_cfg.d_model // model_cfg.num_heads
    rot = rope_scaling.rotary_dim(model_cfg)
    require(rot >= 2 and rot % 2 == 0,
            f'config.model.rope.partial={partial} turns int({head_dim} x '
            f'{partial}) = {rot} channels of each head; RoPE turns channel '
            'pairs, so that must be an even number of at least 2. Choose '
            f'partial so that head_dim x partial is even (e.g. '
            f'{max(2, rot - rot % 2) / head_dim:g}).')
    f.float('rope.p', 0.0, 1.0)
    f.choice('rope.p_rounding', P_ROUNDINGS)
    rope_scaling.check(model_cfg)

  @classmethod
  def former_defaults(cls, saved_model):
    # NTK-by-parts and YaRN ramped over the turns r (the paper's text)
    # before config.model.rope.ramp existed.
    rope = saved_model.get('rope', {})
    former = {}
    if rope.get('scaling') in ('ntk_by_parts', 'yarn'):
      former['ramp'] = 'turns'
    # p-RoPE rounded halves up before it followed the reference's floor.
    if float(rope.get('p', 1.0)) < 1.0:
      former['p_rounding'] = 'half_up'
    return former

  def keys_static(self) -> bool:
    # A scaling that follows the sequence length picks its frequencies
    # from the longest key position.
    return not rope_scaling.get(self.scaling).follows_length

  def rotate(self, q_BxTxHxK, k_BxSxHxK, q_positions_BxT, k_positions_BxS):
    inv_freq, logit_scale = rope_scaling.scaled_frequencies(
        self.scaling_cfg, self.rot_dim, self.theta, k_positions_BxS)
    inv_freq = p_rope(inv_freq, self.p, self.p_rounding)
    if inv_freq.ndim == 2:  # one set per sequence (dynamic, longrope)
      inv_freq = inv_freq[:, None, :]
    # The logits get logit_scale: q and k each its square root, folded
    # into the rotation (with partial rotary, on the turned channels only,
    # as the reference implementations scale cos and sin).
    scale = logit_scale ** 0.5
    r = self.rot_dim

    def turn(x, pos):
      if r == self.head_dim:
        return apply_rope(x, pos, inv_freq, scale)
      return jnp.concatenate(
          [apply_rope(x[..., :r], pos, inv_freq, scale), x[..., r:]], axis=-1)

    return turn(q_BxTxHxK, q_positions_BxT), turn(k_BxSxHxK, k_positions_BxS)
