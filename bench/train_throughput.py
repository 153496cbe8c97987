r"""Training throughput of lmx against x-transformers (PyTorch), side by side.

    pip install -e '.[bench]'      # torch (CPU build) and x-transformers
    python bench/train_throughput.py --positions=alibi,rope --steps=5 \
        --repeats=5 --out=runs/train_throughput.json

(``python -m bench.train_throughput`` works too.) The fixed model of the
"Scale and speed" issue: width 256, 4 layers, 4 heads (head dim 64), MLP
1024 (ratio 4, GELU, with biases), pre-norm RMSNorm, no bias in the attention
projections, byte vocabulary 257, untied head, float32, sequence 256, batch
16; AdamW (b1 0.9, b2 0.95, weight decay 0.1 on matrices only) after
global-norm clipping at 1.0. ALiBi and RoPE (full head dim, half-split
pairs) on both sides.

What is measured:

* The machine's matmul peak, by this script: the median GFLOP/s of a jitted
  4096 x 4096 float32 matmul in JAX (on a GPU also bfloat16), and of the
  same matmul in torch. MFU is model FLOPs/s over the higher float32 one
  (``mfu_reference``): XLA:CPU's GEMM reached 160-260 GFLOP/s where torch's
  reached 320-330 on the same 2 cores.
* lmx: the real train step of ``lmx.training.trainer`` (``init_model``,
  ``make_optimizer``, ``init_state``, ``make_train_step``), in this process.
* x-transformers: ``TransformerWrapper(Decoder(...))`` with the identical
  architecture, forward, cross-entropy, backward, ``clip_grad_norm_``,
  ``AdamW.step`` (PyTorch defaults otherwise: eager, no compile), in a child
  process of this one.
* One fixed batch of random bytes per side, so the data pipeline is not
  timed. A repeat is ``--steps`` steps timed after ``--warmup`` untimed ones
  (lmx's compilation is in the warmup); tokens/s is the median over repeats.
  Repeats alternate lmx, torch, lmx, torch, ... so load from other processes
  on the machine hits both; the two never run at the same time.

Fair use of the cores: before JAX's backend starts or torch is imported,
this process pins itself (``os.sched_setaffinity``) to ``--threads`` CPUs
(default: all it may use) and the torch child inherits that set. XLA's CPU
client sizes its intra-op thread pool from the CPUs it may run on, and torch
gets ``torch.set_num_threads(threads)`` (one inter-op thread), so both use
the same cores with the same number of threads.

Model FLOPs per token (``lmx.flops``; PaLM, Chowdhery et al. 2022, appendix
B): ``6 N + 12 L T d``, where N counts the weights of matmuls (qkv, attention
output, MLP, LM head; not the embedding table, norms or biases), L the
layers, T the sequence length and d the width; the attention term counts the
full T x T products of QK^T and AV (forward and backward) with no causal
saving. Both sides do the same work, so one number serves both.
"""

from __future__ import annotations

import collections
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from typing import Sequence

from absl import app, flags, logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from lmx import cli  # pylint: disable=g-import-not-at-top
from lmx import flops as lmx_flops  # pylint: disable=g-import-not-at-top

MODEL = dict(d_model=256, num_layers=4, num_heads=4, mlp_dim=1024,
             seq_len=256, batch_size=16, vocab_size=257)


def model_flops_per_token(m: dict = MODEL) -> dict:
  """The per-token count of ``lmx.flops`` for ``m``, split into its terms."""
  t = m['seq_len']
  n_matmul = lmx_flops.matmul_params(m)
  return {'n_matmul_params': n_matmul, 'dense': 6 * n_matmul,
          'attention': 3 * lmx_flops.attention_flops_per_token(m, t),
          'total': lmx_flops.train_flops_per_token(m, t),
          'formula': '6 N + 12 L T d'}


def _pin(threads: int | None) -> list[int]:
  cpus = sorted(os.sched_getaffinity(0))
  if threads:
    cpus = cpus[:threads]
    os.sched_setaffinity(0, cpus)
  return cpus


def _median_rate(times: list[float], work: float) -> float:
  return work / statistics.median(times)


# ----------------------------------------------------------------------------
# The torch side: a child process answering one JSON line per request.
# ----------------------------------------------------------------------------

def torch_worker(device: str, threads: int, dtype: str = 'float32') -> None:
  import torch  # pylint: disable=g-import-not-at-top
  from x_transformers import Decoder, TransformerWrapper  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  try:
    torch.set_num_interop_threads(1)
  except RuntimeError:
    pass
  dev = torch.device('cuda' if device == 'gpu' else 'cpu')
  sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
  m = MODEL
  models = {}

  def build(position):
    torch.manual_seed(0)
    pos = (dict(alibi_pos_bias=True) if position == 'alibi' else
           dict(rotary_pos_emb=True, rotary_emb_dim=m['d_model'] // m['num_heads']))
    net = TransformerWrapper(
        num_tokens=m['vocab_size'], max_seq_len=m['seq_len'],
        use_abs_pos_emb=False, tie_embedding=False,
        attn_layers=Decoder(
            dim=m['d_model'], depth=m['num_layers'], heads=m['num_heads'],
            attn_dim_head=m['d_model'] // m['num_heads'],
            ff_mult=m['mlp_dim'] // m['d_model'], use_rmsnorm=True,
            **pos)).to(dev)
    decay = [p for p in net.parameters() if p.ndim >= 2]
    no_decay = [p for p in net.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.1},
                             {'params': no_decay, 'weight_decay': 0.0}],
                            lr=1e-3, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, m['vocab_size'], (m['batch_size'], m['seq_len'] + 1),
                      generator=g).to(dev)
    n = sum(p.numel() for p in net.parameters())

    def step():
      # bfloat16: autocast, float32 parameters and optimizer, bf16 matmuls,
      # the same mixed precision as lmx's config.model.dtype='bfloat16'.
      with torch.autocast(dev.type, dtype=torch.bfloat16,
                          enabled=dtype == 'bfloat16'):
        logits = net(x[:, :-1])
      loss = torch.nn.functional.cross_entropy(
          logits.float().reshape(-1, m['vocab_size']), x[:, 1:].reshape(-1))
      opt.zero_grad(set_to_none=True)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
      opt.step()
      return loss
    return step, n

  for line in sys.stdin:
    req = json.loads(line)
    out = {}
    if req['op'] == 'info':
      out = {'torch': torch.__version__, 'threads': torch.get_num_threads()}
      import x_transformers  # pylint: disable=g-import-not-at-top
      from importlib.metadata import version  # pylint: disable=g-import-not-at-top
      out['x_transformers'] = version('x-transformers')
      del x_transformers
    elif req['op'] == 'build':
      step, n = build(req['position'])
      models[req['position']] = step
      for _ in range(req['warmup']):
        loss = step()
      sync()
      out = {'params': n, 'loss': loss.item()}
    elif req['op'] == 'time':
      step = models[req['position']]
      sync()
      t0 = time.perf_counter()
      for _ in range(req['steps']):
        loss = step()
      loss = loss.item()
      sync()
      out = {'seconds': (time.perf_counter() - t0) / req['steps'], 'loss': loss}
    elif req['op'] == 'profile':
      out = torch_profile(models[req['position']], req['steps'], sync)
    elif req['op'] == 'matmul':
      a = torch.randn(4096, 4096, device=dev,
                      dtype=getattr(torch, req.get('dtype', 'float32')))
      times = []
      for _ in range(req['repeats'] + 1):
        sync()
        t0 = time.perf_counter()
        a @ a
        sync()
        times.append(time.perf_counter() - t0)
      out = {'gflops': _median_rate(times[1:], 2 * 4096 ** 3) / 1e9}
    print(json.dumps(out), flush=True)


# aten operations by the kinds of bench/profile_step.py (the same names), so
# the two sides' breakdowns set side by side.
TORCH_KINDS = (
    ('dense GEMM', ('aten::mm', 'aten::addmm', 'aten::linear')),
    ('attention GEMM', ('aten::bmm', 'aten::baddbmm', 'aten::einsum',
                        'aten::_scaled_dot_product', 'aten::_flash_attention',
                        'aten::scaled_dot_product')),
    ('softmax / exp', ('aten::_softmax', 'aten::softmax', 'aten::exp',
                       'aten::_log_softmax', 'aten::_softmax_backward',
                       'aten::_log_softmax_backward')),
    ('transpose / copy', ('aten::copy_', 'aten::clone', 'aten::contiguous',
                          'aten::cat', 'aten::_to_copy', 'aten::index',
                          'aten::embedding', 'aten::stack')),
    ('reduction', ('aten::sum', 'aten::mean', 'aten::norm', 'aten::amax',
                   'aten::max', 'aten::_foreach_norm', 'aten::linalg_vector',
                   'aten::nll_loss', 'aten::_fused_rms_norm')),
)


def torch_kind(name: str) -> str:
  """The kind of an aten operation: by its name's prefix; ``elementwise``
  for the other aten operations, ``other`` for the rest (Python, autograd
  and optimizer frames without an aten operation of their own)."""
  for kind, prefixes in TORCH_KINDS:
    if name.startswith(prefixes):
      return kind
  return 'elementwise' if name.startswith('aten::') else 'other'


def torch_profile(step, steps: int, sync) -> dict:
  """Self CPU time of each operation over ``steps`` steps under
  ``torch.profiler``, per step: ``{'kinds': {kind: ms}, 'ops': [[name,
  kind, ms], ...], 'wall_ms'}``. Self time counts each operation without
  the operations it calls, so the kinds sum to the time spent in them."""
  import torch  # pylint: disable=g-import-not-at-top
  step()
  sync()
  t0 = time.perf_counter()
  with torch.profiler.profile(
      activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      step()
    sync()
  wall = (time.perf_counter() - t0) / steps * 1e3
  kinds = collections.Counter()
  ops = []
  for e in prof.key_averages():
    ms = e.self_cpu_time_total / 1e3 / steps
    if ms <= 0:
      continue
    k = torch_kind(e.key)
    kinds[k] += ms
    ops.append([e.key, k, ms])
  ops.sort(key=lambda o: -o[2])
  return {'kinds': dict(kinds), 'ops': ops[:40], 'wall_ms': wall}


class TorchChild:
  """The torch worker, a subprocess of this one (same process tree)."""

  def __init__(self, device, threads, dtype='float32'):
    self.proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), '--worker=torch',
         f'--device={device}', f'--threads={threads}', f'--dtype={dtype}'],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

  def __call__(self, **req):
    self.proc.stdin.write(json.dumps(req) + '\n')
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError('the torch worker died; see its error above')
    return json.loads(line)

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


# ----------------------------------------------------------------------------
# The lmx side.
# ----------------------------------------------------------------------------

def lmx_config(position: str, dtype: str = 'float32', cpu_devices: int = 0):
  """The benchmark's model in lmx's config; ``cpu_devices`` > 1: on that
  many CPU devices (``config.cpu_devices``), data-parallel (the mesh's
  default data axis takes them all)."""
  from configs import base  # pylint: disable=g-import-not-at-top
  c = base.get_config()
  c.cpu_devices = cpu_devices
  c.model.position = position
  for key in ('d_model', 'num_layers', 'num_heads', 'mlp_dim', 'vocab_size'):
    c.model[key] = MODEL[key]
  c.model.dtype = dtype
  c.model.tie_embeddings = False
  c.model.dropout = 0.0
  c.train.seq_len = MODEL['seq_len']
  c.train.batch_size = MODEL['batch_size']
  return c


class LmxRunner:
  """One config's compiled train step (``lmx.training.trainer.make_train_step``:
  forward, backward, AdamW) on one fixed batch of random tokens, so the
  data pipeline is not timed. ``config`` is validated here; compilation
  happens in the ``warmup`` untimed steps (at least one)."""

  def __init__(self, config, warmup: int):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from lmx.config import validate as config_lib  # pylint: disable=g-import-not-at-top
    from lmx.training import run_state  # pylint: disable=g-import-not-at-top
    from lmx.training import trainer
    from lmx import sharding  # pylint: disable=g-import-not-at-top
    c = config.copy_and_resolve_references()
    config_lib.validate(c)
    tx = run_state.make_optimizer(c.train)
    graphdef, params = run_state.init_model(c)
    self.params = int(sum(x.size for x in jax.tree.leaves(params)))
    b, t = int(c.train.batch_size), int(c.train.seq_len)
    self.tokens = b * t
    toks = np.random.default_rng(0).integers(0, int(c.model.vocab_size),
                                             (b, t + 1))
    self.batch = {
        'inputs': jnp.asarray(toks[:, :-1], jnp.int32),
        'targets': jnp.asarray(toks[:, 1:], jnp.int32),
        'positions': jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)),
    }
    if c.cpu_devices > 1:   # train.py's mesh path: the state on the mesh
      mesh = sharding.make_mesh(c)
      _, target = trainer.abstract_state(c, tx)
      shardings = sharding.tree_shardings(target, mesh)
      with jax.set_mesh(mesh):
        self.state = trainer.init_state_on_mesh(c, params, tx, shardings)
      self.step = trainer.make_train_step(graphdef, tx, c, mesh, shardings)
      rows = sharding.batch_sharding(mesh)
      self.batch = {k: jax.device_put(v, rows) for k, v in self.batch.items()}
    else:
      self.state = run_state.init_state(c, params, tx)
      self.step = trainer.make_train_step(graphdef, tx, c)
    for _ in range(max(warmup, 1)):
      self.state, m = self.step(self.state, self.batch)
    self.loss = float(m['loss'])

  def time(self, steps: int) -> float:
    """Seconds per step over ``steps`` steps."""
    t0 = time.perf_counter()
    for _ in range(steps):
      self.state, m = self.step(self.state, self.batch)
    self.loss = float(m['loss'])  # waits for the last step
    return (time.perf_counter() - t0) / steps


def jax_matmul_peak(repeats: int, dtype_name: str, n: int = 4096) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  dtype = jnp.dtype(dtype_name)
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
  # A float32 result: the form XLA:CPU sends to bf16 matrix units (a bf16
  # result type takes a generic path about 4x slower on this CPU).
  f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
  f(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - t0)
  return _median_rate(times, 2 * n ** 3) / 1e9


def _define_flags() -> dict:
  """The command's flags; defined only when it runs as a program, so
  importing this module (bench/profile_step.py does) defines none.
  ``--worker`` is the script's own argument to its torch child
  (``TorchChild``), so ``--help`` leaves it out (``--helpfull`` lists it)."""
  return {
      'positions': flags.DEFINE_list('positions', 'alibi,rope',
                                     'comma-separated: alibi, rope'),
      'steps': flags.DEFINE_integer('steps', 5, 'timed steps per repeat'),
      'repeats': flags.DEFINE_integer(
          'repeats', 5,
          'repeats per side (alternating); the median is reported'),
      'warmup': flags.DEFINE_integer('warmup', 3, 'untimed steps first'),
      'device': flags.DEFINE_enum('device', 'cpu', ('cpu', 'gpu'), None),
      'threads': flags.DEFINE_integer(
          'threads', 0, 'CPUs for both sides (0: all this process may use)'),
      'no_torch': flags.DEFINE_bool(
          'no-torch', False, 'time lmx only (no x-transformers needed)'),
      'cpu_devices': flags.DEFINE_integer(
          'cpu_devices', 0, 'lmx\'s config.cpu_devices: the CPUs as this '
          'many XLA devices, training data-parallel over them (0 or 1: one '
          'device)'),
      'dtype': flags.DEFINE_enum(
          'dtype', 'float32', ('float32', 'bfloat16'),
          'compute dtype of both sides (parameters stay float32)'),
      'out': flags.DEFINE_string('out', '',
                                 'write the results as JSON here'),
      'worker': flags.DEFINE_string(
          'worker', '', 'Internal: "torch" runs this process as the torch '
          'child of TorchChild.',
          module_name='bench.train_throughput.internal'),
  }


def main(argv: Sequence[str], fl: dict) -> dict:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # as before app.run: warnings only
  args = types.SimpleNamespace(**{k: f.value for k, f in fl.items()})

  cpus = _pin(args.threads or None)
  threads = len(cpus)
  if args.worker == 'torch':
    torch_worker(args.device, threads, args.dtype)
    return {}
  os.environ.setdefault('JAX_PLATFORMS', 'cuda' if args.device == 'gpu'
                        else 'cpu')
  from lmx.model import xla_cpu  # pylint: disable=g-import-not-at-top
  xla_cpu.split_host(args.cpu_devices)   # read when the backend starts
  import jax  # pylint: disable=g-import-not-at-top
  # lmx.cli (the flag parser) imported JAX before JAX_PLATFORMS was set, and
  # JAX reads it at import: set the platform again, before the backend
  # starts (the backend, and XLA's thread pool, start after _pin above).
  jax.config.update('jax_platforms', os.environ['JAX_PLATFORMS'])

  positions = [s.strip() for s in args.positions if s.strip()]
  for pos in positions:
    if pos not in ('alibi', 'rope'):
      raise app.UsageError(f'--positions: {pos!r} is not alibi or rope',
                           exitcode=2)
  flops = model_flops_per_token()
  tokens_per_step = MODEL['batch_size'] * MODEL['seq_len']
  result = {
      'machine': {'platform': platform.platform(),
                  'processor': platform.processor() or platform.machine(),
                  'cpus': cpus, 'threads': threads,
                  'jax_device': str(jax.devices()[0]), 'jax': jax.__version__,
                  'cpu_devices': max(args.cpu_devices, 1)},
      'model': MODEL, 'flops_per_token': flops, 'steps': args.steps,
      'repeats': args.repeats, 'warmup': args.warmup, 'dtype': args.dtype,
  }
  peak = {'float32': jax_matmul_peak(10, 'float32')}
  if args.device == 'gpu' or args.dtype == 'bfloat16':
    peak['bfloat16'] = jax_matmul_peak(10, 'bfloat16')
  result['peak_gflops'] = peak
  torch = None if args.no_torch else TorchChild(args.device, threads,
                                                 args.dtype)
  try:
    if torch:
      result['machine'].update(torch(op='info'))
      result['peak_gflops']['torch_float32'] = torch(
          op='matmul', repeats=10)['gflops']
      if args.dtype == 'bfloat16':
        result['peak_gflops']['torch_bfloat16'] = torch(
            op='matmul', repeats=10, dtype='bfloat16')['gflops']
    # XLA:CPU's float32 GEMM can fall well short of oneDNN's on the same
    # cores, so MFU is taken against the higher of the two measurements.
    peak['mfu_reference'] = max(v for k, v in peak.items()
                                if k.endswith(args.dtype))
    result['results'] = {}
    for pos in positions:
      lmx = LmxRunner(lmx_config(pos, args.dtype, args.cpu_devices),
                      args.warmup)
      row = {'lmx': {'params': lmx.params, 'seconds': []}}
      if torch:
        row['x_transformers'] = dict(torch(op='build', position=pos,
                                           warmup=args.warmup), seconds=[])
        row['x_transformers'].pop('loss')
      for _ in range(args.repeats):
        row['lmx']['seconds'].append(lmx.time(args.steps))
        if torch:
          row['x_transformers']['seconds'].append(
              torch(op='time', position=pos, steps=args.steps)['seconds'])
      for side in row.values():
        side['tokens_per_second'] = _median_rate(side['seconds'],
                                                 tokens_per_step)
        side['mfu'] = (side['tokens_per_second'] * flops['total']
                       / (peak['mfu_reference'] * 1e9))
      if torch:
        row['ratio'] = (row['lmx']['tokens_per_second']
                        / row['x_transformers']['tokens_per_second'])
      result['results'][pos] = row
      del lmx
  finally:
    if torch:
      torch.close()

  print(table(result))
  if args.out:
    cli.write_results(args.out, result)
  return result


def table(r: dict) -> str:
  f = r['flops_per_token']
  m = r['machine']
  lines = [
      f"Machine: {m['processor']}, {m['threads']} threads on CPUs "
      f"{m['cpus']}; {m['jax_device']}; measured matmul peak "
      + ', '.join(f'{k} {v:,.1f} GFLOP/s' for k, v in r['peak_gflops'].items()),
      f"Model FLOPs/token = 6N + 12LTd = 6 x {f['n_matmul_params']:,} + "
      f"{f['attention']:,} = {f['total'] / 1e6:.2f} MFLOP; median of "
      f"{r['repeats']} alternating repeats of {r['steps']} steps; "
      f"compute dtype {r.get('dtype', 'float32')}",
      '',
      '| encoding | implementation | tokens/s | MFU | lmx / x-transformers |',
      '|---|---|---:|---:|---:|',
  ]
  for pos, row in r['results'].items():
    ratio = f"{row['ratio']:.2f}x" if 'ratio' in row else ''
    for name, side in row.items():
      if not isinstance(side, dict):
        continue
      label = 'lmx (JAX)' if name == 'lmx' else 'x-transformers (PyTorch)'
      if name == 'lmx' and m.get('cpu_devices', 1) > 1:
        label += f", {m['cpu_devices']} CPU devices"
      lines.append(f"| {pos} | {label} | {side['tokens_per_second']:,.0f} | "
                   f"{100 * side['mfu']:.1f}% | "
                   f"{ratio if name == 'lmx' else ''} |")
  return '\n'.join(lines)


def _run(argv: Sequence[str], fl: dict) -> None:
  """``main`` as app.run's main: its result (a dict) is not the exit
  status, which is 0."""
  main(argv, fl)


if __name__ == '__main__':
  _FLAGS = _define_flags()
  app.run(lambda argv: _run(argv, _FLAGS), flags_parser=cli.parse_flags)
