"""ALiBi: attention with linear biases (Press et al. 2022, "Train Short, Test
Long", Sec. 3).

No position is added to the embeddings. Head ``h`` adds ``-m_h * (i - j)`` to
the logit of query ``i`` and key ``j``. The slopes ``m_h`` are a fixed
geometric sequence: for ``n`` heads (``n`` a power of two) the ratio and the
first term are ``2^(-8/n)``, so 8 heads get ``1/2, 1/4, ..., 1/256``. For other
head counts the paper's code takes the ``2^k`` slopes of the nearest power of
two ``2^k < n`` and fills the rest with every other slope of ``2^(k+1)`` heads.
"""

import math

import jax.numpy as jnp
import numpy as np

from lmx.positions.base import KernelBias, PositionEncoding, relative_distance


def _power_of_two_slopes(n: int) -> list[float]:
  ratio = 2.0 ** (-8.0 / n)
  return [ratio ** (h + 1) for h in range(n)]


def alibi_slopes(num_heads: int) -> np.ndarray:
  """The ALiBi head slopes, shape ``[num_heads]`` (float32)."""
  if num_heads < 1:
    raise ValueError(f'alibi_slopes needs at least one head, got {num_heads}.')
  k = 2 ** int(math.floor(math.log2(num_heads)))
  slopes = _power_of_two_slopes(k)
  if k < num_heads:
    slopes += _power_of_two_slopes(2 * k)[0::2][:num_heads - k]
  return np.asarray(slopes, dtype=np.float32)


def alibi_bias(q_positions_BxT, k_positions_BxS, slopes_H):
  """``-m_h * |i - j|`` as ``[B, H, T, S]`` (float32).

  Causal attention only reads ``j <= i``, where this is ``-m_h * (i - j)``.
  """
  dist_BxTxS = jnp.abs(relative_distance(q_positions_BxT, k_positions_BxS))
  return -jnp.asarray(slopes_H)[None, :, None, None] * dist_BxTxS[:, None].astype(
      jnp.float32)


def alibi_tile(p, q_pos_Qx1, k_pos_1xK):
  """One head's ALiBi bias on a tile (``KernelBias.fn``): ``-m |i - j|``."""
  dist = jnp.abs(q_pos_Qx1 - k_pos_1xK).astype(jnp.float32)
  return -p['slope'][0] * dist


class ALiBi(PositionEncoding):
  """Fixed per-head linear distance penalties, shared by every layer."""

  def __init__(self, cfg, *, rngs):
    super().__init__(cfg, rngs=rngs)
    # A constant, not a parameter: kept as plain floats so it is static.
    self.slopes = tuple(float(m) for m in alibi_slopes(cfg.num_heads))

  def bias(self, q_positions_BxT, k_positions_BxS):
    return alibi_bias(q_positions_BxT, k_positions_BxS,
                      np.asarray(self.slopes, np.float32))

  def kernel_bias(self):
    slopes = jnp.asarray(self.slopes, jnp.float32)[:, None]
    return KernelBias({'slope': slopes}, alibi_tile)
