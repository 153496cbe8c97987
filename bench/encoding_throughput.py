r"""Training throughput of every position encoding, relative to ALiBi.

    python bench/encoding_throughput.py --steps=5 --repeats=5 \
        --out=runs/encoding_throughput.json
    python bench/encoding_throughput.py --positions=alibi,txl,sandwich \
        --config=configs/base.py:size=tiny --steps=2 --repeats=3

The model is the default one (``configs/base.py``, or ``--config``) with
each encoding's own defaults, so a row is what ``python train.py
--config=configs/<name>.py`` trains. Each encoding's real train step
(``lmx.trainer.make_train_step``: forward, backward, AdamW) runs on one
fixed batch of random tokens, so the data pipeline is not timed. A repeat is
``--steps`` steps after ``--warmup`` untimed ones (compilation is in the
warmup). Repeats go round the encodings in turn (ALiBi, the next, ...,
ALiBi, ...), so the load other processes put on the machine falls on all of
them alike; a row's figure is its median tokens/s over the repeats, and its
ratio is that median over ALiBi's. The ratios are the figures to read on a
shared machine: tokens/s moves with the load, the ratios much less.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

REFERENCE = 'alibi'


def runner(config, position: str, warmup: int):
  """``position``'s train step on ``config`` with that encoding's
  defaults (``bench.train_throughput.LmxRunner``)."""
  from bench import train_throughput  # pylint: disable=g-import-not-at-top
  c = config.copy_and_resolve_references()
  c.model.position = position
  return train_throughput.LmxRunner(c, warmup)


def measure(config, positions, steps: int, repeats: int, warmup: int,
            log=print) -> list[dict]:
  """Rows ``{position, params, tokens_per_s, vs_alibi, ...}``; ALiBi is
  always measured (first), as the reference."""
  names = [REFERENCE] + [p for p in positions if p != REFERENCE]
  runners = {}
  for name in names:
    t0 = time.perf_counter()
    runners[name] = runner(config, name, warmup)
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
    rows.append({'position': name, 'params': runners[name].params,
                 'tokens_per_s': median, 'min': min(rates), 'max': max(rates),
                 'vs_alibi': median / ref, 'loss': runners[name].loss})
  return rows


def table(rows) -> str:
  lines = ['| encoding | params | tokens/s (median) | range | vs ALiBi |',
           '|---|---:|---:|---:|---:|']
  for r in rows:
    lines.append(f"| `{r['position']}` | {r['params']:,} | "
                 f"{r['tokens_per_s']:,.0f} | {r['min']:,.0f}-"
                 f"{r['max']:,.0f} | {r['vs_alibi']:.2f} |")
  return '\n'.join(lines)


def main(argv):
  del argv
  from lmx import cli  # pylint: disable=g-import-not-at-top
  from lmx import positions as positions_lib  # pylint: disable=g-import-not-at-top
  wanted = [p.strip() for p in FLAGS.positions if p.strip()] or list(
      positions_lib.REGISTRY)
  unknown = [p for p in wanted if p not in positions_lib.REGISTRY]
  if unknown:
    raise app.UsageError(
        f'--positions: unknown encoding(s) {", ".join(unknown)}; valid: '
        f'{", ".join(positions_lib.REGISTRY)}', exitcode=2)
  for name, value in (('steps', FLAGS.steps), ('repeats', FLAGS.repeats)):
    if value < 1:
      raise app.UsageError(f'--{name} must be at least 1, got {value}.',
                           exitcode=2)
  config = cli.load_config_file(FLAGS.config)
  rows = measure(config, wanted, FLAGS.steps, FLAGS.repeats, FLAGS.warmup)
  print(table(rows))
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, 'w') as f:
      json.dump({'config': FLAGS.config, 'steps': FLAGS.steps,
                 'repeats': FLAGS.repeats, 'rows': rows}, f, indent=2)


FLAGS = flags.FLAGS
if __name__ == '__main__':
  flags.DEFINE_list('positions', [], 'encodings to time (default: every '
                    'registered one); ALiBi is always timed, as reference')
  flags.DEFINE_string('config', 'configs/base.py', 'config file[:arg]')
  flags.DEFINE_integer('steps', 5, 'timed steps per repeat')
  flags.DEFINE_integer('repeats', 5, 'repeats (median over them)')
  flags.DEFINE_integer('warmup', 2, 'untimed steps first (compilation)')
  flags.DEFINE_string('out', '', 'write the rows as JSON here')
  app.run(main)
