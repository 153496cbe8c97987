r"""Training throughput of every position encoding's config, relative to
ALiBi's.

    python bench/encoding_throughput.py --steps=5 --repeats=5 \
        --out=runs/encoding_throughput.json
    python bench/encoding_throughput.py --configs=alibi,txl,hwfa \
        --size=tiny --steps=2 --repeats=3

A row is ``configs/<name>.py`` (at ``--size``), so it is what ``python
train.py --config=configs/<name>.py`` trains: every registered encoding's
config by default, plus CAPE, HWFA, iRoPE, log-n, SSMax, RNoPE-SWA,
SWAN-GPT, DAPE, gated attention and stick-breaking (``EXTRA_CONFIGS``).
Each config's real train step (``lmx.training.trainer.make_train_step``:
forward, backward, AdamW) runs on one
fixed batch of random tokens, so the data pipeline is not timed. A repeat is
``--steps`` steps after ``--warmup`` untimed ones (compilation is in the
warmup). Repeats go round the configs in turn (ALiBi, the next, ...,
ALiBi, ...), so the load other processes put on the machine falls on all of
them alike; a row's figure is its median tokens/s over the repeats, and its
ratio is that median over ALiBi's. The ratios are the figures to read on a
shared machine: tokens/s moves with the load, the ratios much less.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

REFERENCE = 'alibi'


EXTRA_CONFIGS = ('cape', 'hwfa', 'irope', 'logn', 'ssmax', 'rnope_swa', 'swan',
                 'dape', 'gated', 'stickbreaking')


def load(name: str, size: str):
  """``configs/<name>.py`` at ``size``."""
  from lmx import cli  # pylint: disable=g-import-not-at-top
  return cli.load_config_file(f'configs/{name}.py:size={size}')


def measure(configs: dict, steps: int, repeats: int, warmup: int,
            log=print) -> list[dict]:
  """Rows ``{config, params, tokens_per_s, vs_alibi, ...}`` of ``configs``
  (name -> ConfigDict); ``REFERENCE`` (ALiBi) must be one of them, and
  is measured first."""
  from bench import train_throughput  # pylint: disable=g-import-not-at-top
  if REFERENCE not in configs:
    raise ValueError(f'The reference {REFERENCE!r} is not among the configs.')
  names = [REFERENCE] + [n for n in configs if n != REFERENCE]
  runners = {}
  for name in names:
    t0 = time.perf_counter()
    runners[name] = train_throughput.LmxRunner(configs[name], warmup)
    log(f'{name}: compiled and warmed up in {time.perf_counter() - t0:.1f} s')
  times = {name: [] for name in names}
  for r in range(repeats):
    for name in names:
      times[name].append(runners[name].time(steps))
    log(f'repeat {r + 1}/{repeats} done')
  rows = []
  ref = statistics.median(runners[REFERENCE].tokens / s
                          for s in times[REFERENCE])
  for name in names:
    rates = [runners[name].tokens / s for s in times[name]]
    median = statistics.median(rates)
    rows.append({'config': name, 'params': runners[name].params,
                 'tokens_per_s': median, 'min': min(rates), 'max': max(rates),
                 'vs_alibi': median / ref, 'loss': runners[name].loss})
  return rows


def table(rows) -> str:
  lines = ['| config | params | tokens/s (median) | range | vs ALiBi |',
           '|---|---:|---:|---:|---:|']
  for r in rows:
    lines.append(f"| `{r['config']}` | {r['params']:,} | "
                 f"{r['tokens_per_s']:,.0f} | {r['min']:,.0f}-"
                 f"{r['max']:,.0f} | {r['vs_alibi']:.2f} |")
  return '\n'.join(lines)


def main(argv):
  del argv
  from lmx import positions as positions_lib  # pylint: disable=g-import-not-at-top
  from lmx.errors import ConfigError  # pylint: disable=g-import-not-at-top
  known = list(positions_lib.REGISTRY) + list(EXTRA_CONFIGS)
  wanted = [p.strip() for p in FLAGS.configs if p.strip()] or known
  unknown = [p for p in wanted if p not in known]
  if unknown:
    raise app.UsageError(
        f'--configs: unknown config(s) {", ".join(unknown)}; valid: '
        f'{", ".join(known)}', exitcode=2)
  for name, value in (('steps', FLAGS.steps), ('repeats', FLAGS.repeats)):
    if value < 1:
      raise app.UsageError(f'--{name} must be at least 1, got {value}.',
                           exitcode=2)
  try:
    configs = {name: load(name, FLAGS.size)
               for name in dict.fromkeys([REFERENCE] + wanted)}
  except ConfigError as e:
    raise app.UsageError(str(e), exitcode=2) from None
  rows = measure(configs, FLAGS.steps, FLAGS.repeats, FLAGS.warmup)
  print(table(rows))
  if FLAGS.out:
    from lmx import cli  # pylint: disable=g-import-not-at-top
    cli.write_results(FLAGS.out, {'size': FLAGS.size, 'steps': FLAGS.steps,
                                  'repeats': FLAGS.repeats, 'rows': rows},
                      indent=2)


FLAGS = flags.FLAGS
if __name__ == '__main__':
  flags.DEFINE_list('configs', [], 'configs/<name>.py to time (default: '
                    "every encoding's, and " + ', '.join(EXTRA_CONFIGS)
                    + '); ALiBi is always timed, as reference')
  flags.DEFINE_string('size', 'default', 'the size of every config')
  flags.DEFINE_integer('steps', 5, 'timed steps per repeat')
  flags.DEFINE_integer('repeats', 5, 'repeats (median over them)')
  flags.DEFINE_integer('warmup', 2, 'untimed steps first (compilation)')
  flags.DEFINE_string('out', '', 'write the rows as JSON here')
  app.run(main)
