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


def _low_on_cpu(queries: int, *xs: jax.Array) -> bool:
  """bfloat16 on CPU, for more than a few queries: a decoding step's
  product against the KV cache would copy the whole cache to lay it out."""
  return (platform() == 'cpu' and queries >= MIN_QUERIES_RELAYOUT
          and all(x.dtype == jnp.bfloat16 for x in xs))


# The fewest queries for which the bf16 attention products lay out their
# operands (``xla_cpu.attention_scores``): below, a decoding step.
MIN_QUERIES_RELAYOUT = 16


def attention_scores(q_BxTxHxK: jax.Array, k_BxSxHxK: jax.Array) -> jax.Array:
  """The attention's ``q . k`` per pair, ``[B, H, T, S]`` float32 (not yet
  scaled); in bfloat16 on CPU ``xla_cpu.attention_scores``."""
  if _low_on_cpu(q_BxTxHxK.shape[1], q_BxTxHxK, k_BxSxHxK):
    return xla_cpu.attention_scores(q_BxTxHxK, k_BxSxHxK)
  return jnp.einsum('bthk,bshk->bhts', q_BxTxHxK, k_BxSxHxK,
                    preferred_element_type=jnp.float32)


def attention_values(p_BxHxTxS: jax.Array, v_BxSxHxK: jax.Array) -> jax.Array:
  """The weighted values ``[B, T, H, K]`` of weights in the values' dtype.
  On CPU float32 (a bf16 product reaches the CPU's bf16 units only with a
  float32 result; ``xla_cpu.attention_values`` for a bf16 block of
  queries); elsewhere in the values' dtype, which GPU and TPU compilers
  accumulate in float32 themselves (a float32 result there costs a TPU
  step 8% more memory traffic, ``bench/aot.py``)."""
  if _low_on_cpu(p_BxHxTxS.shape[2], p_BxHxTxS, v_BxSxHxK):
    return xla_cpu.attention_values(p_BxHxTxS, v_BxSxHxK)
  if platform() != 'cpu':
    return jnp.einsum('bhts,bshk->bthk', p_BxHxTxS, v_BxSxHxK)
  return jnp.einsum('bhts,bshk->bthk', p_BxHxTxS, v_BxSxHxK,
                    preferred_element_type=jnp.float32)


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
