r"""What a checkpoint costs the training loop, at keep_checkpoints 3 and 10.

    python bench/checkpoint_save.py --config=configs/alibi.py \
        --config.train.batch_size=8 --d_model=384 --steps=64 \
        --checkpoint_every=2 --keeps=3,10 --repeats=2

(``python -m bench.checkpoint_save`` works too.) Each run is a real
``lmx.training.trainer.train`` of ``--config`` (default ``configs/alibi.py``, the
default size; ``--d_model`` widens it, MLP 4 x d_model, so that a checkpoint
is large enough for hashing it to show) in a fresh temporary workdir, with
a checkpoint every ``--checkpoint_every`` steps. ``lmx.training.checkpoint.Saver`` is
wrapped to time each call of ``Saver.save`` on the loop's thread: waiting
for the previous orbax write, handing it to the sealing thread, pruning,
and starting the next asynchronous write. ``checkpoint.seal`` is wrapped
too, to time the hashing that now runs on the sealing thread.

The claim measured: the loop's time per save does not grow with
``keep_checkpoints`` (kept checkpoints are never hashed again; the pruning
decision reads their files' stats). Runs alternate keep values (3, 10, 3,
10, ...) so the load of other processes on a shared machine hits each. The
table gives, per keep, the median over all saves of all its runs, and over
the steady ones: from the (keep + 2)-th save of a run on, when ``keep``
sealed steps exist and each save also deletes the oldest (orbax's delete
runs on the loop's thread), so both keeps are compared doing the same work.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import types
from typing import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from lmx import cli  # pylint: disable=g-import-not-at-top


def _define_flags() -> dict:
  """The command's flags; defined only when it runs as a program."""
  return {
      'config': config_flags.DEFINE_config_file(
          'config', os.path.join(ROOT, 'configs', 'alibi.py'),
          'config file; --config.<field>=<value> overrides a field'),
      'd_model': flags.DEFINE_integer(
          'd_model', 0, 'model width (MLP 4x); 0: the config\'s'),
      'steps': flags.DEFINE_integer('steps', 60, 'training steps per run'),
      'checkpoint_every': flags.DEFINE_integer('checkpoint_every', 5, None),
      'keeps': flags.DEFINE_list('keeps', ['3', '10'],
                                 'keep_checkpoints values'),
      'repeats': flags.DEFINE_integer('repeats', 2, 'runs per keep value'),
      'cache_dir': flags.DEFINE_string(
          'cache_dir', '', 'data.cache_dir; empty: the config\'s'),
      'out': flags.DEFINE_string('out', '', 'write everything as JSON here'),
  }


def _config(args):
  """``--config`` with the run length, checkpoint interval and width of
  the flags."""
  c = args.config.copy_and_resolve_references()
  if args.d_model:
    c.model.d_model = args.d_model
    c.model.mlp_dim = 4 * args.d_model
  if args.cache_dir:
    c.data.cache_dir = args.cache_dir
  c.train.steps = args.steps
  c.train.warmup_steps = min(c.train.warmup_steps, args.steps - 1)
  c.train.checkpoint_every = args.checkpoint_every
  c.train.log_every = args.steps
  return c


def _dir_bytes(directory: str) -> int:
  return sum(os.path.getsize(os.path.join(root, n))
             for root, _, names in os.walk(directory) for n in names)


def one_run(c, keep: int) -> dict:
  """Trains ``c`` with ``keep_checkpoints=keep`` in a temporary workdir;
  the loop's seconds in each ``Saver.save`` and the sealing thread's in
  each ``seal``."""
  from lmx.training import checkpoint  # pylint: disable=g-import-not-at-top
  from lmx.training import trainer
  c = c.copy_and_resolve_references()
  c.train.keep_checkpoints = keep
  saves, seals = [], []
  real_saver, real_seal = checkpoint.Saver, checkpoint.seal

  class TimedSaver(real_saver):
    def save(self, step, state, meta):
      t0 = time.perf_counter()
      try:
        return super().save(step, state, meta)
      finally:
        saves.append(time.perf_counter() - t0)

  def timed_seal(workdir, step):
    t0 = time.perf_counter()
    real_seal(workdir, step)
    seals.append(time.perf_counter() - t0)

  workdir = tempfile.mkdtemp(prefix='lmx_ckpt_bench_')
  checkpoint.Saver, checkpoint.seal = TimedSaver, timed_seal
  try:
    trainer.train(c, workdir, progress=False)
    kept = checkpoint.all_steps(workdir)
    size = _dir_bytes(checkpoint.step_dir(workdir, kept[-1]))
  finally:
    checkpoint.Saver, checkpoint.seal = real_saver, real_seal
    shutil.rmtree(workdir, ignore_errors=True)
  return {'keep': keep, 'save_s': saves, 'seal_s': seals, 'kept': kept,
          'checkpoint_bytes': size}


def main(argv: Sequence[str], fl: dict) -> dict:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  args = types.SimpleNamespace(**{k: f.value for k, f in fl.items()})
  import jax  # pylint: disable=g-import-not-at-top
  keeps = [int(k) for k in args.keeps]
  c = _config(args)
  runs = []
  for _ in range(args.repeats):
    for keep in keeps:
      runs.append(one_run(c, keep))
  rows = []
  for keep in keeps:
    mine = [r for r in runs if r['keep'] == keep]
    saves = [s for r in mine for s in r['save_s']]
    steady = [s for r in mine for s in r['save_s'][keep + 1:]]
    seals = [s for r in mine for s in r['seal_s']]
    rows.append({'keep': keep, 'saves': len(saves),
                 'save_ms': statistics.median(saves) * 1e3,
                 'steady_saves': len(steady),
                 'steady_ms': (statistics.median(steady) * 1e3 if steady
                               else float('nan')),
                 'save_max_ms': max(saves) * 1e3,
                 'seal_ms': statistics.median(seals) * 1e3,
                 'checkpoint_mb': mine[0]['checkpoint_bytes'] / 2**20,
                 'kept_at_end': len(mine[-1]['kept'])})
  m = c.model
  print(f'\n{c.name}, d_model {m.d_model}, {m.num_layers} layers, '
        f'{args.steps} steps, a checkpoint every {args.checkpoint_every}, '
        f'{args.repeats} run(s) per keep\n')
  print('| keep | saves | loop ms per save (median) | steady saves | '
        'loop ms (median of steady) | max | seal ms (sealing thread, '
        'median) | checkpoint MB | kept at end |\n'
        '|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
  for r in rows:
    print(f'| {r["keep"]} | {r["saves"]} | {r["save_ms"]:.1f} | '
          f'{r["steady_saves"]} | {r["steady_ms"]:.1f} | '
          f'{r["save_max_ms"]:.1f} | {r["seal_ms"]:.1f} | '
          f'{r["checkpoint_mb"]:.1f} | {r["kept_at_end"]} |')
  ratio = rows[-1]['save_ms'] / rows[0]['save_ms']
  steady_ratio = rows[-1]['steady_ms'] / rows[0]['steady_ms']
  print(f'\nloop time per save, keep {rows[-1]["keep"]} / keep '
        f'{rows[0]["keep"]}: {ratio:.2f} (all saves), {steady_ratio:.2f} '
        '(steady saves)')
  machine = (f'{os.cpu_count()}-core {platform.machine()} '
             f'{jax.default_backend().upper()}, jax {jax.__version__}, '
             f'{datetime.date.today().isoformat()}')
  print(f'machine: {machine}')
  result = {'rows': rows, 'ratio': ratio, 'steady_ratio': steady_ratio,
            'runs': runs, 'machine': machine,
            'args': {k: v for k, v in vars(args).items() if k != 'config'},
            'config': c.to_dict()}
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == '__main__':
  _FLAGS = _define_flags()
  app.run(cli.timed(main, _FLAGS),
          flags_parser=cli.parse_flags)
