"""T5 relative position bias (Raffel et al. 2020, Sec. 2.1).

Each query/key offset is mapped to one of ``num_buckets`` buckets and every
bucket has a learned scalar per head, added to the attention logits. One table
is shared by all layers, as in T5. For a causal decoder (``bidirectional`` off)
only ``n = max(i - j, 0)`` matters:

* ``n < num_buckets / 2``: bucket ``n`` (one bucket per exact distance);
* otherwise: ``num_buckets/2 + floor(log(n / (num_buckets/2)) /
  log(max_distance / (num_buckets/2)) * (num_buckets/2))``, capped at
  ``num_buckets - 1``. Every distance at or past ``max_distance`` shares the
  last bucket, which is what lets T5 run at any length.

Bidirectional mode halves the buckets and spends one half on each sign.
"""

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lmx.config.fields import require
from lmx.positions.base import KernelBias, PositionEncoding, relative_distance


def t5_relative_bucket(relative_position: jax.Array, num_buckets: int = 32,
                       max_distance: int = 128,
                       bidirectional: bool = False) -> jax.Array:
  """The T5 bucket of ``relative_position = key_position - query_position``."""
  n = -relative_position.astype(jnp.int32)
  offset = jnp.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    offset = jnp.where(n < 0, num_buckets, 0)
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # Log-spaced buckets past max_exact; the max(n, 1) guards log(0) in the
  # branch that jnp.where discards.
  log_ratio = (jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
               / math.log(max_distance / max_exact))
  large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return offset + jnp.where(is_small, n, large)


def t5_tile(num_buckets, max_distance, bidirectional, p, q_pos_Qx1,
            k_pos_1xK):
  """One head's T5 bias on a tile (``KernelBias.fn``). The table lookup is
  written as a select per bucket (a one-hot contraction), not a gather, so
  a TPU kernel can run it; its gradient is the tile's logit gradient summed
  per bucket."""
  bucket = t5_relative_bucket(k_pos_1xK - q_pos_Qx1, num_buckets,
                              max_distance, bidirectional)
  table = p['table']
  out = jnp.zeros(bucket.shape, jnp.float32)
  for n in range(num_buckets):
    out = jnp.where(bucket == n, table[n], out)
  return out


class T5Bias(PositionEncoding):
  """A learned ``[num_buckets, heads]`` bias table shared by all layers."""

  def __init__(self, cfg, *, rngs):
    super().__init__(cfg, rngs=rngs)
    c = cfg.t5
    self.num_buckets = int(c.num_buckets)
    self.max_distance = int(c.max_distance)
    self.bidirectional = bool(c.bidirectional)
    init = nnx.initializers.normal(0.02)
    self.table = nnx.Param(init(rngs.params(), (self.num_buckets, self.num_heads),
                                jnp.float32))

  @classmethod
  def default_config(cls):
    return ml_collections.ConfigDict(
        {'num_buckets': 32, 'max_distance': 128, 'bidirectional': False})

  @classmethod
  def check(cls, model_cfg):
    super().check(model_cfg)
    f = cls.fields(model_cfg)
    bidirectional = f.bool('t5.bidirectional')
    num_buckets = f.int('t5.num_buckets', 4)
    max_distance = f.int('t5.max_distance', 1)
    # Bidirectional buckets spend half of them on each sign; of each half,
    # half are exact distances and the rest are log-spaced up to
    # max_distance, which must lie past the exact ones.
    exact = (num_buckets // 2 if bidirectional else num_buckets) // 2
    half = 'num_buckets/4 (bidirectional)' if bidirectional else 'num_buckets/2'
    require(max_distance > exact,
            f'config.model.t5 needs max_distance > {half}, got '
            f'{max_distance} and {num_buckets}.')

  def bias(self, q_positions_BxT, k_positions_BxS):
    rel_BxTxS = -relative_distance(q_positions_BxT, k_positions_BxS)
    bucket_BxTxS = t5_relative_bucket(rel_BxTxS, self.num_buckets,
                                      self.max_distance, self.bidirectional)
    bias_BxTxSxH = jnp.take(self.table[...], bucket_BxTxS, axis=0)
    return jnp.transpose(bias_BxTxSxH, (0, 3, 1, 2))

  def kernel_bias(self):
    return KernelBias({'table': self.table[...].T},
                      functools.partial(t5_tile, self.num_buckets,
                                        self.max_distance, self.bidirectional))
