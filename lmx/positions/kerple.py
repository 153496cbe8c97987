"""KERPLE: kernelized relative positional embedding (Chi et al. 2022, Sec. 4).

A conditionally positive definite kernel of the distance ``|m - n|`` becomes
a bias on the attention logits, with its parameters learned per head:

* log kernel (the paper's best):   ``-r1 * log(1 + r2 * |m - n|)``,
  with ``r1, r2 > 0``;
* power kernel:                    ``-a * |m - n|^p``, with ``a > 0`` and
  ``0 < p <= 2``.

The kernel parameters are per head and, by default, shared by every layer:
the paper's Fig. 1 caption, and its released code, which builds one
instance and hands it to every layer (``config.model.kerple.per_layer``
gives each layer its own, as lmx did before; configs saved without the
field keep that).

The constraints are kept as the released code keeps them: the stored
parameters are projected back into the constraint set (``r1, r2, a >= eps``,
``eps <= p <= 2``) before they are used, so a parameter pushed past a bound
restarts from the bound. Here that projection runs after every optimizer
update (``param_bounds``, applied by the trainer through
``lmx.training.run_state.project``) and once at initialisation; the forward pass
clamps as well (passing gradients straight through, as the in-place
projection does), so parameters restored from elsewhere are used inside the
set too.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lmx.positions.base import KernelBias, PositionEncoding, relative_distance

KERNELS = ('log', 'power')


def kerple_log(distance: jax.Array, r1: jax.Array, r2: jax.Array) -> jax.Array:
  """``-r1 * log(1 + r2 * distance)``; r1, r2 broadcast against distance."""
  return -r1 * jnp.log1p(r2 * distance)


def kerple_power(distance: jax.Array, a: jax.Array, p: jax.Array) -> jax.Array:
  """``-a * distance^p``; a, p broadcast against distance (``0^p = 0``).

  Written as ``exp(p * log d)`` on ``d > 0`` so the gradient in ``p`` is finite
  at ``d = 0`` (``d^p`` there would give ``0 * log 0 = nan``).
  """
  positive = distance > 0
  safe = jnp.where(positive, distance, 1.0)
  return jnp.where(positive, -a * jnp.exp(p * jnp.log(safe)), 0.0)


def kerple_tile(kernel, p, q_pos_Qx1, k_pos_1xK):
  """One head's KERPLE bias on a tile (``KernelBias.fn``)."""
  dist = jnp.abs(q_pos_Qx1 - k_pos_1xK).astype(jnp.float32)
  fn = kerple_log if kernel == 'log' else kerple_power
  return fn(dist, p['first'][0], p['second'][0])


def _clamp(x, lo, hi=None):
  """Clamp in the forward pass, identity in the backward pass."""
  return x + jax.lax.stop_gradient(jnp.clip(x, lo, hi) - x)


class Kerple(PositionEncoding):
  """Per-head learned log or power kernel bias, shared across layers unless
  ``config.model.kerple.per_layer``."""

  def __init__(self, cfg, *, rngs):
    super().__init__(cfg, rngs=rngs)
    c = cfg.kerple
    if c.kernel not in KERNELS:
      raise ValueError(f'config.model.kerple.kernel must be one of {KERNELS}, '
                       f'got {c.kernel!r}.')
    self.kernel = c.kernel
    self.eps = float(c.eps)
    # Initialisation as in the paper's code: log kernel r1 ~ U(0, 2),
    # r2 ~ U(0, 1); power kernel a ~ U(0, 1), exponent p ~ U(0, 2).
    h = self.num_heads
    scale_max, shape_max = (2.0, 1.0) if self.kernel == 'log' else (1.0, 2.0)
    self.scale = nnx.Param(scale_max * jax.random.uniform(rngs.params(), (h,)))
    self.shape = nnx.Param(shape_max * jax.random.uniform(rngs.params(), (h,)))

  @classmethod
  def default_config(cls):
    return ml_collections.ConfigDict({'kernel': 'log', 'eps': 1e-2,
                                      # One set of parameters per layer
                                      # (False: shared, the paper's).
                                      'per_layer': False})

  @classmethod
  def is_per_layer(cls, model_cfg):
    return bool(model_cfg.kerple.per_layer)

  @classmethod
  def former_defaults(cls, saved_model):
    # KERPLE runs saved before kerple.per_layer existed had a set per layer
    # (for another encoding the setting is unused: today's default).
    if saved_model.get('position') == 'kerple':
      return {'per_layer': True}
    return {}

  @classmethod
  def param_bounds(cls, model_cfg):
    eps = float(model_cfg.kerple.eps)
    upper = None if model_cfg.kerple.kernel == 'log' else 2.0
    return {'scale': (eps, None), 'shape': (eps, upper)}

  @classmethod
  def check(cls, model_cfg):
    super().check(model_cfg)
    f = cls.fields(model_cfg)
    f.choice('kerple.kernel', KERNELS)
    # The power kernel's exponent is clamped to [eps, 2].
    f.float('kerple.eps', 0.0, 2.0, lo_open=True)
    f.bool('kerple.per_layer')

  def kernel_parameters(self):
    """The constrained (r1, r2) or (a, p), each ``[heads]``."""
    first = _clamp(self.scale[...], self.eps)
    if self.kernel == 'log':
      return first, _clamp(self.shape[...], self.eps)
    return first, _clamp(self.shape[...], self.eps, 2.0)

  def bias(self, q_positions_BxT, k_positions_BxS):
    dist_Bx1xTxS = jnp.abs(relative_distance(q_positions_BxT, k_positions_BxS)
                           )[:, None].astype(jnp.float32)
    first, second = self.kernel_parameters()
    first = first[None, :, None, None]
    second = second[None, :, None, None]
    fn = kerple_log if self.kernel == 'log' else kerple_power
    return fn(dist_Bx1xTxS, first, second)

  def kernel_bias(self):
    first, second = self.kernel_parameters()
    return KernelBias({'first': first[:, None], 'second': second[:, None]},
                      functools.partial(kerple_tile, self.kernel))
