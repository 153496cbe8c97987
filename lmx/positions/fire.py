"""FIRE: functional interpolation for relative positions (Li et al. 2023,
"Functional Interpolation for Relative Positions Improves Long Context
Transformers", arXiv:2310.04418, Sec. 3, Eq. 4-6 and the reference code
of its Appendix).

Each layer adds a learned bias to the logit of query ``i`` and key ``j``:

    b(i, j) = f( psi(i - j) / psi(max(L, i)) ),    psi(x) = log(c |x| + 1)

* ``f``: a small MLP per layer, scalar -> ``mlp_width`` (ReLU) -> one value
  per head;
* ``c``: a learned scalar (``init_c``, 0.1 in the paper's code);
* ``L``: the learned threshold of Sec. 3.3, ``|L_mult * init_threshold|``
  with ``L_mult`` learned from 1 and ``init_threshold`` fixed (the paper's
  code: 512).

Dividing by ``psi(i)`` is the *progressive interpolation* of Sec. 3.2: the
input of ``f`` stays in ``[0, 1]`` for every causal pair at any length, so
a longer sequence asks ``f`` for no value it was not trained on; the
threshold keeps short contexts from being stretched (below ``L`` the
normaliser is ``psi(L)``). ``eps`` (1e-6) guards the division, as in the
reference code. The bias depends on the query position, not only on
``i - j``: FIRE is not shift invariant.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lmx.positions.base import KernelBias, PositionEncoding, relative_distance


def fire_inputs(q_positions_BxT: jax.Array, k_positions_BxS: jax.Array,
                c: jax.Array, threshold: jax.Array,
                eps: float = 1e-6) -> jax.Array:
  """``psi(i - j) / (psi(max(L, i)) + eps)``, ``[B, T, S]`` float32: what
  FIRE's MLP reads (``psi(x) = log(|c x| + 1)``, ``L = threshold``)."""
  d_BxTxS = relative_distance(q_positions_BxT, k_positions_BxS).astype(
      jnp.float32)
  q_BxTx1 = q_positions_BxT.astype(jnp.float32)[:, :, None]
  return fire_ratio(d_BxTxS, q_BxTx1, c, threshold, eps)


def fire_ratio(d, q, c, threshold, eps):
  """``psi(d) / (psi(max(L, q)) + eps)`` elementwise, for float distances
  ``d`` and query positions ``q`` that broadcast against each other."""
  normaliser = jnp.log(jnp.abs(c * jnp.maximum(q, threshold)) + 1.0)
  return jnp.log(jnp.abs(c * d) + 1.0) / (normaliser + eps)


def fire_tile(width, eps, p, q_pos_Qx1, k_pos_1xK):
  """One head's FIRE bias on a tile (``KernelBias.fn``): the MLP written out
  over its ``width`` hidden units, each a scalar weight on the tile."""
  d = (q_pos_Qx1 - k_pos_1xK).astype(jnp.float32)
  x = fire_ratio(d, q_pos_Qx1.astype(jnp.float32), p['c'][0],
                 p['threshold'][0], eps)
  out = jnp.zeros(x.shape, jnp.float32) + p['b2'][0]
  for w in range(width):
    hidden = jnp.maximum(x * p['w1'][w] + p['b1'][w], 0.0)
    out = out + hidden * p['w2'][w]
  return out


# A fused kernel reads 3 * width + 3 parameters per head (lmx.kernels.flash
# holds at most 128).
KERNEL_MAX_WIDTH = (128 - 3) // 3


def fire_mlp(x: jax.Array, w1_W: jax.Array, b1_W: jax.Array,
             w2_WxH: jax.Array, b2_H: jax.Array) -> jax.Array:
  """``f(x) = relu(x w1 + b1) w2 + b2`` for scalar inputs ``x [...]``:
  ``[..., H]``."""
  h = jax.nn.relu(x[..., None] * w1_W + b1_W)
  return h @ w2_WxH + b2_H


def _uniform(key, shape, fan_in):
  """PyTorch's ``nn.Linear`` initialisation, U(-1/sqrt(fan_in), +...)."""
  bound = fan_in ** -0.5
  return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


class FIRE(PositionEncoding):
  """A learned MLP of the progressively normalised log distance, per layer."""

  per_layer = True

  @classmethod
  def shift_invariant(cls) -> bool:
    # psi(max(L, i)) normalises by the query's position past the threshold
    # L: shift invariant below it only.
    return False

  def __init__(self, cfg, *, rngs):
    super().__init__(cfg, rngs=rngs)
    c = cfg.fire
    width, h = int(c.mlp_width), self.num_heads
    self.w1 = nnx.Param(_uniform(rngs.params(), (width,), 1))
    self.b1 = nnx.Param(_uniform(rngs.params(), (width,), 1))
    self.w2 = nnx.Param(_uniform(rngs.params(), (width, h), width))
    self.b2 = nnx.Param(_uniform(rngs.params(), (h,), width))
    self.c = nnx.Param(jnp.asarray(float(c.init_c), jnp.float32))
    self.threshold_mult = nnx.Param(jnp.asarray(1.0, jnp.float32))
    self.init_threshold = float(c.init_threshold)
    self.eps = float(c.eps)

  @classmethod
  def default_config(cls):
    return ml_collections.ConfigDict({
        'mlp_width': 32,        # hidden units of f
        'init_c': 0.1,          # psi's c at initialisation
        # L at initialisation (L = |L_mult * init_threshold|, L_mult learned
        # from 1), as in the paper's code.
        'init_threshold': 512.0,
        'eps': 1e-6,
    })

  @classmethod
  def check(cls, model_cfg):
    super().check(model_cfg)
    f = cls.fields(model_cfg)
    f.int('fire.mlp_width', 1)
    f.positive('fire.init_c')
    f.positive('fire.init_threshold')
    f.positive('fire.eps')

  @classmethod
  def kernel_refusal(cls, model_cfg=None):
    if model_cfg is not None and int(model_cfg.fire.mlp_width) > (
        KERNEL_MAX_WIDTH):
      return (f'a kernel holds the MLP of at most {KERNEL_MAX_WIDTH} hidden '
              f'units, and config.model.fire.mlp_width is '
              f'{model_cfg.fire.mlp_width}')
    return None

  def kernel_bias(self):
    width, h = self.w1.shape[0], self.num_heads
    if width > KERNEL_MAX_WIDTH:
      return None
    threshold = jnp.abs(self.threshold_mult[...] * self.init_threshold)
    per_head = lambda x: jnp.broadcast_to(jnp.reshape(x, (1, -1)),
                                          (h, jnp.size(x)))
    return KernelBias(
        {'w1': per_head(self.w1[...]), 'b1': per_head(self.b1[...]),
         'w2': self.w2[...].T, 'b2': self.b2[...][:, None],
         'c': per_head(self.c[...]), 'threshold': per_head(threshold)},
        functools.partial(fire_tile, width, self.eps))

  def bias(self, q_positions_BxT, k_positions_BxS):
    threshold = jnp.abs(self.threshold_mult[...] * self.init_threshold)
    x_BxTxS = fire_inputs(q_positions_BxT, k_positions_BxS, self.c[...],
                          threshold, self.eps)
    out_BxTxSxH = fire_mlp(x_BxTxS, self.w1[...], self.b1[...], self.w2[...],
                           self.b2[...])
    return jnp.transpose(out_BxTxSxH, (0, 3, 1, 2))
