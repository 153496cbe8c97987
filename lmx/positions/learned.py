"""Learned absolute position embeddings (Gehring et al. 2017; GPT, BERT).

A trainable table of ``max_len`` vectors, one per position, added to the
token embeddings: ``x_p <- x_p + E[p]``. Positions at or past ``max_len``
have no row; asking for them is a configuration error that
``lmx.config.validate`` reports before anything is built.
"""

import jax.numpy as jnp
import ml_collections
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
  def max_positions(cls, model_cfg):
    return int(model_cfg.learned.max_len)

  @classmethod
  def bound_setting(cls):
    return 'config.model.learned.max_len'

  def embed(self, x_BxTxD, positions_BxT):
    pe_BxTxD = jnp.take(self.table[...], positions_BxT, axis=0)
    return x_BxTxD + pe_BxTxD.astype(x_BxTxD.dtype)
