"""XLA:CPU product workarounds: the model's dense products as this
compiler runs them fastest. Chosen by ``lmx.model.ops`` on the CPU platform only,
so no other platform pays for them; the values are those of the plain
products (``tests/test_ops.py`` checks logits and gradients).

* Products are 2-D. With a 3-D input the weight gradient contracts over
  (B, T), and XLA:CPU emits it as a generic dot after a transposing copy of
  the activations instead of its fast GEMM. Flattening made the train step
  1.15-1.3x faster on a 2-core CPU (bench/train_throughput.py) with
  identical losses.
* In bfloat16, a product reaches the CPU's bf16 matrix units (AMX) only as
  a plain GEMM with a float32 result whose operands are whole buffers; an
  elementwise producer fused into the dot, or a bf16 result type, sends it
  down a generic path several times slower. So every product asks for
  float32, its operands sit behind ``optimization_barrier`` (no effect on
  values), and the weight gradient contracts over blocks of rows.
* The bf16 bias gradient (a sum over rows) is a product with a vector of
  ones: the plain reduction converts the whole gradient to float32 and
  reduces it in strided windows, several times slower.
* In bfloat16 the attention's products (``attention_scores``,
  ``attention_values``) are plain batched GEMMs over operands laid out
  heads-major in buffers of their own, gradients included.
* ``split_host``: the host's cores as several XLA devices
  (``config.cpu_devices``), for a mesh over them; ``prepare_host`` sets
  it, and for an evaluation lmx's default XLA:CPU flags
  (``default_flags``), before JAX starts.
"""

import os
import re
from typing import Optional

import jax
import jax.numpy as jnp


@jax.custom_vjp
def matmul_low(x_NxD: jax.Array, w_DxF: jax.Array) -> jax.Array:
  """``x @ w`` in ``x``'s low precision (bf16), accumulated in float32.

  ``w`` is the float32 parameter: it is rounded for the product, and its
  gradient comes back in float32.
  """
  return _dot_low(x_NxD, w_DxF.astype(x_NxD.dtype)).astype(x_NxD.dtype)


def _dot_low(a, b, contract=((1,), (0,))):
  barrier = jax.lax.optimization_barrier
  return jax.lax.dot_general(barrier(a), barrier(b), (contract, ((), ())),
                             preferred_element_type=jnp.float32)


def _matmul_low_fwd(x_NxD, w_DxF):
  return matmul_low(x_NxD, w_DxF), (x_NxD, w_DxF)


def _matmul_low_bwd(res, g_NxF):
  x_NxD, w_DxF = res
  low = x_NxD.dtype
  g_NxF = g_NxF.astype(low)
  dx = _dot_low(g_NxF, w_DxF.astype(low), ((1,), (1,))).astype(low)
  n = x_NxD.shape[0]
  rows = next(r for r in (256, 128, 64, 32, 16, 8, 4, 2, 1) if n % r == 0)
  dw = _dot_low(x_NxD.reshape(n // rows, rows, -1),
                g_NxF.reshape(n // rows, rows, -1), ((0, 1), (0, 1)))
  return dx, dw.astype(w_DxF.dtype)


matmul_low.defvjp(_matmul_low_fwd, _matmul_low_bwd)


@jax.custom_vjp
def add_bias_low(y_NxF: jax.Array, b_F: jax.Array) -> jax.Array:
  """``y + b`` in ``y``'s low precision, ``b`` a float32 parameter; the
  bias gradient is a bf16 product with ones and a float32 result."""
  return y_NxF + b_F.astype(y_NxF.dtype)


def _add_bias_low_fwd(y_NxF, b_F):
  return add_bias_low(y_NxF, b_F), b_F


def _add_bias_low_bwd(b_F, g_NxF):
  ones_1xN = jnp.ones((1, g_NxF.shape[0]), g_NxF.dtype)
  return g_NxF, _dot_low(ones_1xN, g_NxF)[0].astype(b_F.dtype)


add_bias_low.defvjp(_add_bias_low_fwd, _add_bias_low_bwd)


# --------------------------------------------------- attention products
#
# In bfloat16 the attention's batched products reach the bf16 units only as
# plain batched GEMMs with float32 results over row-major operands. The
# einsums over [B, T, H, K] arrays fuse their transposes into the dot, and
# two of the four gradient products contract over the query axis (the
# operand transposed): both take the generic path, 3-4x slower. Here every
# operand is laid out [B, H, ., .] in a buffer of its own first
# (``_materialized``) and every product is ``[M, K] x [K, N]`` per (b, h).
# In float32 the einsums are as fast or faster, so these are bf16 only.


def _materialized(x: jax.Array) -> jax.Array:
  """``x`` in a row-major buffer of its own. Behind one barrier XLA would
  still give a transposed value a transposed layout and hand the product
  that; reshaping it between two barriers makes the copy real."""
  barrier = jax.lax.optimization_barrier
  flat = barrier(x).reshape(x.shape[0], -1)
  return barrier(flat).reshape(x.shape)


def _heads_major(x_BxTxHxK: jax.Array) -> jax.Array:
  return _materialized(jnp.transpose(x_BxTxHxK, (0, 2, 1, 3)))


def _bdot(a: jax.Array, b: jax.Array, contract_a: int,
          contract_b: int) -> jax.Array:
  """The product of ``[B, H, ., .]`` arrays per (b, h), float32 result."""
  return jax.lax.dot_general(a, b, (((contract_a,), (contract_b,)),
                                    ((0, 1), (0, 1))),
                             preferred_element_type=jnp.float32)


@jax.custom_vjp
def attention_scores(q_BxTxHxK: jax.Array, k_BxSxHxK: jax.Array) -> jax.Array:
  """``einsum('bthk,bshk->bhts')`` of bf16 queries and keys, float32."""
  return _scores_fwd(q_BxTxHxK, k_BxSxHxK)[0]


def _scores_fwd(q_BxTxHxK, k_BxSxHxK):
  q_h, k_h = _heads_major(q_BxTxHxK), _heads_major(k_BxSxHxK)
  return _bdot(q_h, k_h, 3, 3), (q_h, k_h)


def _scores_bwd(res, g_BxHxTxS):
  q_h, k_h = res
  g = g_BxHxTxS.astype(q_h.dtype)
  dq = _bdot(g, k_h, 3, 2)                                 # [B, H, T, K]
  dk = _bdot(_materialized(jnp.swapaxes(g, 2, 3)), q_h, 3, 2)  # [B, H, S, K]
  return (jnp.transpose(dq, (0, 2, 1, 3)).astype(q_h.dtype),
          jnp.transpose(dk, (0, 2, 1, 3)).astype(k_h.dtype))


attention_scores.defvjp(_scores_fwd, _scores_bwd)


@jax.custom_vjp
def attention_values(p_BxHxTxS: jax.Array, v_BxSxHxK: jax.Array) -> jax.Array:
  """``einsum('bhts,bshk->bthk')`` of bf16 weights and values, float32."""
  return _values_fwd(p_BxHxTxS, v_BxSxHxK)[0]


def _values_fwd(p_BxHxTxS, v_BxSxHxK):
  v_h = _heads_major(v_BxSxHxK)
  out = _bdot(p_BxHxTxS, v_h, 3, 2)                        # [B, H, T, K]
  return jnp.transpose(out, (0, 2, 1, 3)), (p_BxHxTxS, v_h)


def _values_bwd(res, g_BxTxHxK):
  p, v_h = res
  g_h = _heads_major(g_BxTxHxK.astype(v_h.dtype))
  dp = _bdot(g_h, v_h, 3, 3)                               # [B, H, T, S]
  dv = _bdot(_materialized(jnp.swapaxes(p, 2, 3)), g_h, 3, 2)  # [B, H, S, K]
  return (dp.astype(p.dtype),
          jnp.transpose(dv, (0, 2, 1, 3)).astype(v_h.dtype))


attention_values.defvjp(_values_fwd, _values_bwd)


def dense(x_BxTxD: jax.Array, kernel_DxF: jax.Array,
          bias_F: Optional[jax.Array], dtype) -> jax.Array:
  """``x @ kernel (+ bias)`` in ``dtype``, as a 2-D product over the rows
  of ``x`` (bf16: ``matmul_low`` and ``add_bias_low``)."""
  x_NxD = x_BxTxD.reshape(-1, x_BxTxD.shape[-1])
  if dtype == jnp.bfloat16:
    y_NxF = matmul_low(x_NxD.astype(jnp.bfloat16), kernel_DxF)
    if bias_F is not None:
      y_NxF = add_bias_low(y_NxF, bias_F)
  else:
    y_NxF = jnp.dot(x_NxD.astype(dtype), kernel_DxF.astype(dtype))
    if bias_F is not None:
      y_NxF = y_NxF + bias_F
  return y_NxF.reshape(*x_BxTxD.shape[:-1], y_NxF.shape[-1])


# ------------------------------------------------------- host devices

DEVICE_COUNT_FLAG = '--xla_force_host_platform_device_count'


def split_host(devices: int) -> None:
  """The CPU as ``devices`` XLA devices (``config.cpu_devices``; 0: as it
  is), by ``--xla_force_host_platform_device_count`` in ``XLA_FLAGS``,
  which XLA reads once, when JAX's backend starts. Each device runs its
  share of a sharded computation on its own thread, where one device
  splits every small operation over all the cores: on a 2-core Xeon a
  65,536-token pass with the heads split two ways ran 1.24x faster
  (bench/long_peer.py --cpu_devices=2, docs/benchmarks.md).

  Raises ConfigError when ``devices`` exceeds the CPUs this process may
  use (a device per core is the point), when the backend has already
  started with another count, or when ``XLA_FLAGS`` names another count,
  saying what to change.
  """
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  from lmx.errors import ConfigError  # pylint: disable=g-import-not-at-top
  if devices <= 0:
    return
  cpus = (len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
          else os.cpu_count() or 1)
  if devices > cpus:
    raise ConfigError(
        f'config.cpu_devices={devices}, but this process may use {cpus} '
        f'CPU(s): use at most {cpus} (one device per core), or 0 for one '
        'device.')
  flags = os.environ.get('XLA_FLAGS', '')
  named = re.search(re.escape(DEVICE_COUNT_FLAG) + r'=(\d+)', flags)
  if named and int(named.group(1)) != devices:
    raise ConfigError(
        f'config.cpu_devices={devices} but XLA_FLAGS sets '
        f'{DEVICE_COUNT_FLAG}={named.group(1)}: drop one of the two.')
  if xla_bridge.backends_are_initialized():
    cpus = len(jax.devices('cpu'))
    if cpus != devices:
      raise ConfigError(
          f'config.cpu_devices={devices}, but JAX has already started with '
          f'{cpus} CPU device(s) in this process: set it before anything '
          f'runs on JAX (train.py and eval.py do), or run with '
          f'XLA_FLAGS={DEVICE_COUNT_FLAG}={devices}.')
    return
  if not named:
    os.environ['XLA_FLAGS'] = f'{flags} {DEVICE_COUNT_FLAG}={devices}'.strip()


# XLA:CPU flags lmx sets by default for evaluation, where the CPU has the
# feature they use, each measured against XLA's default in alternating runs
# (bench/xla_cpu_flags.py, docs/benchmarks.md). A flag XLA_FLAGS already
# names is left as it is. Training keeps XLA's defaults: under 512-bit
# vectors a 1,500-step run's losses move in the third decimal (rounding,
# compounded over the steps), which would leave every recorded training
# figure stale for a 1.01x step; an evaluation of the same checkpoint gives
# the same losses to the last bit under both widths.
VECTOR_WIDTH_FLAG = '--xla_cpu_prefer_vector_width'


def _cpu_features() -> set:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('flags'):
          return set(line.split(':', 1)[1].split())
  except OSError:
    pass
  return set()


def default_flags() -> list[str]:
  """The flags lmx adds for evaluation: 512-bit vectors on a CPU with
  AVX-512 (on the project's Xeon: a 16k-token pass 1.07x)."""
  return ([f'{VECTOR_WIDTH_FLAG}=512'] if 'avx512f' in _cpu_features()
          else [])


def prepare_host(devices: int = 0, evaluation: bool = False) -> None:
  """Before JAX's backend starts: for an ``evaluation``, ``default_flags``
  added to ``XLA_FLAGS`` (each unless it names that flag already); then
  ``split_host(devices)``. Once the backend has started, only the device
  count is checked: the flags are XLA's to read at its start."""
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  if evaluation and not xla_bridge.backends_are_initialized():
    flags = os.environ.get('XLA_FLAGS', '')
    extra = [f for f in default_flags() if f.split('=')[0] not in flags]
    if extra:
      os.environ['XLA_FLAGS'] = ' '.join([flags, *extra]).strip()
  split_host(devices)


def prepare_host_for(config, evaluation: bool = False) -> None:
  """``prepare_host(config.cpu_devices, evaluation)``: first thing in
  ``train`` and ``evaluate``, since validating a config asks JAX for its
  platform, which starts the backend. A value that is not a count is left
  to the config's validation to refuse."""
  devices = config.get('cpu_devices', 0)
  if not isinstance(devices, int) or isinstance(devices, bool):
    devices = 0
  prepare_host(devices, evaluation)
