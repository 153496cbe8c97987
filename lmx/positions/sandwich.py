"""Sandwich (Chi, Fan, Rudnicky & Ramadge 2023, "Dissecting Transformer
Length Extrapolation via the Lens of Receptive Field Analysis", ACL 2023,
Sec. 5).

A parameter-free relative bias: the inner product of the sinusoidal position
embeddings of the query and the key, taken in a dimension ``d'`` of its own
(the paper's hyperparameter; smaller than the model width, which lengthens
the slow decay the paper's receptive-field analysis asks for):

    p_m . p_n = sum_{i=1}^{d'/2} cos((m - n) / 10000^(2i / d'))

Head ``h`` (``1..H``) adds ``(p_m . p_n - d'/2) / (8h / H)`` to the logit of
query ``m`` and key ``n``: the inner product is ``d'/2`` at distance 0 and
smaller beyond, so the bias is 0 on the diagonal and a decaying, log-like
penalty further away; ``8h / H`` are the per-head ratios that ALiBi's slopes
``2^(-8h/H)`` are built from (the paper's Fig. 1). Subtracting ``d'/2``
moves every logit of a row by the same constant, so it changes no attention
weight; it only keeps the bias non-positive, as ALiBi's is.

The sum runs over ``i = 1 .. d'/2`` as the paper's equation writes it (the
highest frequency is ``10000^(-2/d')``, not 1). The KERPLE repository of
the same authors has no Sandwich code to compare against, so the formulas
follow the paper's equation and the per-head ratios of its Fig. 1; an
independent implementation that cites the paper (NVIDIA NeMo's) computes
the same bias.

The bias depends on positions only through ``m - n``: Sandwich is shift
invariant. Real-valued positions (CAPE's sampling) are taken as they are.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lmx.config.fields import require
from lmx.positions.base import KernelBias, PositionEncoding, relative_distance


# The largest d': each logit sums d'/2 cosines, one term per frequency.
MAX_DIM = 1024


def sandwich_frequencies(dim: int, max_timescale: float = 10000.0
                         ) -> np.ndarray:
  """``10000^(-2i / d')`` for ``i = 1 .. d'/2``: ``[d'/2]`` float64."""
  i = np.arange(1, dim // 2 + 1, dtype=np.float64)
  return max_timescale ** (-2.0 * i / dim)


def sandwich_scales(num_heads: int) -> np.ndarray:
  """The per-head divisors ``8h / H``, ``h = 1..H``: ``[H]`` float32."""
  if num_heads < 1:
    raise ValueError(f'sandwich_scales needs at least one head, got '
                     f'{num_heads}.')
  h = np.arange(1, num_heads + 1, dtype=np.float64)
  return (8.0 * h / num_heads).astype(np.float32)


def sandwich_kernel(distance: jax.Array, dim: int,
                    max_timescale: float = 10000.0) -> jax.Array:
  """``sum_{i=1}^{d'/2} cos(distance * w_i) - d'/2`` elementwise (float32):
  the inner product of two sinusoidal embeddings of dimension ``d'`` at
  this distance, less its value at 0. Written as one term per frequency
  (elementwise only, so a fused kernel can run it, and no array of
  ``[..., d'/2]`` is ever built)."""
  d = distance.astype(jnp.float32)
  out = jnp.zeros(d.shape, jnp.float32)
  for w in sandwich_frequencies(dim, max_timescale):
    out = out + jnp.cos(d * np.float32(w))
  return out - dim / 2


def _distance(q_positions_BxT, k_positions_BxS):
  """``q - k`` ``[B, T, S]``: exact in int32 for integer positions, float32
  for real ones."""
  if (jnp.issubdtype(q_positions_BxT.dtype, jnp.integer)
      and jnp.issubdtype(k_positions_BxS.dtype, jnp.integer)):
    return relative_distance(q_positions_BxT, k_positions_BxS)
  return (q_positions_BxT.astype(jnp.float32)[:, :, None]
          - k_positions_BxS.astype(jnp.float32)[:, None, :])


def sandwich_bias(q_positions_BxT: jax.Array, k_positions_BxS: jax.Array,
                  dim: int, num_heads: int,
                  max_timescale: float = 10000.0) -> jax.Array:
  """``(p_m . p_n - d'/2) / (8h / H)`` as ``[B, H, T, S]`` (float32)."""
  kernel_BxTxS = sandwich_kernel(_distance(q_positions_BxT, k_positions_BxS),
                                 dim, max_timescale)
  inv_H = 1.0 / jnp.asarray(sandwich_scales(num_heads))
  return kernel_BxTxS[:, None] * inv_H[None, :, None, None]


def sandwich_tile(dim, max_timescale, p, q_pos_Qx1, k_pos_1xK):
  """One head's Sandwich bias on a tile (``KernelBias.fn``)."""
  kernel = sandwich_kernel(q_pos_Qx1 - k_pos_1xK, dim, max_timescale)
  return kernel * p['inv_scale'][0]


class Sandwich(PositionEncoding):
  """The fixed bias ``(p_m . p_n - d'/2) / (8h / H)``, shared by every layer
  (it has no parameters)."""

  real_positions = True

  def __init__(self, cfg, *, rngs):
    super().__init__(cfg, rngs=rngs)
    self.dim = int(cfg.sandwich.dim)
    self.max_timescale = float(cfg.sandwich.max_timescale)

  @classmethod
  def default_config(cls):
    return ml_collections.ConfigDict({
        # d': the dimension of the sinusoidal embeddings whose inner
        # product is the bias (even). The paper's compression: below the
        # model width the bias decays more slowly with distance.
        'dim': 128,
        'max_timescale': 10000.0,
    })

  @classmethod
  def check(cls, model_cfg):
    super().check(model_cfg)
    f = cls.fields(model_cfg)
    # Every logit sums d'/2 cosines, written out one per frequency.
    dim = f.int('sandwich.dim', 2, MAX_DIM)
    require(dim % 2 == 0,
            f'config.model.sandwich.dim must be even (the sinusoidal '
            f"embedding of dimension d' has d'/2 sine-cosine pairs), got "
            f'{dim}: use {dim - 1} or {dim + 1}.')
    f.positive('sandwich.max_timescale')

  def bias(self, q_positions_BxT, k_positions_BxS):
    return sandwich_bias(q_positions_BxT, k_positions_BxS, self.dim,
                         self.num_heads, self.max_timescale)

  def kernel_bias(self):
    inv = 1.0 / sandwich_scales(self.num_heads)
    return KernelBias({'inv_scale': jnp.asarray(inv, jnp.float32)[:, None]},
                      functools.partial(sandwich_tile, self.dim,
                                        self.max_timescale),
                      terms=max(1, self.dim // 2))


__all__ = ['Sandwich', 'sandwich_bias', 'sandwich_frequencies',
           'sandwich_kernel', 'sandwich_scales']
