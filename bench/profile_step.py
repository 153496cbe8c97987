"""Where a training step's time goes: an xprof trace of lmx's real train step,
per XLA operation and per kind of work.

    pip install xprof                # only for this script
    python bench/profile_step.py --position=alibi --dtype=bfloat16
    python bench/profile_step.py --position=rope --top=40 --out=profile.json

The model is the fixed one of ``bench/train_throughput.py`` (width 256, 4
layers, sequence 256, batch 16). After ``--warmup`` untimed steps, ``--steps``
steps run under ``jax.profiler`` with XLA:CPU's per-operation trace events
on (``--xla_cpu_enable_xprof_traceme``, added to ``XLA_FLAGS`` before JAX
starts). Each event is matched by name to its instruction in the optimized
HLO of the same step (``jit(...).lower(...).compile().as_text()``), which
gives its shape, the JAX operation it came from and the operations fused
into it. Events are then summed per step, per instruction and per kind:

* ``dense GEMM``: products with 2-D results (the linear layers: q/k/v,
  output, MLP, head; forward, input and weight gradients);
* ``attention GEMM``: products with batched (4-D) results (q.k and the
  weighted values, forward and backward);
* ``softmax / exp``, ``transpose / copy``, ``reduction``, ``elementwise``:
  the other fusions, by what they contain;
* ``other``: everything else that ran in the step.

The sum of the events can exceed the step's wall time: XLA runs independent
operations side by side, each then slower than alone. The numbers say
where the work is, not what removing it would save: time changes by
alternating runs of the old and the new step (``bench/train_throughput.py``).
"""

from __future__ import annotations

import collections
import glob
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import types
from typing import NamedTuple, Sequence

from absl import app, flags, logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from lmx import cli  # pylint: disable=g-import-not-at-top

KINDS = ('dense GEMM', 'attention GEMM', 'softmax / exp', 'transpose / copy',
         'reduction', 'elementwise', 'other')


class Instr(NamedTuple):
  """One instruction of the optimized HLO's entry computation."""
  opcode: str
  shape: str
  op_name: str          # the JAX operation (metadata), '' if none
  ops: frozenset        # opcodes inside a fusion (itself otherwise)


_INSTR = re.compile(
    r'^\s*(?:ROOT )?%?([\w.\-]+) = (.+?) ([a-z][\w\-]*)\((.*)$')
_COMP = re.compile(r'^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$')
_SKIP = {'parameter', 'constant', 'bitcast', 'broadcast', 'convert',
         'reshape', 'tuple', 'get-tuple-element'}


def parse_hlo(text: str) -> dict[str, Instr]:
  """The named instructions of an HLO module's text that run as such (not
  those inside a fusion's computation), each with the opcodes of the
  computation it calls, if a fusion."""
  bodies: dict[str, list[str]] = {}
  lines = []   # (computation, name, shape, opcode, rest)
  current = None
  for line in text.splitlines():
    m = _COMP.match(line)
    if m:
      current = m.group(1)
      bodies[current] = []
      continue
    m = _INSTR.match(line)
    if m and current is not None:
      bodies[current].append(m.group(3))
      lines.append((current,) + m.groups())
  fused = {c.group(1) for (_, _, _, opcode, rest) in lines if opcode == 'fusion'
           for c in [re.search(r'calls=%?([\w.\-]+)', rest)] if c}
  out = {}
  for comp, name, shape, opcode, rest in lines:
    if comp in fused:
      continue
    meta = re.search(r'op_name="([^"]*)"', rest)
    calls = re.search(r'calls=%?([\w.\-]+)', rest)
    ops = (frozenset(bodies.get(calls.group(1), [])) if calls and
           opcode == 'fusion' else frozenset([opcode]))
    out[name] = Instr(opcode, shape.split('{')[0], meta.group(1) if meta else '',
                      ops)
  return out


def kind(instr: Instr) -> str:
  """The kind of work of one instruction (see the module docstring)."""
  ops = set(instr.ops) - _SKIP
  if 'dot' in ops or instr.opcode == 'dot':
    rank = instr.shape.count(',') + 1 if '[' in instr.shape else 0
    return 'attention GEMM' if rank >= 4 else 'dense GEMM'
  if 'exponential' in ops:
    return 'softmax / exp'
  if ops & {'reduce', 'reduce-window'}:
    return 'reduction'
  if ops and ops <= {'copy', 'transpose', 'slice', 'pad', 'concatenate'}:
    return 'transpose / copy'
  if instr.opcode == 'fusion' or ops:
    return 'elementwise'
  return 'other'


def summarize(events: list[dict], hlo: dict[str, Instr], steps: int) -> dict:
  """Per-step milliseconds per instruction and per kind, from complete
  trace events (``ph == 'X'``, ``dur`` in microseconds) named after HLO
  instructions; events of other names are left out."""
  per_instr = collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and e.get('name') in hlo:
      per_instr[e['name']] += e['dur'] / 1e3 / steps
  per_kind = collections.Counter({k: 0.0 for k in KINDS})
  for name, ms in per_instr.items():
    per_kind[kind(hlo[name])] += ms
  rows = [{'name': n, 'ms': ms, 'kind': kind(hlo[n]), 'shape': hlo[n].shape,
           'op_name': hlo[n].op_name,
           'fused': sorted(set(hlo[n].ops) - _SKIP)}
          for n, ms in per_instr.most_common()]
  return {'total_ms': sum(per_instr.values()), 'kinds': dict(per_kind),
          'ops': rows}


def _trace_events(logdir: str) -> list[dict]:
  try:
    from xprof.convert import raw_to_tool_data  # pylint: disable=g-import-not-at-top
  except ImportError:
    sys.exit('error: bench/profile_step.py needs xprof to read the trace: '
             'pip install xprof')
  paths = glob.glob(os.path.join(logdir, '**', '*.xplane.pb'), recursive=True)
  if not paths:
    sys.exit(f'error: jax.profiler wrote no trace under {logdir}')
  data, _ = raw_to_tool_data.xspace_to_tool_data(paths[:1], 'trace_viewer', {})
  if isinstance(data, bytes):
    data = data.decode()
  return json.loads(data)['traceEvents']


def _define_flags() -> dict:
  """The command's flags; defined only when it runs as a program, so
  importing this module (as the tests do) defines none."""
  return {
      'position': flags.DEFINE_string('position', 'alibi', 'alibi or rope'),
      'dtype': flags.DEFINE_enum('dtype', 'float32', ('float32', 'bfloat16'),
                                 None),
      'warmup': flags.DEFINE_integer('warmup', 3, None),
      'steps': flags.DEFINE_integer('steps', 3, 'profiled steps'),
      'top': flags.DEFINE_integer('top', 25, 'operations listed'),
      'out': flags.DEFINE_string('out', '', 'write everything as JSON here'),
      'peer': flags.DEFINE_bool(
          'peer', False, 'also profile x-transformers\'s step (torch.profiler, '
          'self CPU time per aten operation, the same kinds; needs torch)'),
      'threads': flags.DEFINE_integer('threads', 0, 'CPUs for both sides '
                                      '(0: all this process may use)'),
  }


def main(argv: Sequence[str], fl: dict) -> dict:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # as before app.run: warnings only
  args = types.SimpleNamespace(**{k: f.value for k, f in fl.items()})

  flag = '--xla_cpu_enable_xprof_traceme'
  if flag not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' +
                               flag).strip()
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  import jax  # pylint: disable=g-import-not-at-top
  # lmx.cli (the flag parser) imported JAX before JAX_PLATFORMS was set, and
  # JAX reads it at import: set the platform again, before the backend
  # starts. XLA_FLAGS is read when the backend starts, so it holds as set.
  jax.config.update('jax_platforms', os.environ['JAX_PLATFORMS'])
  from bench import train_throughput  # pylint: disable=g-import-not-at-top
  cpus = train_throughput._pin(args.threads or None)  # pylint: disable=protected-access

  runner = train_throughput.LmxRunner(
      train_throughput.lmx_config(args.position, args.dtype), args.warmup)
  wall = [runner.time(args.steps) for _ in range(3)]
  hlo_text = runner.step.lower(runner.state, runner.batch).compile().as_text()
  hlo = parse_hlo(hlo_text)
  logdir = tempfile.mkdtemp(prefix='lmx_profile_')
  try:
    jax.profiler.start_trace(logdir)
    runner.time(args.steps)
    jax.profiler.stop_trace()
    events = _trace_events(logdir)
  finally:
    shutil.rmtree(logdir, ignore_errors=True)
  result = summarize(events, hlo, args.steps)
  step_ms = statistics.median(wall) * 1e3
  result.update(position=args.position, dtype=args.dtype,
                step_ms=step_ms, platform=jax.default_backend(),
                matched_events=sum(1 for e in events if e.get('name') in hlo))
  if not result['ops']:
    sys.exit('error: no trace event matched an HLO instruction; is this '
             'XLA:CPU (the per-operation events are a CPU feature)?')

  print(f'{args.position}, {args.dtype}: step {step_ms:.1f} ms (median of 3 '
        f'x {args.steps} steps, unprofiled); operations sum to '
        f'{result["total_ms"]:.1f} ms per step\n')
  print('| kind | ms / step | share |\n|---|---:|---:|')
  for k in KINDS:
    ms = result['kinds'][k]
    print(f'| {k} | {ms:.1f} | {ms / result["total_ms"]:.0%} |')
  print('\n| ms / step | operation | kind | shape | from | fused |\n'
        '|---:|---|---|---|---|---|')
  for r in result['ops'][:args.top]:
    print(f'| {r["ms"]:.2f} | {r["name"]} | {r["kind"]} | {r["shape"]} | '
          f'{r["op_name"][-60:]} | {",".join(r["fused"])[:50]} |')
  if args.peer:
    result['peer'] = peer = profile_peer(train_throughput, args, len(cpus))
    print(f'\nx-transformers, {args.dtype}: step {peer["step_ms"]:.1f} ms '
          f'(median of 3 x {args.steps} steps, unprofiled); operations (self '
          f'CPU time) sum to {sum(peer["kinds"].values()):.1f} ms per step\n')
    print(side_by_side(result, peer))
    print('\n| ms / step | aten operation | kind |\n|---:|---|---|')
    for name, k, ms in peer['ops'][:args.top]:
      print(f'| {ms:.2f} | {name} | {k} |')
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=1)
  return result


def profile_peer(train_throughput, args, threads: int) -> dict:
  """x-transformers's step of ``bench/train_throughput.py`` (the same
  model), timed unprofiled (median of 3) and then profiled: per kind and
  per aten operation, self CPU time per step."""
  torch = train_throughput.TorchChild('cpu', threads, args.dtype)
  try:
    torch(op='build', position=args.position, warmup=args.warmup)
    wall = [torch(op='time', position=args.position,
                  steps=args.steps)['seconds'] for _ in range(3)]
    out = torch(op='profile', position=args.position, steps=args.steps)
  finally:
    torch.close()
  out['step_ms'] = statistics.median(wall) * 1e3
  return out


def side_by_side(lmx_result: dict, peer: dict) -> str:
  """Both sides' milliseconds per step by kind, as a markdown table."""
  rows = ['| kind | lmx ms / step | x-transformers ms / step |',
          '|---|---:|---:|']
  for k in KINDS:
    rows.append(f'| {k} | {lmx_result["kinds"].get(k, 0.0):.1f} | '
                f'{peer["kinds"].get(k, 0.0):.1f} |')
  rows.append(f'| step (wall, unprofiled) | {lmx_result["step_ms"]:.1f} | '
              f'{peer["step_ms"]:.1f} |')
  return '\n'.join(rows)


if __name__ == '__main__':
  _FLAGS = _define_flags()
  app.run(cli.timed(main, _FLAGS),
          flags_parser=cli.parse_flags)
