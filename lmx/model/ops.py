"""The model's dense products, chosen by platform.

``dense(layer, x, cols)`` is ``layer(x)`` (an ``nnx.Linear``) restricted
to the kernel columns ``cols``. On CPU it runs the XLA:CPU workarounds of
``lmx.model.xla_cpu``; on every other platform the plain product in the layer's
dtype, so GPU and TPU compilers see ordinary dots they can fuse.

The platform is JAX's default backend, read when the product is traced.
``on_platform(name)`` overrides it for the code traced inside it: to
compile for a TPU topology from a CPU host, or to run the plain path on
CPU in a test. A function jitted before is not traced again.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from lmx.model import xla_cpu

_override: Optional[str] = None


def platform() -> str:
  """The platform products are traced for: 'cpu', 'gpu', 'tpu'."""
  return _override or jax.default_backend()


@contextlib.contextmanager
def on_platform(name: str) -> Iterator[None]:
  """Products traced inside take the path of platform ``name``."""
  global _override
  previous, _override = _override, name
  try:
    yield
  finally:
    _override = previous


def plain_dense(x_BxTxD: jax.Array, kernel_DxF: jax.Array,
                bias_F: Optional[jax.Array], dtype) -> jax.Array:
  """``x @ kernel (+ bias)`` with operands and result in ``dtype`` (as
  ``nnx.Linear`` computes it)."""
  y = jnp.dot(x_BxTxD.astype(dtype), kernel_DxF.astype(dtype))
  if bias_F is not None:
    y = y + bias_F.astype(dtype)
  return y


def dense(layer: nnx.Linear, x_BxTxD: jax.Array,
          cols: Optional[slice] = None) -> jax.Array:
  """``layer(x)``; with ``cols``, only those output columns."""
  kernel = layer.kernel[...]
  bias = layer.bias[...] if layer.bias is not None else None
  if cols is not None:
    kernel = kernel[:, cols]
    bias = bias[cols] if bias is not None else None
  dtype = layer.dtype or x_BxTxD.dtype
  impl = xla_cpu.dense if platform() == 'cpu' else plain_dense
  return impl(x_BxTxD, kernel, bias, dtype)
