"""Learned absolute position embeddings (Gehring et al. 2017; GPT, BERT).

A trainable table of ``max_len`` vectors, one per position, added to the
token embeddings: ``x_p <- x_p + E[p]``. Positions at or past ``max_len``
have no row; asking for them is a configuration error that
``lmx.config.validate.validate`` reports before anything is built.
"""

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from lmx.positions.base import PositionEncoding


class Learned(PositionEncoding):
  """A ``[max_len, d_model]`` table indexed by position."""

  def __init__(self, cfg, *, rngs):
    super().__init__(cfg, rngs=rngs)
    self.max_len = int(cfg.learned.max_len)
    init = nnx.initializers.normal(float(cfg.learned.init_std))
    self.table = nnx.Param(init(rngs.params(), (self.max_len, self.d_model),
                                jnp.float32))

  @classmethod
  def default_config(cls):
    return ml_collections.ConfigDict({'max_len': 2048, 'init_std': 0.5})

  @classmethod
  def check(cls, model_cfg):
    super().check(model_cfg)
    f = cls.fields(model_cfg)
    f.int('learned.max_len', 1, 2**31 - 1)  # positions are int32
    f.positive('learned.init_std')

  @classmethod
  def max_positions(cls, model_cfg):
    return int(model_cfg.learned.max_len)

  @classmethod
  def bound_setting(cls):
    return 'config.model.learned.max_len'

  @classmethod
  def resize(cls, name, value, shape):
    """The table stretched to ``shape[0]`` rows by linear interpolation, the
    analogue of Position Interpolation (Chen et al. 2023) for a learned
    table: new row ``r`` is the old table read at position
    ``r * (old_len - 1) / (new_len - 1)``."""
    if name != 'table' or value.ndim != 2 or value.shape[1] != shape[1]:
      return None
    old_len, new_len = value.shape[0], shape[0]
    x = np.linspace(0.0, old_len - 1.0, new_len)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, old_len - 1)
    frac = (x - lo)[:, None]
    return ((1.0 - frac) * value[lo] + frac * value[hi]).astype(value.dtype)

  def embed(self, x_BxTxD, positions_BxT):
    pe_BxTxD = jnp.take(self.table[...], positions_BxT, axis=0)
    return x_BxTxD + pe_BxTxD.astype(x_BxTxD.dtype)
