"""The GPU device check: run it as is on a machine with one NVIDIA GPU.

    python bench/gpu_check.py                 # a few minutes on an H100
    python bench/gpu_check.py --skip-train    # the kernel's errors alone
    python bench/gpu_check.py --json=out.json

1. Accuracy: the fused GPU kernel (``lmx.kernels.flash_gpu``, compiled by
   Triton) against the dense backend on the device, for every encoding with
   a kernel form (and none), under the causal, Lambda-shaped and chunked
   masks, at a length that is no multiple of the block: the largest error
   of the output, of dq, dk, dv and of the bias parameters' gradient, each
   over the largest magnitude of the reference. The reference is the dense
   backend in float32 at full matmul precision on the same (rounded)
   inputs; float32 must agree within ``F32_TOL``, bfloat16 within
   ``BF16_TOL`` (bfloat16's rounding, as in tests/test_flash.py) or twice
   the dense backend's own error in bfloat16, whichever is larger.
2. Training: steps per second, tokens per second, MFU and peak device
   memory of a 125M-parameter train step (the GPT-2 small shape: d_model
   768, 12 layers of 12 heads, MLP 3072, a 50304-token vocabulary, tied
   embeddings; ALiBi, bfloat16, AdamW) through each attention backend:
   flash (the GPU kernel), cudnn, chunked, dense. Each runs in a process of
   its own, so its peak memory is its own
   (``jax.devices()[0].memory_stats()['peak_bytes_in_use']``) and a backend
   that does not fit reports so instead of stopping the check. MFU is
   model FLOPs (``6 N + 12 L T d`` per token, ``lmx.flops``)
   over the device's published dense bfloat16 peak (``--peak_tflops`` to
   give another).

Exits 2, with one line, where there is no GPU; 1 if an error is over its
bound; 0 otherwise. ``--cpu_dry_run`` runs the script's own code on a CPU
instead (the kernel in Pallas's interpreter, tiny shapes, a tiny model):
it checks the script, and its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from lmx import flops as lmx_flops  # pylint: disable=g-import-not-at-top
from lmx import trees  # pylint: disable=g-import-not-at-top

F32_TOL = 1e-4
BF16_TOL = 2.0 ** -6
# Published dense bfloat16 tensor-core peaks (TFLOP/s), by device kind.
PEAK_TFLOPS = {'H100 PCIe': 756.0, 'H100': 989.0, 'H200': 989.0,
               'GH200': 989.0, 'A100': 312.0, 'L4': 121.0}
MODEL_125M = dict(d_model=768, num_layers=12, num_heads=12, mlp_dim=3072,
                  vocab_size=50304)
BACKENDS = ('flash', 'cudnn', 'chunked', 'dense')
LABEL = {'flash': 'flash (GPU kernel)'}


def _gpu_or_exit():
  import jax  # pylint: disable=g-import-not-at-top
  try:
    backend = jax.default_backend()
  except RuntimeError as e:   # a broken CUDA install
    backend = f'none ({e})'.splitlines()[0]
  if backend != 'gpu':
    print(f'gpu_check: no GPU here (JAX runs on {backend}); run it on a '
          'machine with an NVIDIA GPU and jax[cuda12].')
    sys.exit(2)


# ------------------------------------------------------------------ accuracy


ACCURACY_CASES = [
    # encoding, settings, mask (n_global, n_local, chunk)
    ('alibi', {}, (0, 0, 0)),
    ('kerple', {}, (4, 256, 0)),
    ('kerple', {'kerple.kernel': 'power'}, (0, 0, 200)),
    ('t5', {}, (0, 0, 0)),
    ('fire', {}, (4, 256, 0)),
    # Sandwich with 4 frequencies: Triton's compile time grows fast with
    # its cosines (docs/backends.md), the default 64 would take minutes.
    ('sandwich', {'sandwich.dim': 8}, (0, 0, 0)),
    ('none', {}, (0, 128, 0)),
]


def _encoding(position, heads, head_dim, fields):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from configs import base  # pylint: disable=g-import-not-at-top
  from lmx import positions as P  # pylint: disable=g-import-not-at-top
  c = base.get_config('size=tiny')
  c.model.position = position
  c.model.num_heads, c.model.d_model = heads, heads * head_dim
  c.model.update_from_flattened_dict(fields)
  return P.REGISTRY[position](c.model, rngs=nnx.Rngs(0))


def accuracy_case(position, fields, mask_args, dtype_name, *, b=2, t=1000,
                  h=4, kd=64, interpret=False) -> dict:
  """Largest relative errors of the kernel against the dense reference."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from lmx.model import attention as A  # pylint: disable=g-import-not-at-top
  from lmx.kernels import flash_gpu  # pylint: disable=g-import-not-at-top
  dtype = jnp.dtype(dtype_name)
  mask = A.Mask(*mask_args)
  enc = _encoding(position, h, kd, fields)
  graphdef, params, rest = nnx.split(enc, nnx.Param, ...)
  r = np.random.default_rng(0)
  x = lambda: jnp.asarray(r.normal(size=(b, t, h, kd)), dtype)
  q, k, v = x(), x(), x()
  pos = jnp.asarray(np.sort(r.choice(3 * t, (b, t), replace=False), axis=1),
                    jnp.int32)
  cot = jnp.asarray(r.normal(size=(b, t, h, kd)), jnp.float32)

  def loss(params, q, k, v, kernel):
    e = nnx.merge(graphdef, params, rest)
    if kernel:
      out = flash_gpu.flash_attention(
          q, k, v, pos, pos, e.kernel_bias(), n_global=mask.n_global,
          n_local=mask.n_local, chunk=mask.chunk, interpret=interpret)
    else:
      out = A.DENSE(A.Spec(mask=mask),
                    A.Call(A.Branch(q, k, pos, pos), v, bias_fn=e.bias))
    return jnp.sum(out.astype(jnp.float32) * cot), out

  def run(kernel, *args):
    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3),
                                    has_aux=True), static_argnums=4)
    (_, out), grads = fn(*args, kernel)
    return jax.device_get((out, grads))

  t0 = time.perf_counter()
  out, grads = run(True, params, q, k, v)
  seconds = time.perf_counter() - t0
  f32 = lambda a: a.astype(jnp.float32)
  with jax.default_matmul_precision('highest'):
    out_r, grads_r = run(False, params, f32(q), f32(k), f32(v))

  def rel(a, ref):
    a, ref = np.asarray(a, np.float32), np.asarray(ref, np.float32)
    scale = np.abs(ref).max()
    return float(np.abs(a - ref).max() / scale) if scale > 0 else float(
        np.abs(a).max())

  def errors_of(out, grads):
    errors = {'out': rel(out, out_r)}
    for name, g, gr in zip(('dq', 'dk', 'dv'), grads[1:], grads_r[1:]):
      errors[name] = rel(g, gr)
    leaves = jax.tree_util.tree_leaves_with_path(grads[0])
    for (path, g), gr in zip(leaves, jax.tree.leaves(grads_r[0])):
      name = trees.path_str(path).removesuffix('/value')
      if 'b2' in trees.path_keys(path):   # FIRE's constant per head: softmax ignores it
        continue
      errors[f'd{name}'] = rel(g, gr)
    return errors

  errors = errors_of(out, grads)
  dense = None
  if dtype == jnp.float32:
    bounds = {k: F32_TOL for k in errors}
  else:
    # bfloat16: within its rounding, or within twice the dense backend's
    # own error in bfloat16 where that is larger (a gradient summed over
    # every pair of the sequence).
    dense = errors_of(*run(False, params, q, k, v))
    bounds = {k: max(BF16_TOL, 2 * dense[k]) for k in errors}
  return {'encoding': position + ''.join(f' {k}={v}' for k, v in
                                         fields.items()),
          'mask': 'causal' if not any(mask_args) else
                  f'n_global={mask.n_global} n_local={mask.n_local} '
                  f'chunk={mask.chunk}',
          'dtype': dtype_name, 'errors': errors, 'bounds': bounds,
          'dense_errors': dense,
          'ok': all(errors[k] <= bounds[k] for k in errors),
          'first_call_seconds': round(seconds, 2)}


# ------------------------------------------------------------------ training


def train_one(backend: str, batch: int, seq_len: int, steps: int,
              model: dict) -> dict:
  """One backend's 125M train step (run in a process of its own)."""
  import jax  # pylint: disable=g-import-not-at-top
  from bench import train_throughput as tt  # pylint: disable=g-import-not-at-top
  c = tt.lmx_config('alibi', 'bfloat16')
  for key, value in model.items():
    c.model[key] = value
  c.model.tie_embeddings = True
  c.model.attention = backend
  c.train.seq_len, c.train.batch_size = seq_len, batch
  runner = tt.LmxRunner(c, warmup=2)
  seconds = runner.time(steps)
  stats = jax.devices()[0].memory_stats() or {}
  return {'backend': backend, 'params': runner.params,
          'steps_per_second': 1.0 / seconds,
          'tokens_per_second': runner.tokens / seconds,
          'peak_bytes': stats.get('peak_bytes_in_use'),
          'loss': runner.loss}


def train_all(args) -> list[dict]:
  import jax  # pylint: disable=g-import-not-at-top
  kind = jax.devices()[0].device_kind
  peak = args.peak_tflops or next(
      (v for k, v in PEAK_TFLOPS.items() if k in kind), None)
  flops = lmx_flops.train_flops_per_token(_model(args), args.seq)
  rows = []
  for backend in BACKENDS:
    cmd = [sys.executable, os.path.abspath(__file__), '--train_one', backend,
           f'--batch={args.batch}', f'--seq={args.seq}',
           f'--steps={args.steps}'] + (['--cpu_dry_run'] if args.cpu_dry_run
                                       else [])
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                       timeout=args.timeout)
    lines = r.stdout.strip().splitlines()
    if r.returncode == 0 and lines and lines[-1].startswith('{'):
      row = json.loads(lines[-1])
      row['mfu'] = (row['tokens_per_second'] * flops / (peak * 1e12)
                    if peak else None)
    else:
      tail = (r.stderr.strip().splitlines() or ['no output'])[-1]
      row = {'backend': backend, 'error': tail[:300]}
    rows.append(row)
    print(_train_line(row), flush=True)
  return rows


# --cpu_dry_run: the kernel in the interpreter at tiny shapes, a tiny model.
DRY_SHAPES = dict(b=1, t=40, h=2, kd=16, interpret=True)
MODEL_DRY = dict(d_model=32, num_layers=1, num_heads=2, mlp_dim=64,
                 vocab_size=300)


def _model(args) -> dict:
  return MODEL_DRY if args.cpu_dry_run else MODEL_125M


def _train_line(row: dict) -> str:
  name = LABEL.get(row['backend'], row['backend'])
  if 'error' in row:
    return f'  {name:20s} did not run: {row["error"]}'
  mfu = f'{100 * row["mfu"]:.1f}%' if row.get('mfu') is not None else 'n/a'
  peak = (f'{row["peak_bytes"] / 2 ** 30:.2f} GiB'
          if row.get('peak_bytes') else 'n/a')
  return (f'  {name:20s} {row["steps_per_second"]:7.2f} steps/s '
          f'{row["tokens_per_second"]:10,.0f} tokens/s  MFU {mfu:>6s}  '
          f'peak memory {peak}  loss {row["loss"]:.3f}')


# ---------------------------------------------------------------------- main


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--skip-train', action='store_true')
  p.add_argument('--skip-accuracy', action='store_true')
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--seq', type=int, default=1024)
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--peak_tflops', type=float, default=None)
  p.add_argument('--timeout', type=int, default=600,
                 help='seconds per backend')
  p.add_argument('--json', default='')
  p.add_argument('--train_one', default='', help=argparse.SUPPRESS)
  p.add_argument('--cpu_dry_run', action='store_true', help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.cpu_dry_run:
    args.batch, args.seq, args.steps = 2, 32, 2
  else:
    _gpu_or_exit()
  if args.train_one:
    print(json.dumps(train_one(args.train_one, args.batch, args.seq,
                               args.steps, _model(args))))
    return 0
  import jax  # pylint: disable=g-import-not-at-top
  result = {'device': jax.devices()[0].device_kind,
            'jax': jax.__version__}
  print(f'gpu_check on {result["device"]} (jax {result["jax"]})', flush=True)
  ok = True
  if not args.skip_accuracy:
    print('kernel vs dense (largest error / largest reference magnitude):',
          flush=True)
    result['accuracy'] = []
    for position, fields, mask_args in ACCURACY_CASES:
      for dtype_name in ('float32', 'bfloat16'):
        try:
          row = accuracy_case(position, fields, mask_args, dtype_name,
                              **DRY_SHAPES if args.cpu_dry_run else {})
        except Exception as e:  # noqa: BLE001 - report, go on
          row = {'encoding': position, 'dtype': dtype_name, 'ok': False,
                 'error': f'{type(e).__name__}: {e}'.splitlines()[0][:300]}
        result['accuracy'].append(row)
        ok &= row['ok']
        if 'error' in row:
          print(f'  {position:10s} {dtype_name:8s} FAILED: {row["error"]}')
        else:
          e, bd = row['errors'], row['bounds']
          worst = max(e, key=lambda k: e[k] / bd[k])
          print(f'  {row["encoding"]:30s} {row["mask"]:34s} {dtype_name:8s} '
                f'{"ok  " if row["ok"] else "OVER"} worst {worst} '
                f'{e[worst]:.2e} (bound {bd[worst]:.1e}'
                + (f', dense in bfloat16 {row["dense_errors"][worst]:.2e})'
                   if row['dense_errors'] else ')'), flush=True)
  if not args.skip_train:
    print(f'{_model(args)["num_layers"]}-layer train step, batch {args.batch} x {args.seq} tokens, '
          'ALiBi, bfloat16:', flush=True)
    result['train'] = train_all(args)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=1)
  print('gpu_check: ' + ('all errors within bounds' if ok else
                         'ERRORS OVER BOUNDS'))
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main())
