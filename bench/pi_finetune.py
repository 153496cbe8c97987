r"""Position Interpolation's short fine-tune, measured (Chen et al. 2023).

    python bench/pi_finetune.py --base=runs/rope --factor=2 --steps=200 \
        --out=runs/pi_finetune

From a RoPE run trained at length L, fine-tunes at s*L for the same number
of steps two ways, from the same parameters (the optimizer starts afresh):

* ``pi``: Position Interpolation, ``rope.scaling='linear'``, factor s;
* ``plain``: the control, plain RoPE at s*L, so what PI adds is separated
  from what training at the longer length does anyway.

Then evaluates the loss at L .. 16L (non-overlapping windows) of: the base
run as it is, the base run with PI and no training, and both fine-tuned
runs (each as it was trained). Prints a table and writes ``results.json``
and ``loss_vs_length.png`` to ``--out``.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Sequence

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lmx.training import checkpoint  # pylint: disable=g-import-not-at-top
from lmx import cli
from lmx.evaluation import runner as evaluation
from lmx.evaluation import plots
from lmx.training import trainer


def finetune_config(base: str, length: int, steps: int, lr: float,
                    scaling: str, factor: float):
  c = checkpoint.read_config(base)
  train_len = int(c.train.seq_len)
  c.init_from = os.path.abspath(base)
  c.train.seq_len = length
  c.train.steps = steps
  c.train.warmup_steps = max(steps // 10, 1)
  c.train.learning_rate = lr
  c.train.checkpoint_every = steps
  c.train.log_every = max(steps // 10, 1)
  c.model.rope.scaling = scaling
  c.model.rope.factor = factor if scaling != 'none' else 1.0
  c.model.rope.original_max_len = train_len
  return c


def eval_config(config, lengths):
  config.eval.sliding = False
  config.eval.diagnostics_windows = 0
  config.eval.lengths = tuple(lengths)
  return config


def _define_flags() -> dict:
  """The command's flags; defined only when it runs as a program, so
  importing this module defines none."""
  return {
      'base': flags.DEFINE_string('base', None,
                                  'workdir of a trained rope run',
                                  required=True),
      'factor': flags.DEFINE_float('factor', 2.0, None),
      'steps': flags.DEFINE_integer('steps', 200, None),
      'lr': flags.DEFINE_float('lr', 5e-4, None),
      'max_multiplier': flags.DEFINE_integer('max_multiplier', 16, None),
      'out': flags.DEFINE_string('out', 'runs/pi_finetune', None),
  }


def main(argv: Sequence[str], fl: dict) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # as before app.run: warnings only
  args = types.SimpleNamespace(**{k: f.value for k, f in fl.items()})

  base_cfg = checkpoint.read_config(args.base)
  if base_cfg.model.position != 'rope':
    print(f'error: {args.base} holds a {base_cfg.model.position!r} model; '
          'Position Interpolation needs a rope run.', file=sys.stderr)
    return 2
  train_len = int(base_cfg.train.seq_len)
  new_len = int(round(train_len * args.factor))
  lengths, m = [], 1
  while m <= args.max_multiplier:
    lengths.append(train_len * m)
    m *= 2
  os.makedirs(args.out, exist_ok=True)

  curves = {}
  # The base run, as it is and with PI but no training.
  c = eval_config(checkpoint.read_config(args.base), lengths)
  curves['base'] = evaluation.evaluate(
      c, args.base, lengths, os.path.join(args.out, 'eval_base'), plots=False)
  c = eval_config(checkpoint.read_config(args.base), lengths)
  c.model.rope.scaling, c.model.rope.factor = 'linear', args.factor
  c.model.rope.original_max_len = train_len
  curves[f'base + PI x{args.factor:g}, no training'] = evaluation.evaluate(
      c, args.base, lengths, os.path.join(args.out, 'eval_base_pi'),
      plots=False)
  for name, scaling in (('pi', 'linear'), ('plain', 'none')):
    workdir = os.path.join(args.out, name)
    ft = finetune_config(args.base, new_len, args.steps, args.lr, scaling,
                         args.factor)
    trainer.train(ft, workdir, progress=False)
    c = eval_config(checkpoint.read_config(workdir), lengths)
    label = (f'fine-tuned at {new_len} with PI x{args.factor:g}'
             if scaling == 'linear' else
             f'fine-tuned at {new_len}, plain RoPE (control)')
    curves[label] = evaluation.evaluate(
        c, workdir, lengths, os.path.join(workdir, 'eval'), plots=False)

  table = {name: {r['length']: r['loss'] for r in res['results']}
           for name, res in curves.items()}
  header = '| model | ' + ' | '.join(
      f'{n} ({n // train_len}x)' for n in lengths) + ' |'
  lines = [f'PI fine-tune: base {args.base} (L={train_len}), {args.steps} '
           f'steps at {new_len}, lr {args.lr:g}; loss in nats/byte', '',
           header, '|---|' + '---:|' * len(lengths)]
  for name, row in table.items():
    lines.append(f'| {name} | ' + ' | '.join(
        f'{row[n]:.3f}' for n in lengths) + ' |')
  print('\n'.join(lines))
  evaluation.write_json(os.path.join(args.out, 'results.json'), {
      'base': os.path.abspath(args.base), 'train_length': train_len,
      'finetune_length': new_len, 'steps': args.steps, 'lr': args.lr,
      'factor': args.factor, 'lengths': lengths,
      'loss': {k: {str(n): v for n, v in row.items()}
               for k, row in table.items()}})
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name, row in table.items():
    ax.plot(lengths, [row[n] for n in lengths], marker='o', label=name)
  ax.axvline(train_len, color='gray', linestyle='--',
             label=f'base training length ({train_len})')
  ax.axvline(new_len, color='gray', linestyle=':',
             label=f'fine-tuning length ({new_len})')
  plots.length_axis(ax, lengths)
  ax.set_xlabel('evaluation length (tokens, log scale)')
  ax.set_ylabel('loss (nats / byte)')
  ax.set_title('Position Interpolation fine-tune against its control')
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, 'loss_vs_length.png'), dpi=120)
  plt.close(fig)
  return 0


if __name__ == '__main__':
  _FLAGS = _define_flags()
  app.run(lambda argv: main(argv, _FLAGS), flags_parser=cli.parse_flags)
