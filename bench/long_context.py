"""Long-context evaluation cost: the dense and chunked attention backends, and
LM-Infinite's Lambda-shaped mask.

    python bench/long_context.py --out=runs/long_context.json

What is measured, for the default model of configs/rope.py and
configs/alibi.py (d_model 128, 4 layers, 4 heads, freshly initialised:
the cost does not depend on the weights):

* A forward evaluation: the jitted per-token loss of one sequence (batch 1)
  of random bytes, through ``lmx.evaluation.runner.make_loss_fn``, the function
  ``eval.py`` uses. Compile time is reported apart; the run time is the
  median of ``--repeats`` calls (``--long_repeats`` from 32k tokens on).
* Peak memory, two ways, each case in a fresh subprocess:
  - ``rss``: the child's peak resident set (``resource.getrusage``
    ``ru_maxrss``), absolute and minus that of a baseline child that only
    imports lmx and initialises the same model (so the delta includes XLA's
    compiler, the buffers and the runtime; it is host memory, so on a GPU it
    says little and the device's ``peak_bytes_in_use`` is reported too);
  - ``xla``: the compiled executable's ``memory_analysis()``: temporaries
    plus arguments plus outputs, XLA's own account of the buffers.
* Dense attention materialises ``[heads, T, T]`` float32 logits per layer. A
  dense case is compiled (which allocates nothing) and run only if XLA's
  buffer estimate is within ``--dense_budget_gb``; otherwise the table says
  it was skipped and gives the estimate.
* LM-Infinite (Han et al. 2023) at ``--lminf_length`` tokens: the chunked
  backend with full causal attention against the Lambda-shaped mask
  (``--lminf_global`` global tokens, ``--lminf_local`` local ones), without
  and with the distance limit (``--lminf_limit``), on the rope model. The
  paper reports a 3.16x encoding speedup at 32k tokens for its setting (a
  real LLM on a GPU); the number here is for this small model on this
  machine and is printed next to it, not as the same experiment.

Writes a markdown table to stdout and everything to ``--out`` (JSON).
Runs on a GPU too (``JAX_PLATFORMS`` picks the platform).
"""

from __future__ import annotations

import json
import os
import platform
import resource
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
from lmx.errors import ConfigError  # pylint: disable=g-import-not-at-top

PAPER_SPEEDUP = 3.16   # LM-Infinite, encoding 32k tokens (Han et al. 2023)
MB = 2 ** 20
GB = 2 ** 30


# ------------------------------------------------------------------ a case


def _config(case: dict):
  import importlib  # pylint: disable=g-import-not-at-top
  from lmx.config import validate as config_lib  # pylint: disable=g-import-not-at-top
  cfg = importlib.import_module(f'configs.{case["position"]}').get_config()
  cfg.model.attention = case.get('backend', 'chunked')
  cfg.model.attention_block = case['block']
  for key, value in case.get('lm_infinite', {}).items():
    cfg.model.lm_infinite[key] = value
  config_lib.validate(cfg)
  return cfg


def _peak_rss() -> int:
  """This process's peak resident set in bytes (ru_maxrss is in KiB on
  Linux, bytes on macOS)."""
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return rss if sys.platform == 'darwin' else rss * 1024


def run_case(case: dict) -> dict:
  """One measurement, in this (fresh) process."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from lmx.evaluation import runner as evaluation  # pylint: disable=g-import-not-at-top
  from lmx.training import run_state

  cfg = _config(case)
  graphdef, params = run_state.init_model(cfg)
  params = jax.block_until_ready(jax.device_put(params))
  out = {'case': case, 'platform': jax.default_backend()}
  if case.get('baseline'):
    out['peak_rss'] = _peak_rss()
    return out

  t = case['length']
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 256, (1, t + 1)).astype(np.int32)
  x, y = tokens[:, :-1], tokens[:, 1:]
  pos = np.arange(t, dtype=np.int32)[None]
  token_losses = evaluation.make_loss_fn(graphdef)

  start = time.perf_counter()
  compiled = token_losses.lower(params, x, pos, y).compile()
  out['compile_s'] = time.perf_counter() - start
  mem = compiled.memory_analysis()
  if mem is not None:
    out['xla_bytes'] = int(mem.temp_size_in_bytes + mem.argument_size_in_bytes
                           + mem.output_size_in_bytes)
    out['xla_temp_bytes'] = int(mem.temp_size_in_bytes)
  budget = case.get('budget_bytes')
  if budget and out.get('xla_bytes', 0) > budget:
    out['skipped'] = (f'XLA needs {out["xla_bytes"] / GB:.1f} GB of buffers, '
                      f'over the {budget / GB:.1f} GB budget '
                      '(--dense_budget_gb); compiled, not run')
    return out

  times, loss = [], None
  for _ in range(case['repeats']):
    start = time.perf_counter()
    losses = np.asarray(compiled(params, x, pos, y))
    times.append(time.perf_counter() - start)
    loss = float(losses.mean())
  out.update(times_s=times, median_s=statistics.median(times), loss=loss,
             tokens_per_s=t / statistics.median(times),
             peak_rss=_peak_rss())
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    stats = {}
  if out['platform'] != 'cpu' and 'peak_bytes_in_use' in stats:
    out['device_peak_bytes'] = int(stats['peak_bytes_in_use'])
  return out


def spawn(case: dict, timeout: float) -> dict:
  """``run_case`` in a fresh interpreter; its result, or the error."""
  cmd = [sys.executable, os.path.abspath(__file__), '--case', json.dumps(case)]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, check=False)
  except subprocess.TimeoutExpired:
    return {'case': case, 'error': f'timed out after {timeout:.0f} s'}
  for line in proc.stdout.splitlines()[::-1]:
    if line.startswith('RESULT '):
      return json.loads(line[len('RESULT '):])
  tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
  return {'case': case, 'error': f'exit {proc.returncode}: ' + ' | '.join(tail)}


# ------------------------------------------------------------------ report


def _fmt(x, scale=1.0, digits=2, unit=''):
  return '-' if x is None else f'{x / scale:.{digits}f}{unit}'


def _label(n: int) -> str:
  return f'{n // 1024}k' if n % 1024 == 0 else str(n)


def markdown(results: dict) -> str:
  lines = []
  base = results['baseline_rss']
  lines.append('| model | backend | tokens | compile s | eval s (median) | '
               'tokens/s | peak RSS MB | RSS - baseline MB | XLA buffers MB |')
  lines.append('|---|---|---:|---:|---:|---:|---:|---:|---:|')
  for r in results['cases']:
    c = r['case']
    if 'error' in r:
      lines.append(f'| {c["position"]} | {c["backend"]} | '
                   f'{_label(c["length"])} | error: {r["error"]} ||||||')
      continue
    if 'skipped' in r:
      lines.append(f'| {c["position"]} | {c["backend"]} | '
                   f'{_label(c["length"])} | {_fmt(r["compile_s"])} | '
                   f'skipped: {r["skipped"]} | | | | '
                   f'{_fmt(r.get("xla_bytes"), MB, 0)} |')
      continue
    rss = r['peak_rss']
    lines.append(
        f'| {c["position"]} | {c["backend"]} | {_label(c["length"])} | '
        f'{_fmt(r["compile_s"])} | {_fmt(r["median_s"], digits=3)} | '
        f'{r["tokens_per_s"]:,.0f} | {_fmt(rss, MB, 0)} | '
        f'{_fmt(rss - base, MB, 0)} | {_fmt(r.get("xla_bytes"), MB, 0)} |')
  lines.append('')
  lines.append('Chunked memory per 4x tokens (linear: about 4 or less, '
               'quadratic: 16):')
  lines.append('')
  lines.append('| model | tokens | RSS - baseline ratio | XLA buffers ratio |')
  lines.append('|---|---|---:|---:|')
  for row in results['chunked_growth']:
    lines.append(f'| {row["position"]} | {_label(row["from"])} -> '
                 f'{_label(row["to"])} | {_fmt(row["rss_ratio"])} | '
                 f'{_fmt(row["xla_ratio"])} |')
  for line in results['fits']:
    lines.append('')
    lines.append(line)
  lm = results.get('lm_infinite')
  if lm:
    lines.append('')
    lines.append(f'LM-Infinite encoding at {_label(lm["length"])} tokens '
                 f'({lm["position"]} model, chunked backend, tile '
                 f'{lm["block"]}): n_global={lm["n_global"]}, '
                 f'n_local={lm["n_local"]}, distance_limit={lm["limit"]}.')
    lines.append('')
    lines.append('| attention | eval s (median) | speedup over causal |')
    lines.append('|---|---:|---:|')
    for name, row in lm['rows'].items():
      lines.append(f'| {name} | {_fmt(row.get("median_s"), digits=2)} | '
                   f'{_fmt(row.get("speedup"))}x |')
    lines.append(f'| LM-Infinite paper (its own model and GPU, not these '
                 f'settings) | | {PAPER_SPEEDUP}x |')
  return '\n'.join(lines)


def growth(cases: list, base: int) -> list:
  rows = []
  by_model = {}
  for r in cases:
    c = r['case']
    if c['backend'] == 'chunked' and 'median_s' in r:
      by_model.setdefault(c['position'], []).append(r)
  for position, rs in by_model.items():
    rs.sort(key=lambda r: r['case']['length'])
    for a, b in zip(rs, rs[1:]):
      rows.append({
          'position': position, 'from': a['case']['length'],
          'to': b['case']['length'],
          'rss_ratio': (b['peak_rss'] - base) / max(a['peak_rss'] - base, 1),
          'xla_ratio': (b['xla_bytes'] / a['xla_bytes']
                        if a.get('xla_bytes') and b.get('xla_bytes')
                        else None)})
  return rows


# -------------------------------------------------------------------- main


def _define_flags() -> dict:
  """The command's flags; defined only when it runs as a program, so
  importing this module defines none. ``--case`` is the script's own
  argument to the subprocess of a case (``spawn``), so ``--help`` leaves it
  out (``--helpfull`` lists it)."""
  return {
      'case': flags.DEFINE_string(
          'case', None, 'Internal: one case as JSON, measured in this process '
          '(the subprocesses of spawn).',
          module_name='bench.long_context.internal'),
      'positions': flags.DEFINE_list('positions', 'rope,alibi', None),
      'lengths': flags.DEFINE_list('lengths', '1024,4096,16384,65536', None),
      'backends': flags.DEFINE_list('backends', 'dense,chunked', None),
      'block': flags.DEFINE_integer(
          'block', 512, 'config.model.attention_block (chunked tile)'),
      'repeats': flags.DEFINE_integer('repeats', 3, None),
      'long_repeats': flags.DEFINE_integer('long_repeats', 1,
                                           'repeats from 32k tokens on'),
      'dense_budget_gb': flags.DEFINE_float(
          'dense_budget_gb', None,
          'skip dense cases whose XLA buffers exceed this '
          '(default: half the available memory)'),
      'lminf_length': flags.DEFINE_integer('lminf_length', 32768, None),
      'lminf_global': flags.DEFINE_integer('lminf_global', 10, None),
      'lminf_local': flags.DEFINE_integer('lminf_local', 4086, None),
      'lminf_limit': flags.DEFINE_integer('lminf_limit', 4096, None),
      'lminf_repeats': flags.DEFINE_integer('lminf_repeats', 3, None),
      'timeout': flags.DEFINE_float('timeout', 900.0, 'seconds per case'),
      'out': flags.DEFINE_string('out', '', None),
  }


def main(argv: Sequence[str], fl: dict) -> int | None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # as before app.run: warnings only
  args = types.SimpleNamespace(**{k: f.value for k, f in fl.items()})
  if args.case:
    print('RESULT ' + json.dumps(run_case(json.loads(args.case))), flush=True)
    return None

  budget_gb = args.dense_budget_gb
  if budget_gb is None:
    try:
      avail = os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (ValueError, OSError):
      avail = 8 * GB
    budget_gb = avail / 2 / GB
  positions = args.positions
  try:
    lengths = cli.int_list(args.lengths, '--lengths') or []
  except ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  started = time.time()

  baseline = spawn({'position': positions[0], 'block': args.block,
                    'baseline': True}, args.timeout)
  if 'error' in baseline:
    sys.exit(f'baseline failed: {baseline["error"]}')
  base = baseline['peak_rss']
  print(f'baseline (imports + initialised model): {base / MB:.0f} MB, '
        f'platform {baseline["platform"]}', flush=True)

  cases = []
  for position in positions:
    for length in lengths:
      for backend in args.backends:
        case = {'position': position, 'backend': backend, 'length': length,
                'block': args.block,
                'repeats': args.repeats if length < 32768 else
                           args.long_repeats}
        if backend == 'dense':
          case['budget_bytes'] = int(budget_gb * GB)
        r = spawn(case, args.timeout)
        cases.append(r)
        print(f'  {position} {backend} {length}: ' + (
            r.get('error') or r.get('skipped') or
            f'{r["median_s"]:.3f} s, peak RSS {r["peak_rss"] / MB:.0f} MB'),
              flush=True)

  fits = []
  for r in cases:
    c = r['case']
    if (c['backend'] == 'chunked' and c['length'] == max(lengths)
        and 'peak_rss' in r):
      verdict = 'fits in' if r['peak_rss'] < 8 * GB else 'does NOT fit in'
      fits.append(f'{c["position"]}: a {_label(c["length"])}-token chunked '
                  f'evaluation peaks at {r["peak_rss"] / GB:.2f} GB resident '
                  f'(the whole process): it {verdict} 8 GB.')

  lm = None
  if args.lminf_length:
    lm = {'length': args.lminf_length, 'position': 'rope',
          'block': args.block, 'n_global': args.lminf_global,
          'n_local': args.lminf_local, 'limit': args.lminf_limit, 'rows': {}}
    settings = {
        'causal (full)': {},
        'Lambda mask': {'n_global': args.lminf_global,
                        'n_local': args.lminf_local},
        'Lambda mask + distance limit': {
            'n_global': args.lminf_global, 'n_local': args.lminf_local,
            'distance_limit': args.lminf_limit},
    }
    for name, lminf in settings.items():
      r = spawn({'position': 'rope', 'backend': 'chunked',
                 'length': args.lminf_length, 'block': args.block,
                 'repeats': args.lminf_repeats, 'lm_infinite': lminf},
                args.timeout)
      lm['rows'][name] = r
      print(f'  LM-Infinite {name}: ' + (
          r.get('error') or f'{r["median_s"]:.2f} s'), flush=True)
    causal = lm['rows']['causal (full)'].get('median_s')
    for row in lm['rows'].values():
      if causal and row.get('median_s'):
        row['speedup'] = causal / row['median_s']

  import jax  # pylint: disable=g-import-not-at-top
  results = {
      'command': ' '.join(['python', 'bench/long_context.py'] + sys.argv[1:]),
      'machine': {'platform': baseline['platform'],
                  'processor': platform.processor() or platform.machine(),
                  'cpus': len(os.sched_getaffinity(0))
                          if hasattr(os, 'sched_getaffinity')
                          else os.cpu_count(),
                  'jax': jax.__version__},
      'memory_method': 'peak RSS (ru_maxrss) of a fresh subprocess per case, '
                       'and minus a baseline subprocess; XLA memory_analysis '
                       '(temp + arguments + outputs)',
      'dense_budget_gb': budget_gb,
      'baseline_rss': base, 'cases': cases,
      'chunked_growth': growth(cases, base), 'fits': fits,
      'lm_infinite': lm, 'paper_speedup': PAPER_SPEEDUP,
      'total_s': time.time() - started}
  print()
  print(markdown(results))
  print(f'\n(total {results["total_s"]:.0f} s on {results["machine"]})')
  if args.out:
    cli.write_results(args.out, results)
  return None


if __name__ == '__main__':
  _FLAGS = _define_flags()
  app.run(lambda argv: main(argv, _FLAGS), flags_parser=cli.parse_flags)
