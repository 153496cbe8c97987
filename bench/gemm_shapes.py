r"""The matrix products of lmx's CPU workloads, one by one, in JAX (XLA:CPU)
and in torch at the same shapes.

    python bench/gemm_shapes.py --repeats=31 --out=runs/gemm_shapes.json
    python bench/gemm_shapes.py --dtype=bfloat16 --repeats=31

(``python -m bench.gemm_shapes`` works too; the torch side needs torch in
the same interpreter, ``pip install -e '.[bench]'``; without it the JAX side
is timed alone and the script says so.)

What the table is for: lmx's train step and long evaluation are mostly
matrix products, and against x-transformers (``bench/train_throughput.py``,
``bench/long_peer.py``) a gap has two parts: what lmx's code makes XLA do,
and how fast XLA:CPU's GEMM runs the products themselves. This script times
the second part alone: each product of those workloads as its own jitted
function of its operands, and the same product in torch (oneDNN/MKL). A row
where torch is faster (ratio above 1 means JAX is faster) is a product whose
rate the GEMM library sets, not lmx's code; summed over the products of a
step it bounds how much of a gap no change to lmx's model code can close.

The products (``make_products``), float32 by default:

* train dense: the dense layers of ``bench/train_throughput.py``'s model
  (width 256, MLP 1024, batch 16 x 256 tokens = 4,096 rows): the MLP's up
  projection ``x[4096,256] @ W[256,1024]``, its input gradient
  ``g[4096,1024] @ W^T`` and weight gradient ``x^T[256,4096] @ g[4096,1024]``;
  the same three for the down projection ``[4096,1024] @ [1024,256]`` and
  for a 256 x 256 projection (the size of each of q, k, v and the attention
  output).
* train attention: the attention products of that model (16 sequences x 4
  heads = 64 batch entries, T = 256, head dim 64), in the natural
  ``[B*H, T, K]`` layout: the scores ``q k^T``, the weighted values ``p v``,
  and the backward ones ``dV = p^T dO``, ``dP = dO v^T``, ``dQ = dS k``,
  ``dK = dS^T q``. (dP has the shapes of the scores, dQ those of ``p v``.)
* eval 64k tile: the tile products of ``bench/long_peer.py``'s chunked
  attention at 64k tokens (4 heads of 32, tiles of 512 queries x 512 keys,
  heads-major as ``lmx.model.attention`` lays them out): the scores
  ``[4,512,32] x [4,32,512]`` and weighted values ``[4,512,512] x [4,512,32]``.

How they are timed:

* JAX: each product is ``jnp.einsum`` of its operands, stored as the model
  stores them (a transpose is in the einsum, never materialised), jitted on
  its own; one call compiles it and one more warms it, then ``--repeats``
  single calls are timed to ``block_until_ready``. Nothing loops inside the
  jitted function over the same operands (XLA would hoist the product out of
  the loop and time nothing). Before the first product is timed,
  ``--warmup_s`` seconds of untimed calls of it warm each side: XLA's first
  calls in a fresh process often run at half speed.
* torch: ``torch.matmul`` (2-D) or ``torch.bmm`` (3-D) of the same values,
  transposes as views (``.mT``), one warm call, then ``--repeats`` calls.
* The tile products take well under a millisecond, where a call's dispatch
  (tens of microseconds) would count: a call there computes ``--stack``
  distinct operand sets, stacked on a leading axis, in one jitted
  ``jax.lax.map`` (which slices each set out as the chunked attention's loop
  does) and in a python loop over the stack in torch, and the time is
  divided by ``--stack``.
* ``--dtype=bfloat16``: bfloat16 operands (the same values on both sides);
  JAX accumulates and returns float32 (``preferred_element_type``), as lmx's
  attention does, torch returns bfloat16 (its kernels accumulate in float32).
* Each side's repeats of one product run back to back (torch's OpenMP
  threads spin a while after each call, which would slow an interleaved
  XLA call), JAX first. Times are medians; GFLOP/s counts ``2 M N K`` per
  batch entry. The two results are compared once (their relative Frobenius
  difference, in the JSON; a warning if it is large).

Threads: nothing is pinned. XLA:CPU sizes its thread pool from the CPUs this
process may run on (its affinity mask: restrict it with ``taskset``), and
torch gets ``torch.set_num_threads(--threads)``, by default as many as those
CPUs, so both use the same cores. Run it on an otherwise idle machine:
with another process busy on the same cores, torch's OpenMP threads (which
spin at their barriers by default) lose whole scheduler ticks, and its
times come out as round multiples of the tick (4 or 8 ms on a 2-core VM)
while XLA's are hit less. The header prints the load average at the start,
and a row is marked ``(!)`` where other processes kept more than
``LOAD_LIMIT`` of the machine's CPUs busy while it was timed (``/proc/stat``
less this process's own CPU time; ``other_load`` in the JSON). Even with
no other load seen, some of XLA's products on the 2-core VM ran at half
speed in one run and full speed in the next (call by call alternating
between the two): compare two runs, or the per-call seconds in the JSON,
before reading much into one row.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import platform
import resource
import statistics
import sys
import time
import types
from typing import Callable, Sequence

from absl import app, flags, logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from lmx import cli  # pylint: disable=g-import-not-at-top

DTYPES = ('float32', 'bfloat16')
# The relative difference between the two sides' results above which the
# run warns (float32: summation order only; bfloat16: torch's output is
# rounded to bfloat16, JAX's is float32).
TOLERANCE = {'float32': 1e-4, 'bfloat16': 2e-2}
# The share of the machine's CPUs other processes may keep busy while a
# product is timed before its row is marked unreliable.
LOAD_LIMIT = 0.15


@dataclasses.dataclass(frozen=True)
class Product:
  """One matrix product: ``jnp.einsum(spec, a, b)`` of operands of
  ``shapes``, which is ``batch`` products of ``[m, k] @ [k, n]``.
  ``transpose`` says which operand the product takes transposed (its last
  two axes), for torch: ``'nn'``, ``'tn'`` (``a^T b``) or ``'nt'``
  (``a b^T``). ``stack`` > 1: a call computes that many distinct operand
  sets (stacked on a new leading axis) and its time is divided by it."""
  group: str
  name: str
  spec: str
  shapes: tuple[tuple[int, ...], tuple[int, ...]]
  transpose: str
  batch: int
  m: int
  n: int
  k: int
  stack: int = 1

  @property
  def flops(self) -> int:
    return 2 * self.batch * self.m * self.n * self.k

  @property
  def shape(self) -> str:
    """The product as ``[m,k]@[k,n]`` (``[b,m,k]@[b,k,n]`` batched)."""
    b = f'{self.batch},' if self.batch > 1 else ''
    return f'[{b}{self.m},{self.k}]@[{b}{self.k},{self.n}]'


def make_products(rows: int = 4096, width: int = 256, mlp: int = 1024,
                  attn_batch: int = 64, seq: int = 256, head_dim: int = 64,
                  tile_heads: int = 4, tile: int = 512, tile_head_dim: int = 32,
                  stack: int = 16) -> list[Product]:
  """The products, at the benchmarks' sizes by default (smaller ones for a
  test)."""
  out = []
  for layer, (d_in, d_out) in (('MLP up', (width, mlp)),
                               ('MLP down', (mlp, width)),
                               ('qkv-sized', (width, width))):
    g = 'train dense'
    out += [
        Product(g, f'{layer}: y = x W', 'md,df->mf',
                ((rows, d_in), (d_in, d_out)), 'nn', 1, rows, d_out, d_in),
        Product(g, f'{layer}: dx = g W^T', 'mf,df->md',
                ((rows, d_out), (d_in, d_out)), 'nt', 1, rows, d_in, d_out),
        Product(g, f'{layer}: dW = x^T g', 'md,mf->df',
                ((rows, d_in), (rows, d_out)), 'tn', 1, d_in, d_out, rows),
    ]
  b, t, d = attn_batch, seq, head_dim
  g = 'train attention'
  out += [
      Product(g, 'scores s = q k^T', 'btd,bsd->bts', ((b, t, d), (b, t, d)),
              'nt', b, t, t, d),
      Product(g, 'values o = p v', 'bts,bsd->btd', ((b, t, t), (b, t, d)),
              'nn', b, t, d, t),
      Product(g, 'dV = p^T dO', 'bts,btd->bsd', ((b, t, t), (b, t, d)),
              'tn', b, t, d, t),
      Product(g, 'dP = dO v^T', 'btd,bsd->bts', ((b, t, d), (b, t, d)),
              'nt', b, t, t, d),
      Product(g, 'dQ = dS k', 'bts,bsd->btd', ((b, t, t), (b, t, d)),
              'nn', b, t, d, t),
      Product(g, 'dK = dS^T q', 'bts,btd->bsd', ((b, t, t), (b, t, d)),
              'tn', b, t, d, t),
  ]
  h, c, d = tile_heads, tile, tile_head_dim
  g = 'eval 64k tile'
  out += [
      Product(g, 'tile scores s = q k^T', 'htd,hsd->hts',
              ((h, c, d), (h, c, d)), 'nt', h, c, c, d, stack),
      Product(g, 'tile values o = p v', 'hts,hsd->htd',
              ((h, c, c), (h, c, d)), 'nn', h, c, d, c, stack),
  ]
  return out


PRODUCTS = make_products()


def operands(p: Product, dtype: str = 'float32', seed: int = 0) -> tuple:
  """Random normal operands of ``p`` as numpy float32 arrays (with the
  leading ``stack`` axis where ``p.stack`` > 1), rounded to bfloat16 values
  for ``dtype='bfloat16'`` so that both sides get the same numbers."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  lead = (p.stack,) if p.stack > 1 else ()
  out = []
  for shape in p.shapes:
    x = rng.standard_normal(lead + shape, dtype=np.float32)
    if dtype == 'bfloat16':
      x = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    out.append(x)
  return tuple(out)


def cpu_seconds() -> tuple[float, float, float] | None:
  """``(wall, busy, own)``: now, the busy CPU seconds of the whole machine
  (``/proc/stat``) and this process's CPU seconds; None where there is no
  ``/proc/stat``."""
  try:
    with open('/proc/stat') as f:
      ticks = [int(x) for x in f.readline().split()[1:9]]
  except (OSError, ValueError):
    return None
  busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf('SC_CLK_TCK')
  r = resource.getrusage(resource.RUSAGE_SELF)
  return time.perf_counter(), busy, r.ru_utime + r.ru_stime


def other_load(before, after) -> float | None:
  """The share of the machine's CPUs that other processes kept busy
  between two ``cpu_seconds()`` readings (0: none; 1: all of them)."""
  if before is None or after is None or after[0] <= before[0]:
    return None
  other = (after[1] - before[1]) - (after[2] - before[2])
  return max(0.0, other / ((after[0] - before[0]) * (os.cpu_count() or 1)))


# ----------------------------------------------------------------------------
# The JAX side.
# ----------------------------------------------------------------------------

def jax_fn(p: Product) -> Callable:
  """``p`` jitted as a function of its two operands (float32 results); a
  ``jax.lax.map`` over the stacked operand sets where ``p.stack`` > 1."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def one(a, b):
    return jnp.einsum(p.spec, a, b, preferred_element_type=jnp.float32)

  if p.stack > 1:
    return jax.jit(lambda a, b: jax.lax.map(lambda ab: one(*ab), (a, b)))
  return jax.jit(one)


def jax_operands(arrays: Sequence, dtype: str = 'float32') -> tuple:
  """The numpy ``arrays`` on the JAX device, in ``dtype``."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return tuple(jax.block_until_ready(jnp.asarray(a, dtype=dtype))
               for a in arrays)


def time_jax(fn: Callable, args: Sequence,
             repeats: int) -> tuple[list, object, float | None]:
  """Seconds of ``repeats`` single calls of the jitted ``fn`` to
  ``block_until_ready``, after one call that compiles and one that warms;
  the first call's result; and ``other_load`` over the timed calls."""
  import jax  # pylint: disable=g-import-not-at-top
  first = jax.block_until_ready(fn(*args))
  jax.block_until_ready(fn(*args))
  seconds = []
  before = cpu_seconds()
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    seconds.append(time.perf_counter() - t0)
  return seconds, first, other_load(before, cpu_seconds())


# ----------------------------------------------------------------------------
# The torch side.
# ----------------------------------------------------------------------------

def torch_missing() -> str | None:
  """Why the torch side cannot run in this interpreter, or None."""
  if importlib.util.find_spec('torch') is None:
    return (f'torch is not installed in {sys.executable}: timing JAX only '
            "(pip install -e '.[bench]' for the torch side)")
  return None


def torch_fn(p: Product) -> Callable:
  """``p`` in torch: ``torch.matmul`` or ``torch.bmm``, transposes as
  views; a python loop over the stacked operand sets where ``p.stack`` > 1
  (the results as a list)."""
  import torch  # pylint: disable=g-import-not-at-top
  mm = torch.bmm if len(p.shapes[0]) == 3 else torch.matmul
  ta, tb = p.transpose[0] == 't', p.transpose[1] == 't'

  def one(a, b):
    return mm(a.mT if ta else a, b.mT if tb else b)

  if p.stack > 1:
    return lambda a, b: [one(a[i], b[i]) for i in range(p.stack)]
  return one


def torch_operands(arrays: Sequence, dtype: str = 'float32') -> tuple:
  import torch  # pylint: disable=g-import-not-at-top
  return tuple(torch.from_numpy(a).to(getattr(torch, dtype)).contiguous()
               for a in arrays)


def time_torch(fn: Callable, args: Sequence,
               repeats: int) -> tuple[list, object, float | None]:
  """Seconds of ``repeats`` calls of ``fn`` after one warm call; that
  call's result; and ``other_load`` over the timed calls."""
  first = fn(*args)
  seconds = []
  before = cpu_seconds()
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn(*args)
    seconds.append(time.perf_counter() - t0)
  return seconds, first, other_load(before, cpu_seconds())


def _torch_numpy(result):
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  if isinstance(result, list):
    result = torch.stack(result)
  return result.float().numpy().astype(np.float64)


# ----------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------

def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine(threads: int, torch_on: bool) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  out = {'cpu': cpu_model(), 'cores': os.cpu_count(),
         'cpus_allowed': len(os.sched_getaffinity(0)),
         'platform': platform.platform(),
         'load_average': os.getloadavg()[0],
         'jax_device': str(jax.devices()[0]), 'jax': jax.__version__}
  if torch_on:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(threads)
    out.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
  return out


def _side(seconds: list, p: Product, load: float | None) -> dict:
  median = statistics.median(seconds) / p.stack
  return {'seconds': seconds, 'median_ms': 1e3 * median,
          'gflops': p.flops / median / 1e9, 'other_load': load}


def loaded(row: dict) -> bool:
  """Whether other processes kept more than ``LOAD_LIMIT`` of the CPUs
  busy while either side of ``row`` was timed."""
  return any((row[side].get('other_load') or 0.0) > LOAD_LIMIT
             for side in ('jax', 'torch') if side in row)


def warm_up(p: Product, dtype: str, seconds: float,
            torch_on: bool) -> None:
  """Untimed calls of ``p`` for ``seconds`` on each side: in a fresh
  process XLA's first calls of a product often run at half speed, as if on
  one thread, for a fraction of a second."""
  import jax  # pylint: disable=g-import-not-at-top
  arrays = operands(p, dtype)
  sides = [(jax_fn(p), jax_operands(arrays, dtype), jax.block_until_ready)]
  if torch_on:
    sides.append((torch_fn(p), torch_operands(arrays, dtype), lambda x: x))
  for fn, args, wait in sides:
    end = time.perf_counter() + seconds
    while True:
      wait(fn(*args))
      if time.perf_counter() > end:
        break


def run(products: Sequence[Product], repeats: int, *,
        dtype: str = 'float32', torch_on: bool = False, threads: int = 0,
        warmup_s: float = 1.0, log=print) -> dict:
  """Every product timed (``torch_on``: torch too, in this process),
  after ``warmup_s`` seconds of untimed calls of the first on each side."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  threads = threads or len(os.sched_getaffinity(0))
  result = {'machine': machine(threads, torch_on), 'dtype': dtype,
            'repeats': repeats, 'torch': torch_on, 'warmup_s': warmup_s,
            'rows': []}
  if warmup_s > 0 and products:
    warm_up(products[0], dtype, warmup_s, torch_on)
  for p in products:
    arrays = operands(p, dtype)
    row = dict(dataclasses.asdict(p), shape=p.shape, flops=p.flops,
               shapes=[list(s) for s in p.shapes])  # as JSON has them
    seconds, jax_out, load = time_jax(
        jax_fn(p), jax_operands(arrays, dtype), repeats)
    row['jax'] = _side(seconds, p, load)
    msg = f"{p.group}: {p.name} {p.shape}: JAX {row['jax']['median_ms']:.3f} ms"
    if torch_on:
      seconds, torch_out, load = time_torch(
          torch_fn(p), torch_operands(arrays, dtype), repeats)
      row['torch'] = _side(seconds, p, load)
      row['ratio'] = row['torch']['median_ms'] / row['jax']['median_ms']
      a, b = np.asarray(jax_out, np.float64), _torch_numpy(torch_out)
      row['rel_diff'] = float(np.linalg.norm(a - b) / np.linalg.norm(a))
      msg += f", torch {row['torch']['median_ms']:.3f} ms"
      if row['rel_diff'] > TOLERANCE[dtype]:
        msg += (f"; WARNING: the results differ by {row['rel_diff']:.2g} "
                '(relative)')
    if loaded(row):
      msg += '; other processes were busy on the CPUs meanwhile'
    log(msg)
    result['rows'].append(row)
  return result


def _totals(rows: list) -> dict:
  """Per group (and all): the summed medians of its rows."""
  out = {}
  for row in rows:
    for key in (row['group'], 'all'):
      t = out.setdefault(key, {'flops': 0, 'jax_ms': 0.0, 'torch_ms': 0.0})
      t['flops'] += row['flops']
      t['jax_ms'] += row['jax']['median_ms']
      if 'torch' in row:
        t['torch_ms'] += row['torch']['median_ms']
  return out


def table(r: dict) -> str:
  m = r['machine']
  torch_on = r['torch']
  versions = f"jax {m['jax']}"
  if torch_on:
    versions += f", torch {m['torch']} ({m['torch_threads']} threads)"
  lines = [
      f"Machine: {m['cpu']}, {m['cores']} cores ({m['cpus_allowed']} this "
      f"process may use, all of them XLA's); {versions}; load average "
      f"{m['load_average']:.2f} at the start",
      f"{r['dtype']} operands"
      + (' (JAX: float32 accumulation and result)'
         if r['dtype'] == 'bfloat16' else '')
      + f"; median of {r['repeats']} calls per side"
      + ('' if torch_on else '; torch not available: JAX only'),
      '',
  ]
  if torch_on:
    lines += ['| group | product | shape | GFLOP | JAX ms | JAX GFLOP/s | '
              'torch ms | torch GFLOP/s | torch / JAX |',
              '|---|---|---|---:|---:|---:|---:|---:|---:|']
  else:
    lines += ['| group | product | shape | GFLOP | JAX ms | JAX GFLOP/s |',
              '|---|---|---|---:|---:|---:|']
  for row in r['rows']:
    name = row['name'] + (f" (per item of {row['stack']})"
                          if row['stack'] > 1 else '')
    j = row['jax']
    mark = ' (!)' if loaded(row) else ''
    line = (f"| {row['group']} | {name} | {row['shape']} | "
            f"{row['flops'] / 1e9:.3f} | {j['median_ms']:.3f} | "
            f"{j['gflops']:.1f}{'' if torch_on else mark} |")
    if torch_on:
      t = row['torch']
      line += (f" {t['median_ms']:.3f} | {t['gflops']:.1f} | "
               f"{row['ratio']:.2f}{mark} |")
    lines.append(line)
  for key, t in _totals(r['rows']).items():
    gf = t['flops'] / 1e9
    line = (f"| {key} | (sum of the rows) | | {gf:.3f} | "
            f"{t['jax_ms']:.3f} | {gf / t['jax_ms'] * 1e3:.1f} |")
    if torch_on:
      line += (f" {t['torch_ms']:.3f} | {gf / t['torch_ms'] * 1e3:.1f} | "
               f"{t['torch_ms'] / t['jax_ms']:.2f} |")
    lines.append(line)
  n = sum(loaded(row) for row in r['rows'])
  if n:
    lines += ['', f'(!) {n} row(s): other processes kept more than '
              f'{LOAD_LIMIT:.0%} of the CPUs busy while they were timed; '
              'their times are not the idle machine\'s.']
  return '\n'.join(lines)


def _define_flags() -> dict:
  """The command's flags; defined only when it runs as a program, so
  importing this module (as the test does) defines none."""
  return {
      'repeats': flags.DEFINE_integer(
          'repeats', 31, 'timed calls per product and side; the median is '
          'reported'),
      'dtype': flags.DEFINE_enum(
          'dtype', 'float32', DTYPES,
          'operand dtype (bfloat16: JAX accumulates in float32)'),
      'threads': flags.DEFINE_integer(
          'threads', 0, "torch.set_num_threads (0: the CPUs this process may "
          "use, which XLA's thread pool always uses)"),
      'stack': flags.DEFINE_integer(
          'stack', 16, 'operand sets per call of the tile products'),
      'warmup_s': flags.DEFINE_float(
          'warmup_s', 1.0, 'seconds of untimed calls of the first product on '
          'each side before any is timed'),
      'no_torch': flags.DEFINE_bool('no-torch', False, 'time JAX only'),
      'out': flags.DEFINE_string('out', '', 'write the results as JSON here'),
  }


def main(argv: Sequence[str], fl: dict) -> dict:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # as before app.run: warnings only
  args = types.SimpleNamespace(**{k: f.value for k, f in fl.items()})
  if args.repeats < 1 or args.stack < 1 or args.threads < 0:
    raise app.UsageError('--repeats and --stack must be at least 1, '
                         '--threads at least 0', exitcode=2)
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  import jax  # pylint: disable=g-import-not-at-top
  # lmx.cli (the flag parser) imported JAX before JAX_PLATFORMS was set:
  # set the platform again before the backend starts.
  jax.config.update('jax_platforms', os.environ['JAX_PLATFORMS'])
  torch_on = False
  if not args.no_torch:
    why = torch_missing()
    if why:
      print(why, flush=True)
    else:
      torch_on = True
  result = run(make_products(stack=args.stack), args.repeats,
               dtype=args.dtype, torch_on=torch_on, threads=args.threads,
               warmup_s=args.warmup_s)
  print()
  print(table(result))
  if args.out:
    cli.write_results(args.out, result)
  return result


if __name__ == '__main__':
  _FLAGS = _define_flags()
  app.run(cli.timed(main, _FLAGS), flags_parser=cli.parse_flags)
