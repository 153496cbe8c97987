"""Sinusoidal absolute position encoding (Vaswani et al. 2017, Sec. 3.5).

    PE(p, 2i)   = sin(p / max_timescale^(2i / d))
    PE(p, 2i+1) = cos(p / max_timescale^(2i / d))

with ``max_timescale = 10000`` in the paper. The vector is added to the token
embedding. It is computed from the position values directly, so any position
is representable; that does not mean the model has learned to use unseen ones.
"""

import jax
import jax.numpy as jnp
import ml_collections

from lmx.config.fields import require
from lmx.positions.base import PositionEncoding


def sinusoidal_table(positions: jax.Array, d_model: int,
                     max_timescale: float = 10000.0) -> jax.Array:
  """The sinusoidal encoding of each position: ``[..., d_model]`` (float32).

  Even channels hold sines and odd channels cosines, interleaved as in the
  paper's formula. ``d_model`` must be even.
  """
  if d_model % 2:
    raise ValueError(f'sinusoidal_table needs an even d_model, got {d_model}.')
  i = jnp.arange(d_model // 2, dtype=jnp.float32)
  inv_timescale = max_timescale ** (-2.0 * i / d_model)            # [D/2]
  angle = positions.astype(jnp.float32)[..., None] * inv_timescale  # [..., D/2]
  table = jnp.stack([jnp.sin(angle), jnp.cos(angle)], axis=-1)     # [..., D/2, 2]
  return table.reshape(*positions.shape, d_model)


class Sinusoidal(PositionEncoding):
  """Adds ``sinusoidal_table(positions)`` to the token embeddings."""

  real_positions = True   # sinusoids of float32 positions

  def __init__(self, cfg, *, rngs):
    super().__init__(cfg, rngs=rngs)
    self.max_timescale = float(cfg.sinusoidal.max_timescale)

  @classmethod
  def default_config(cls):
    return ml_collections.ConfigDict({'max_timescale': 10000.0})

  @classmethod
  def check(cls, model_cfg):
    super().check(model_cfg)
    require(model_cfg.d_model % 2 == 0,
            f'sinusoidal needs an even config.model.d_model, got '
            f'{model_cfg.d_model}.')
    cls.fields(model_cfg).positive('sinusoidal.max_timescale')

  def embed(self, x_BxTxD, positions_BxT):
    pe_BxTxD = sinusoidal_table(positions_BxT, self.d_model, self.max_timescale)
    return x_BxTxD + pe_BxTxD.astype(x_BxTxD.dtype)
