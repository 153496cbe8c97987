"""Compile attention's forward and backward for a TPU without one, and print
XLA's memory and cost analyses: the fused Pallas kernel (``flash``) beside
the pure-JAX ``chunked`` backend.

    /work/venv-tpu/bin/python bench/flash_tpu.py --position=alibi
    /work/venv-tpu/bin/python bench/flash_tpu.py --position=t5 \
        --dtype=float32 --head_dim=128 --block=512
    /work/venv-tpu/bin/python bench/flash_tpu.py --matrix

``--matrix`` compiles the kernel alone for every encoding with a kernel
bias (and none), float32 and bfloat16, head dimension 64 and 128, blocks
of 128 and 512, at B = 1, T = 1024, H = 2, and prints one line each: its
analyses, or the error.

Needs a JAX with libtpu (it asks ``jax.experimental.topologies`` for a TPU
topology, ``--topology``, and compiles for its first chip ahead of time; no
TPU is used). The compiled function is the gradient of ``sum(out * g)``
with respect to q, k, v and the encoding's parameters (a training step's
attention: forward and backward), on ``[B, T, H, K]`` inputs. XLA cannot
see inside a Mosaic kernel, so the kernel's FLOPs and bytes in the cost
analysis are the estimates the kernel passes to ``pallas_call``
(``lmx.kernels.flash``: visited tiles times their matmuls); the memory
analysis is XLA's own.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
from flax import nnx

from configs import base
from lmx.model import attention as A
from lmx import positions as P
from lmx.kernels import flash


def tpu_device(topology: str):
  """The first chip of a TPU topology described without hardware."""
  from jax.experimental import topologies
  topo = topologies.get_topology_desc(
      platform='tpu', topology_name=topology, chip_config_name='default',
      chips_per_host_bounds=(2, 2, 1), num_slices=1)
  return topo.devices[0]


def encoding(position: str, heads: int, head_dim: int, **fields):
  c = base.get_config('size=tiny')
  c.model.position = position
  c.model.num_heads = heads
  c.model.d_model = heads * head_dim
  c.model.update_from_flattened_dict(fields)
  return P.REGISTRY[position](c.model, rngs=nnx.Rngs(0))


def compile_step(backend: str, enc, device, *, batch, seq, heads, head_dim,
                 dtype, block, mask):
  """The compiled fwd+bwd of one backend, for ``device``."""
  graphdef, params, rest = nnx.split(enc, nnx.Param, ...)

  def loss(params, q, k, v, pos, g):
    e = nnx.merge(graphdef, params, rest)
    if backend == 'flash':
      out = flash.flash_attention(q, k, v, pos, pos, e.kernel_bias(),
                                  n_global=mask.n_global,
                                  n_local=mask.n_local, block_q=block,
                                  block_k=block, interpret=False)
    else:
      out = A.CHUNKED(A.Spec(mask=mask, block=block),
                      A.Call(A.Branch(q, k, pos, pos), v, bias_fn=e.bias))
    return jnp.sum(out.astype(jnp.float32) * g)

  step = jax.grad(loss, argnums=(0, 1, 2, 3))
  sharding = jax.sharding.SingleDeviceSharding(device)
  x = jax.ShapeDtypeStruct((batch, seq, heads, head_dim), dtype,
                           sharding=sharding)
  args = (jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                      sharding=sharding),
                       params),
          x, x, x,
          jax.ShapeDtypeStruct((batch, seq), jnp.int32, sharding=sharding),
          jax.ShapeDtypeStruct(x.shape, jnp.float32, sharding=sharding))
  return jax.jit(step).lower(*args).compile()


def analyses(compiled) -> dict:
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  mb = lambda n: round(n / 2 ** 20, 2)
  return {
      'temp_MB': mb(mem.temp_size_in_bytes),
      'argument_MB': mb(mem.argument_size_in_bytes),
      'output_MB': mb(mem.output_size_in_bytes),
      'GFLOP': round(cost.get('flops', 0.0) / 1e9, 2),
      'transcendentals_M': round(cost.get('transcendentals', 0.0) / 1e6, 2),
      'bytes_accessed_MB': mb(cost.get('bytes accessed', 0.0)),
  }


MATRIX_POSITIONS = ('alibi', 'kerple', 'kerple_power', 't5', 'fire', 'none')


def matrix(topology: str) -> int:
  device = tpu_device(topology)
  failures = 0
  for position in MATRIX_POSITIONS:
    name, fields = ((('kerple', {'kerple.kernel': 'power'}))
                    if position == 'kerple_power' else (position, {}))
    for dtype in ('float32', 'bfloat16'):
      for head_dim in (64, 128):
        enc = encoding(name, 2, head_dim, **fields)
        for block in (128, 512):
          row = {'position': position, 'dtype': dtype, 'head_dim': head_dim,
                 'block': block}
          try:
            compiled = compile_step(
                'flash', enc, device, batch=1, seq=1024, heads=2,
                head_dim=head_dim, dtype=jnp.dtype(dtype), block=block,
                mask=A.Mask())
            row.update(analyses(compiled))
          except Exception as e:  # noqa: BLE001 - reported, then the next
            failures += 1
            row['error'] = str(e).splitlines()[0][:300]
          print(json.dumps(row), flush=True)
  print(f'{failures} of {len(MATRIX_POSITIONS) * 8} failed to compile')
  return 1 if failures else 0


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--position', default='alibi',
                  help='alibi, kerple, kerple_power, t5, fire, rope, none')
  ap.add_argument('--batch', type=int, default=8)
  ap.add_argument('--seq', type=int, default=2048)
  ap.add_argument('--heads', type=int, default=12)
  ap.add_argument('--head_dim', type=int, default=64)
  ap.add_argument('--dtype', default='bfloat16')
  ap.add_argument('--block', type=int, default=512)
  ap.add_argument('--n_global', type=int, default=0)
  ap.add_argument('--n_local', type=int, default=0)
  ap.add_argument('--backends', default='flash,chunked')
  ap.add_argument('--topology', default='v5e:2x2')
  ap.add_argument('--matrix', action='store_true',
                  help='compile flash for every encoding, dtype, head '
                  'dimension and block; one line each')
  a = ap.parse_args(argv)
  if a.matrix:
    return matrix(a.topology)
  fields = {}
  position = a.position
  if position == 'kerple_power':
    position, fields = 'kerple', {'kerple.kernel': 'power'}
  enc = encoding(position, a.heads, a.head_dim, **fields)
  device = tpu_device(a.topology)
  mask = A.Mask(a.n_global, a.n_local)
  shape = dict(batch=a.batch, seq=a.seq, heads=a.heads, head_dim=a.head_dim,
               dtype=jnp.dtype(a.dtype), block=a.block)
  for backend in a.backends.split(','):
    compiled = compile_step(backend, enc, device, mask=mask, **shape)
    row = {'backend': backend, 'position': a.position, 'device':
           device.device_kind, **{k: str(v) for k, v in shape.items()},
           'mask': f'{mask.n_global},{mask.n_local}', **analyses(compiled)}
    print(json.dumps(row), flush=True)


if __name__ == '__main__':
  sys.exit(main())
