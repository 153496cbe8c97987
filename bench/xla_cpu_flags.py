r"""XLA:CPU's optional paths on lmx's train step and its long evaluation: each
``XLA_FLAGS`` setting against the default, in alternating child runs.

    python bench/xla_cpu_flags.py --rounds=3 --out=runs/xla_cpu_flags.json
    python bench/xla_cpu_flags.py --bench=long --length=16384 --rounds=3

``--bench=long`` times instead ``bench/long_peer.py --no-torch`` at
``--length`` tokens (one forward pass with per-token loss of configs/rope.py's
default model, the chunked backend), tokens/s likewise against the default.

Each round runs ``bench/train_throughput.py --no-torch`` (the real train
step, the benchmark's fixed model: width 256, 4 layers, T 256, batch 16) once
with the default flags and once with each setting, in that order, each in a
fresh process (XLA reads ``XLA_FLAGS`` when its backend starts). A setting's
figure is the median over rounds of its tokens/s divided by the same round's
default run, so drift of the machine between rounds cancels; the default's
own spread is printed beside it. The settings are the oneDNN, XNNPACK and
YNNPACK paths for dots, elementwise fusions and reductions that the
installed jaxlib offers (``--xla_cpu_experimental_{onednn,xnn,ynn}_fusion_type``
with ``dot``, ``eltwise``, ``reduce``; ``--xla_cpu_experimental_onednn_
custom_call``; ``--xla_cpu_use_xnnpack``), and the vector width. With
``--bench=long`` every run, the default's too, has lmx's default flags for
evaluation (``lmx.model.xla_cpu.default_flags``: 512-bit vectors on an
AVX-512 CPU) unless the setting names the same flag; the train step runs
with XLA's own defaults, as train.py does.

``--hlo`` reports instead what each setting does to the compiled step: the
number of dots and of each library fusion (``__ynn_fusion``,
``__xnn_fusion``, oneDNN's) and custom call in the optimized HLO of the
same train step, each compiled in a fresh process.

A setting that fails to compile or run is reported with its error, not
dropped. Numerics are not checked here: a setting worth adopting must then
pass the golden losses (tests/test_golden.py) under it.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from typing import Sequence

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> XLA_FLAGS (appended to whatever the environment sets).
SETTINGS = {
    'xnn dot': '--xla_cpu_experimental_xnn_fusion_type=dot',
    'xnn dot,eltwise': '--xla_cpu_experimental_xnn_fusion_type=dot,eltwise',
    'xnn eltwise,reduce':
        '--xla_cpu_experimental_xnn_fusion_type=eltwise,reduce',
    'ynn dot': '--xla_cpu_experimental_ynn_fusion_type=dot',
    'ynn dot,eltwise,reduce':
        '--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce',
    'onednn dot': '--xla_cpu_experimental_onednn_fusion_type=dot',
    'onednn custom call': '--xla_cpu_experimental_onednn_custom_call=true',
    'no xnnpack': '--xla_cpu_use_xnnpack=false',
    'no ynnpack': '--xla_cpu_experimental_ynn_fusion_type=',
    # lmx's default for evaluation on an AVX-512 CPU is 512 (lmx.model.
    # xla_cpu.default_flags); XLA's, and training's, 256.
    'vector width 512': '--xla_cpu_prefer_vector_width=512',
    'vector width 256': '--xla_cpu_prefer_vector_width=256',
}


def run_once(xla_flags: str, position: str, steps: int, repeats: int,
             dtype: str, bench: str = 'train', length: int = 16384) -> dict:
  """tokens/s of one child run of bench/train_throughput.py (``bench``
  'train') or bench/long_peer.py ('long', at ``length`` tokens), or its
  error."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' ' + xla_flags).strip()
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'r.json')
    if bench == 'long':
      args = [os.path.join(ROOT, 'bench', 'long_peer.py'), '--no-torch',
              f'--lengths={length}', f'--repeats={repeats}', f'--out={out}']
    else:
      args = [os.path.join(ROOT, 'bench', 'train_throughput.py'),
              '--no-torch', f'--positions={position}', f'--steps={steps}',
              f'--repeats={repeats}', f'--dtype={dtype}', f'--out={out}']
    proc = subprocess.run([sys.executable, *args], env=env,
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
      tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
      return {'error': ' | '.join(tail)}
    with open(out) as f:
      result = json.load(f)
  if bench == 'long':
    return {'tokens_per_second':
            result['results'][str(length)]['lmx']['tokens_per_s']}
  row = result['results'][position]
  return {'tokens_per_second': row['lmx']['tokens_per_second']}


def step_hlo_counts() -> dict:
  """Dots, library fusions and custom calls in the optimized HLO of the
  benchmark's train step, compiled under this process's ``XLA_FLAGS``."""
  import collections  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, ROOT)
  from bench import train_throughput  # pylint: disable=g-import-not-at-top
  from lmx.config import validate as config_lib  # pylint: disable=g-import-not-at-top
  from lmx.training import run_state, trainer  # pylint: disable=g-import-not-at-top
  c = train_throughput.lmx_config('alibi', 'float32')
  c = c.copy_and_resolve_references()
  config_lib.validate(c)
  tx = run_state.make_optimizer(c.train)
  graphdef, params = run_state.init_model(c)
  state = run_state.init_state(c, params, tx)
  step = trainer.make_train_step(graphdef, tx, c)
  b, t = int(c.train.batch_size), int(c.train.seq_len)
  batch = {'inputs': jnp.zeros((b, t), jnp.int32),
           'targets': jnp.zeros((b, t), jnp.int32),
           'positions': jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32),
                                         (b, t))}
  text = step.lower(state, batch).compile().as_text()
  # One per fusion instruction: its backend config names the library.
  fusions = collections.Counter(
      re.findall(r'"fusion_config":\{"kind":"(__\w+?_fusion)"', text))
  return {'dots': len(re.findall(r' dot\(', text)),
          'library_fusions': dict(fusions),
          'custom_calls': dict(collections.Counter(
              re.findall(r'custom_call_target="([^"]+)"', text)))}


def hlo_table(names: Sequence[str]) -> str:
  """``step_hlo_counts`` under each setting, each in a fresh process."""
  lines = ['| setting | dots | library fusions | custom calls |',
           '|---|---|---|---|']
  for name in ['default'] + list(names):
    env = dict(os.environ)
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' '
                        + SETTINGS.get(name, '')).strip()
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), '--hlo_child'], env=env,
        capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
      lines.append(f'| {name} | fails | | |')
      continue
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    lines.append(f'| {name} | {got["dots"]} | {got["library_fusions"]} | '
                 f'{got["custom_calls"]} |')
  return '\n'.join(lines)


def main(argv: Sequence[str], fl: dict) -> dict:
  del argv
  if fl['hlo_child'].value:
    print(json.dumps(step_hlo_counts()))
    return {}
  names = [n for n in SETTINGS if not fl['only'].value
           or n in fl['only'].value]
  if fl['hlo'].value:
    print(hlo_table(names))
    return {}
  runs = {name: [] for name in ['default'] + names}
  bench = dict(bench=fl['bench'].value, length=fl['length'].value)
  for r in range(fl['rounds'].value):
    base = run_once('', fl['position'].value, fl['steps'].value,
                    fl['repeats'].value, fl['dtype'].value, **bench)
    runs['default'].append(base)
    print(f'round {r + 1}: default {base}', flush=True)
    for name in names:
      got = run_once(SETTINGS[name], fl['position'].value, fl['steps'].value,
                     fl['repeats'].value, fl['dtype'].value, **bench)
      if 'tokens_per_second' in got and 'tokens_per_second' in base:
        got['ratio'] = got['tokens_per_second'] / base['tokens_per_second']
      runs[name].append(got)
      print(f'round {r + 1}: {name} {got}', flush=True)
  summary = {}
  for name, rows in runs.items():
    errors = [x['error'] for x in rows if 'error' in x]
    rates = [x['tokens_per_second'] for x in rows if 'tokens_per_second' in x]
    ratios = [x['ratio'] for x in rows if 'ratio' in x]
    summary[name] = {
        'flags': SETTINGS.get(name, ''),
        'tokens_per_second': statistics.median(rates) if rates else None,
        'ratio_to_default': statistics.median(ratios) if ratios else None,
        'ratios': ratios, 'errors': errors[:1]}
  what = (f'long evaluation at {fl["length"].value} tokens (configs/rope.py, '
          'chunked, float32)' if fl['bench'].value == 'long' else
          f'train step, {fl["position"].value}, {fl["dtype"].value}')
  lines = [f'machine: {platform.processor() or platform.machine()}, '
           f'{os.cpu_count()} CPUs; {what}, median of {fl["rounds"].value} '
           'rounds',
           '', '| setting | tokens/s | vs default (same round) |',
           '|---|---|---|']
  for name, s in summary.items():
    if s['errors'] and s['tokens_per_second'] is None:
      lines.append(f'| {name} | fails: {s["errors"][0][:80]} | |')
      continue
    ratio = ('' if s['ratio_to_default'] is None else
             f'{s["ratio_to_default"]:.3f} '
             f'({min(s["ratios"]):.3f}-{max(s["ratios"]):.3f})')
    lines.append(f'| {name} | {s["tokens_per_second"]:,.0f} | {ratio} |')
  print('\n'.join(lines))
  if fl['out'].value:
    if ROOT not in sys.path:
      sys.path.insert(0, ROOT)
    from lmx import cli  # pylint: disable=g-import-not-at-top
    cli.write_results(fl['out'].value, {'runs': runs, 'summary': summary})
  return summary


def _define_flags() -> dict:
  return {
      'rounds': flags.DEFINE_integer('rounds', 3, 'alternating rounds'),
      'bench': flags.DEFINE_enum('bench', 'train', ('train', 'long'),
                                 'the train step or the long evaluation'),
      'length': flags.DEFINE_integer('length', 16384, 'tokens of the long '
                                     'evaluation (--bench=long)'),
      'position': flags.DEFINE_string('position', 'alibi', 'the encoding'),
      'steps': flags.DEFINE_integer('steps', 3, 'timed steps per repeat'),
      'repeats': flags.DEFINE_integer('repeats', 3, 'repeats per run'),
      'dtype': flags.DEFINE_enum('dtype', 'float32',
                                 ('float32', 'bfloat16'), None),
      'only': flags.DEFINE_list('only', [], 'settings to run (default all)'),
      'out': flags.DEFINE_string('out', '', 'write the results as JSON'),
      'hlo': flags.DEFINE_bool('hlo', False, 'what each setting does to the '
                               'compiled step, instead of timing it'),
      'hlo_child': flags.DEFINE_bool('hlo_child', False, 'internal: print '
                                     'the counts of this process'),
  }


if __name__ == '__main__':
  _FLAGS = _define_flags()
  app.run(lambda argv: None if main(argv, _FLAGS) is None else None)
