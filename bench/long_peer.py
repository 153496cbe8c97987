r"""Long evaluation against x-transformers (PyTorch): one forward pass with
per-token loss at long lengths, side by side.

    pip install -e '.[bench]'      # torch (CPU build) and x-transformers
    python bench/long_peer.py --lengths=65536 --repeats=3 \
        --out=runs/long_peer.json

(``python -m bench.long_peer`` works too.) The model is the default one of
``configs/rope.py`` (``lmx.config.defaults.SIZES['default']``: width 128, 4
layers, 4 heads of 32, MLP 512 with biases and tanh-approximated GELU,
pre-norm RMSNorm, no bias in the attention projections, untied head without
bias, byte vocabulary 257, RoPE over the whole head dim with half-split
pairs and theta 10,000), float32, freshly initialised (the cost does not
depend on the weights), batch 1, one sequence of random bytes.

What is measured, per length:

* lmx: ``lmx.evaluation.runner.make_loss_fn``, the jitted per-token loss
  function ``eval.py`` uses, with ``config.model.attention`` from
  ``--attention`` (default ``chunked``; ``auto`` takes chunked above
  ``config.model.chunk_threshold`` keys on a CPU). The backend each
  attention call took is recorded while the function is traced
  (``lmx.model.attention.recording``) and reported. Compilation is timed
  apart (``lower().compile()``), in this process.
* x-transformers: ``TransformerWrapper(Decoder(...))`` with the same
  architecture (the same widths, rotary over the head dim, ``use_rmsnorm``,
  ``ff_custom_activation=GELU(approximate='tanh')``, untied), with
  ``attn_flash=True`` so attention is ``F.scaled_dot_product_attention``
  with ``is_causal`` (torch's fused CPU flash kernel), under
  ``torch.inference_mode()``: logits, then
  ``F.cross_entropy(..., reduction='none')``, in a child process of this one
  (eager, no compile; its first call is reported as its warmup).
* Repeats alternate lmx, torch, lmx, torch, ... so load from other processes
  on the machine hits both; the two never run at the same time. Times are
  medians; the ratio is x-transformers' seconds over lmx's (above 1: lmx is
  faster).

Both sides compute the same thing, structurally: the parameter counts are
printed side by side (equal, 855,936 at the default size), and one FLOPs
count per token serves both (``lmx.flops.forward_flops_per_token``:
``2 N + 4 L T d``, the full ``T x T`` attention products without the causal
saving, which both fused kernels make).

Fair use of the cores as in ``bench/train_throughput.py``: this process pins
itself to ``--threads`` CPUs before JAX's backend starts and the torch child
inherits the set and gets ``torch.set_num_threads`` (one inter-op thread).

``--profile_dir``: after the timed repeats, one more lmx call of each
length runs under ``jax.profiler`` (XLA:CPU's per-operation events on) and
the trace stays there; with xprof installed, the time per kind of operation
is printed (``bench/profile_step.py``'s reading of a trace and kinds, with
the chunked backend's tile products, rank 3 inside its loops, counted as
attention products; the loops' own events overlap their bodies' and are not
added; a last line says how much of the time ran inside the loops).
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import platform
import re
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
from lmx.errors import ConfigError  # pylint: disable=g-import-not-at-top

DIMS = ('d_model', 'num_layers', 'num_heads', 'mlp_dim', 'vocab_size')
TRACE_FLAG = '--xla_cpu_enable_xprof_traceme'


def _pin(threads: int | None) -> list[int]:
  cpus = sorted(os.sched_getaffinity(0))
  if threads:
    cpus = cpus[:threads]
    os.sched_setaffinity(0, cpus)
  return cpus


def tokens(length: int, seed: int = 0):
  """``(inputs, targets)``, each ``[1, length]`` int32: random bytes, the
  same on both sides."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  t = np.random.default_rng(seed).integers(0, 256, (1, length + 1))
  t = t.astype(np.int32)
  return t[:, :-1], t[:, 1:]


def flops_per_token(model: dict, length: int) -> dict:
  n = lmx_flops.matmul_params(model)
  return {'n_matmul_params': n, 'dense': 2 * n,
          'attention': lmx_flops.attention_flops_per_token(model, length),
          'total': lmx_flops.forward_flops_per_token(model, length),
          'formula': '2 N + 4 L T d'}


# ----------------------------------------------------------------------------
# The torch side: a child process answering one JSON line per request.
# ----------------------------------------------------------------------------

def torch_worker(threads: int) -> None:
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  from x_transformers import Decoder, TransformerWrapper  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  try:
    torch.set_num_interop_threads(1)
  except RuntimeError:
    pass
  state = {}

  def build(m, length):
    torch.manual_seed(0)
    head = m['d_model'] // m['num_heads']
    net = TransformerWrapper(
        num_tokens=m['vocab_size'], max_seq_len=length,
        use_abs_pos_emb=False, tie_embedding=False,
        attn_layers=Decoder(
            dim=m['d_model'], depth=m['num_layers'], heads=m['num_heads'],
            attn_dim_head=head, ff_mult=m['mlp_dim'] // m['d_model'],
            ff_custom_activation=torch.nn.GELU(approximate='tanh'),
            use_rmsnorm=True, rotary_pos_emb=True, rotary_emb_dim=head,
            attn_flash=True)).eval()
    x, y = (torch.from_numpy(a).long() for a in tokens(length))

    def call():
      with torch.inference_mode():
        logits = net(x)
        return F.cross_entropy(logits.reshape(-1, m['vocab_size']),
                               y.reshape(-1), reduction='none')
    return call, sum(p.numel() for p in net.parameters())

  for line in sys.stdin:
    req = json.loads(line)
    out = {}
    if req['op'] == 'info':
      from importlib.metadata import version  # pylint: disable=g-import-not-at-top
      out = {'torch': torch.__version__, 'threads': torch.get_num_threads(),
             'x_transformers': version('x-transformers')}
    elif req['op'] == 'build':
      state.clear()  # the previous length's model goes first
      call, n = build(req['model'], req['length'])
      state['call'] = call
      t0 = time.perf_counter()
      losses = call()
      out = {'params': n, 'warmup_s': time.perf_counter() - t0,
             'loss': losses.mean().item()}
      for _ in range(req.get('warmup', 0)):
        call()
    elif req['op'] == 'time':
      t0 = time.perf_counter()
      losses = state['call']()
      out = {'seconds': time.perf_counter() - t0, 'loss': losses.mean().item()}
    print(json.dumps(out), flush=True)


class TorchChild:
  """The torch worker, a subprocess of this one (same process tree)."""

  def __init__(self, threads: int):
    self.proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), '--worker=torch',
         f'--threads={threads}'],
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


def torch_missing() -> str | None:
  """Why the torch side cannot run in this interpreter, or None."""
  for module, package in (('torch', 'torch'),
                          ('x_transformers', 'x-transformers')):
    if importlib.util.find_spec(module) is None:
      return (f'{package} is not installed in {sys.executable}: timing lmx '
              "only (pip install -e '.[bench]' for the x-transformers side)")
  return None


# ----------------------------------------------------------------------------
# The lmx side.
# ----------------------------------------------------------------------------

def lmx_config(size: str = 'default', attention: str = 'chunked',
               block: int = 0, cpu_devices: int = 0):
  """configs/rope.py at ``size``, float32, with ``attention`` (and the
  chunked tile ``block``, 0: the config's), validated. ``cpu_devices`` > 1:
  the heads split over that many CPU devices (``config.cpu_devices``, the
  mesh's tensor axis), as eval.py runs with
  ``--config.cpu_devices=N --config.mesh.data=1 --config.mesh.tensor=N``."""
  from configs import rope  # pylint: disable=g-import-not-at-top
  from lmx.config import validate as config_lib  # pylint: disable=g-import-not-at-top
  c = rope.get_config(f'size={size}')
  c.model.attention = attention
  if block:
    c.model.attention_block = block
  if cpu_devices > 1:
    c.cpu_devices = cpu_devices
    c.mesh.data, c.mesh.tensor = 1, cpu_devices
  c.model.dtype = 'float32'
  c.model.dropout = 0.0
  config_lib.validate(c)
  return c


def model_dims(config) -> dict:
  return {k: int(config.model[k]) for k in DIMS}


class LmxEval:
  """``make_loss_fn`` (eval.py's per-token loss) compiled for one sequence of
  ``length`` random bytes; ``backends`` are the attention backends its calls
  took, ``compile_s`` the seconds of ``lower().compile()``."""

  def __init__(self, config, length: int):
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from lmx import sharding  # pylint: disable=g-import-not-at-top
    from lmx.evaluation import runner as evaluation  # pylint: disable=g-import-not-at-top
    from lmx.model import attention  # pylint: disable=g-import-not-at-top
    from lmx.training import run_state  # pylint: disable=g-import-not-at-top
    graphdef, params = run_state.init_model(config)
    self.n_params = int(sum(x.size for x in jax.tree.leaves(params)))
    x, y = tokens(length)
    pos = np.arange(length, dtype=np.int32)[None]
    if config.cpu_devices > 1:
      # eval.py's way with config.cpu_devices: the parameters on the mesh
      # (heads over its tensor axis), the windows replicated (one row).
      mesh = sharding.make_mesh(config)
      params = sharding.place(params, sharding.tree_shardings(params, mesh))
      rep = sharding.replicated(mesh)
      x, pos, y = (sharding.place(a, rep) for a in (x, pos, y))
      self.fn = jax.jit(evaluation.make_loss_fn(graphdef), out_shardings=rep)
    else:
      params = jax.device_put(params)
      self.fn = evaluation.make_loss_fn(graphdef)
    self.params = jax.block_until_ready(params)
    self.args = (self.params, x, pos, y)
    t0 = time.perf_counter()
    with attention.recording() as calls:
      lowered = self.fn.lower(*self.args)
    self.compiled = lowered.compile()
    self.compile_s = time.perf_counter() - t0
    self.backends = sorted({name for name, _ in calls})
    self.losses = None

  def __call__(self) -> float:
    """Seconds of one call (to the losses on the host)."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    t0 = time.perf_counter()
    self.losses = np.asarray(self.compiled(*self.args))
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------
# A profile of one lmx call.
# ----------------------------------------------------------------------------

LOOP_OPS = ('while', 'call', 'conditional')
_COMP = re.compile(r'^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$')
_NAME = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = ')
_CALLED = re.compile(r'(?:body|condition|to_apply|branch_computations|'
                     r'true_computation|false_computation)='
                     r'\{?(%?[\w.\-]+(?:, ?%?[\w.\-]+)*)')


def in_loops(hlo_text: str) -> set:
  """The instructions of an HLO module's text that run inside a loop
  (``while``, ``call``, ``conditional``), however deep: in the chunked
  backend, those of the attention tiles."""
  members: dict[str, set] = collections.defaultdict(set)
  called: dict[str, list] = collections.defaultdict(list)
  current = None
  for line in hlo_text.splitlines():
    m = _COMP.match(line)
    if m:
      current = m.group(1)
      continue
    m = _NAME.match(line)
    if not m or current is None:
      continue
    members[current].add(m.group(1))
    if re.search(r'\b(?:' + '|'.join(LOOP_OPS) + r')\(', line):
      for group in _CALLED.findall(line):
        called[current] += [c.strip().lstrip('%') for c in group.split(',')]
  # Computations a loop calls, then those their loops call, and so on.
  todo = [c for comps in called.values() for c in comps]
  seen: set = set()
  while todo:
    comp = todo.pop()
    if comp not in seen:
      seen.add(comp)
      todo += called.get(comp, [])
  return set().union(*(members.get(c, set()) for c in seen))


def profile_summary(events: list[dict], hlo_text: str) -> dict:
  """Milliseconds per kind of work in one call: ``bench/profile_step.py``'s
  kinds of the instructions that compute (not the loops that hold them,
  whose events overlap their bodies'), a product inside a loop counted as
  attention (the chunked backend's tiles are rank 3, which profile_step
  would call dense); and how much of it ran inside the loops."""
  from bench import profile_step  # pylint: disable=g-import-not-at-top
  hlo = profile_step.parse_hlo(hlo_text)
  inside = in_loops(hlo_text)
  leaves = {n: i for n, i in hlo.items() if i.opcode not in LOOP_OPS}
  s = profile_step.summarize(events, leaves, steps=1)
  kinds = collections.Counter({k: 0.0 for k in profile_step.KINDS})
  loops_ms = 0.0
  for op in s['ops']:
    k = op['kind']
    if op['name'] in inside:
      loops_ms += op['ms']
      if k == 'dense GEMM':
        k = op['kind'] = 'attention GEMM'
    kinds[k] += op['ms']
  return {'kinds': dict(kinds), 'total_ms': s['total_ms'],
          'in_loops_ms': loops_ms, 'top': s['ops'][:40]}


def profile(lmx: LmxEval, logdir: str) -> dict:
  """One call of ``lmx`` under ``jax.profiler``; the trace stays in
  ``logdir``, summarised if xprof can read it."""
  import jax  # pylint: disable=g-import-not-at-top
  os.makedirs(logdir, exist_ok=True)
  jax.profiler.start_trace(logdir)
  seconds = lmx()
  jax.profiler.stop_trace()
  out = {'dir': os.path.abspath(logdir), 'seconds': seconds}
  if importlib.util.find_spec('xprof') is None:
    out['summary'] = 'xprof is not installed: the trace is not summarised'
    return out
  import glob  # pylint: disable=g-import-not-at-top
  from xprof.convert import raw_to_tool_data  # pylint: disable=g-import-not-at-top
  paths = sorted(glob.glob(os.path.join(logdir, '**', '*.xplane.pb'),
                           recursive=True), key=os.path.getmtime)
  data, _ = raw_to_tool_data.xspace_to_tool_data(paths[-1:], 'trace_viewer',
                                                 {})
  if isinstance(data, bytes):
    data = data.decode()
  events = json.loads(data)['traceEvents']
  out['summary'] = profile_summary(events, lmx.compiled.as_text())
  return out


# ----------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------

def run(lengths: Sequence[int], repeats: int, *, warmup: int = 1,
        size: str = 'default',
        attention: str = 'chunked', block: int = 0, torch=None,
        profile_dir: str = '', cpus: Sequence[int] = (), cpu_devices: int = 0,
        log=print) -> dict:
  """Every length measured (``torch``: a ``TorchChild`` or None)."""
  import jax  # pylint: disable=g-import-not-at-top
  config = lmx_config(size, attention, block, cpu_devices)
  model = model_dims(config)
  cpus = list(cpus) or sorted(os.sched_getaffinity(0))
  result = {
      'machine': {'platform': platform.platform(),
                  'processor': platform.processor() or platform.machine(),
                  'cpus': cpus, 'threads': len(cpus),
                  'jax_device': str(jax.devices()[0]), 'jax': jax.__version__},
      'model': dict(model, size=size, position='rope', dtype='float32',
                    attention=attention,
                    attention_block=int(config.model.attention_block),
                    cpu_devices=max(cpu_devices, 1),
                    chunk_threshold=int(config.model.chunk_threshold)),
      'repeats': repeats, 'warmup': warmup, 'batch': 1, 'results': {},
  }
  if torch:
    result['machine'].update(torch(op='info'))
  for length in lengths:
    lmx = LmxEval(config, length)
    row = {'tokens': length, 'flops_per_token': flops_per_token(model, length),
           'lmx': {'params': lmx.n_params, 'compile_s': lmx.compile_s,
                   'backends': lmx.backends, 'seconds': []}}
    log(f'{length} tokens: lmx compiled in {lmx.compile_s:.1f} s, '
        f'attention backend {"+".join(lmx.backends)}, '
        f'{lmx.n_params:,} parameters')
    for _ in range(warmup):  # untimed, after the first (compiling) call
      lmx()
    if torch:
      xt = torch(op='build', model=model, length=length, warmup=warmup)
      row['x_transformers'] = {'params': xt['params'],
                               'warmup_s': xt['warmup_s'], 'seconds': []}
      row['params_equal'] = xt['params'] == lmx.n_params
      log(f'  x-transformers: {xt["params"]:,} parameters (lmx '
          f'{lmx.n_params:,}: {"equal" if row["params_equal"] else "DIFFER"})'
          f', first call {xt["warmup_s"]:.1f} s')
    for r in range(repeats):
      row['lmx']['seconds'].append(lmx())
      msg = f'  repeat {r + 1}: lmx {row["lmx"]["seconds"][-1]:.2f} s'
      if torch:
        row['x_transformers']['seconds'].append(torch(op='time')['seconds'])
        msg += f', x-transformers {row["x_transformers"]["seconds"][-1]:.2f} s'
      log(msg)
    row['lmx']['loss'] = float(lmx.losses.mean())
    for side in ('lmx', 'x_transformers'):
      if side in row:
        s = row[side]
        s['median_s'] = statistics.median(s['seconds'])
        s['tokens_per_s'] = length / s['median_s']
        s['gflops'] = (length * row['flops_per_token']['total']
                       / s['median_s'] / 1e9)
    if torch:
      row['ratio'] = (row['x_transformers']['median_s']
                      / row['lmx']['median_s'])
    if profile_dir:
      row['profile'] = profile(lmx, os.path.join(profile_dir, str(length)))
    result['results'][str(length)] = row
    del lmx
  return result


def _label(n: int) -> str:
  return f'{n // 1024}k' if n % 1024 == 0 else str(n)


def table(r: dict) -> str:
  m, mod = r['machine'], r['model']
  versions = f"jax {m['jax']}"
  if 'torch' in m:
    versions += f", torch {m['torch']}, x-transformers {m['x_transformers']}"
  lines = [
      f"Machine: {m['processor']}, {m['threads']} threads on CPUs "
      f"{m['cpus']}; {m['jax_device']}; {versions}",
      f"Model: configs/rope.py size {mod['size']} (d {mod['d_model']}, "
      f"{mod['num_layers']} layers, {mod['num_heads']} heads, MLP "
      f"{mod['mlp_dim']}, vocab {mod['vocab_size']}), float32, batch 1; "
      f"lmx attention={mod['attention']} (tile {mod['attention_block']})"
      + (f", heads split over {mod['cpu_devices']} CPU devices"
         if mod.get('cpu_devices', 1) > 1 else '') + '; '
      f"median of {r['repeats']} alternating repeats after "
      f"{r['warmup']} untimed call(s) each (and the first, apart)",
  ]
  for key, row in r['results'].items():
    f, lmx, xt = row['flops_per_token'], row['lmx'], row.get('x_transformers')
    params = f"parameters: lmx {lmx['params']:,}"
    if xt:
      params += (f", x-transformers {xt['params']:,} "
                 f"({'equal' if row['params_equal'] else 'DIFFERENT'})")
    lines += [
        '',
        f"### {_label(int(key))} tokens ({int(key):,})",
        '',
        f"FLOPs/token = 2N + 4LTd = 2 x {f['n_matmul_params']:,} + "
        f"{f['attention']:,} = {f['total'] / 1e6:.1f} MFLOP; {params}",
        '',
        '| implementation | attention | seconds (median) | tokens/s | '
        'GFLOP/s | compile / first call s | x-t time / lmx time |',
        '|---|---|---:|---:|---:|---:|---:|',
        f"| lmx (JAX) | {'+'.join(lmx['backends'])} | {lmx['median_s']:.3f} "
        f"| {lmx['tokens_per_s']:,.0f} | {lmx['gflops']:.1f} | "
        f"{lmx['compile_s']:.1f} | "
        + (f"{row['ratio']:.2f}x |" if xt else '|'),
    ]
    if xt:
      lines.append(
          f"| x-transformers (PyTorch) | SDPA flash (is_causal) | "
          f"{xt['median_s']:.3f} | {xt['tokens_per_s']:,.0f} | "
          f"{xt['gflops']:.1f} | {xt['warmup_s']:.1f} | |")
    prof = row.get('profile', {}).get('summary')
    if isinstance(prof, dict):
      lines += ['', f"lmx profile of one call ({row['profile']['dir']}): "
                f"operations sum to {prof['total_ms']:.0f} ms", '',
                '| kind | ms | share |', '|---|---:|---:|']
      total = prof['total_ms'] or 1.0
      for k, ms in prof['kinds'].items():
        lines.append(f'| {k} | {ms:.1f} | {ms / total:.0%} |')
      lines.append(f"| (of these, inside the attention loops) | "
                   f"{prof['in_loops_ms']:.1f} | "
                   f"{prof['in_loops_ms'] / total:.0%} |")
    elif prof:
      lines += ['', f'lmx profile: {prof}']
  return '\n'.join(lines)


def _define_flags() -> dict:
  """The command's flags; defined only when it runs as a program, so
  importing this module (as the test does) defines none. ``--worker`` is
  the script's own argument to its torch child (``TorchChild``), so
  ``--help`` leaves it out (``--helpfull`` lists it)."""
  return {
      'lengths': flags.DEFINE_list('lengths', '65536',
                                   'comma-separated sequence lengths'),
      'repeats': flags.DEFINE_integer(
          'repeats', 3,
          'timed calls per side (alternating); the median is reported'),
      'warmup': flags.DEFINE_integer(
          'warmup', 1, 'untimed calls per side after the first one'),
      'threads': flags.DEFINE_integer(
          'threads', 0, 'CPUs for both sides (0: all this process may use)'),
      'size': flags.DEFINE_string('size', 'default',
                                  'the model size of configs/rope.py'),
      'attention': flags.DEFINE_enum(
          'attention', 'chunked', ('chunked', 'auto', 'dense'),
          "lmx's config.model.attention"),
      'block': flags.DEFINE_integer(
          'block', 0, 'config.model.attention_block (0: the config\'s)'),
      'cpu_devices': flags.DEFINE_integer(
          'cpu_devices', 0, 'lmx\'s config.cpu_devices: the CPUs as this many '
          'XLA devices, the heads split over them (0 or 1: one device)'),
      'no_torch': flags.DEFINE_bool(
          'no-torch', False, 'time lmx only (no x-transformers needed)'),
      'profile_dir': flags.DEFINE_string(
          'profile_dir', '',
          'write a jax.profiler trace of one lmx call per length here'),
      'out': flags.DEFINE_string('out', '', 'write the results as JSON here'),
      'worker': flags.DEFINE_string(
          'worker', '', 'Internal: "torch" runs this process as the torch '
          'child of TorchChild.', module_name='bench.long_peer.internal'),
  }


def main(argv: Sequence[str], fl: dict) -> dict:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # as before app.run: warnings only
  args = types.SimpleNamespace(**{k: f.value for k, f in fl.items()})
  cpus = _pin(args.threads or None)
  if args.worker == 'torch':
    torch_worker(len(cpus))
    return {}
  try:
    lengths = cli.int_list(args.lengths, '--lengths') or []
  except ConfigError as e:
    raise app.UsageError(str(e), exitcode=2) from None
  if args.profile_dir and TRACE_FLAG not in os.environ.get('XLA_FLAGS', ''):
    # Read when the backend starts (below): XLA:CPU's per-operation events.
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' '
                               + TRACE_FLAG).strip()
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  from lmx.model import xla_cpu  # pylint: disable=g-import-not-at-top
  # eval.py's XLA flags and devices, read when the backend starts
  xla_cpu.prepare_host(args.cpu_devices, evaluation=True)
  import jax  # pylint: disable=g-import-not-at-top
  # lmx.cli (the flag parser) imported JAX before JAX_PLATFORMS was set:
  # set the platform again before the backend (and XLA's thread pool,
  # sized from the CPUs pinned above) starts.
  jax.config.update('jax_platforms', os.environ['JAX_PLATFORMS'])

  torch = None
  if not args.no_torch:
    why = torch_missing()
    if why:
      print(why, flush=True)
    else:
      torch = TorchChild(len(cpus))
  try:
    result = run(lengths, args.repeats, warmup=args.warmup, size=args.size,
                 attention=args.attention, block=args.block, torch=torch,
                 profile_dir=args.profile_dir, cpus=cpus,
                 cpu_devices=args.cpu_devices)
  finally:
    if torch:
      torch.close()
  print()
  print(table(result))
  if args.out:
    cli.write_results(args.out, result)
  return result


if __name__ == '__main__':
  _FLAGS = _define_flags()
  app.run(cli.timed(main, _FLAGS), flags_parser=cli.parse_flags)
