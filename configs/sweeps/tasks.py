"""Encoding x position sampling on the algorithmic tasks.

    python sweep.py --sweep=configs/sweeps/tasks.py --dir=runs/sweeps/tasks \
        --parallel=2
    python sweep.py --sweep=configs/sweeps/tasks.py:size=tiny,tasks=reverse \
        --dir=/tmp/sweeps/tasks         # seconds per member

Every task config ``configs/tasks/<task>.py`` x every encoding in
lmx.positions.REGISTRY x {contiguous, randomized} training positions, one
seed. The argument is passed to every member's config (``size=tiny``),
except ``tasks=a+b`` (default: TASKS), ``encodings=a+b`` (default: all)
and ``seeds=N`` (default 1), which narrow the sweep:

    python sweep.py --sweep=configs/sweeps/tasks.py:tasks=reverse,encodings=none+alibi+rope \
        --dir=runs/sweeps/reverse
Members are named ``<task>-<encoding>-<sampling>`` (plus ``-s<seed>`` with
more than one seed).
"""

from configs import base
from lmx import positions

TASKS = ('copy', 'reverse', 'duplicate_string', 'sort', 'parity',
         'binary_addition', 'modular_arithmetic', 'associative_recall',
         'passkey', 'even_pairs', 'cycle_navigation', 'odds_first',
         'missing_duplicate_string', 'solve_equation', 'binary_multiplication',
         'compute_sqrt', 'bucket_sort', 'stack_manipulation',
         'modular_arithmetic_brackets', 'induction_heads', 'mqar', 'flip_flop',
         'multi_key_niah', 'variable_tracking', 'babilong_qa1',
         'babilong_qa2', 'babilong_count', 'common_words', 'frequent_words')


def get_sweep(arg=None):
  args = base.parse_arg(arg, {
      **base.ARG_KEYS, 'tasks': 'tasks joined by +, e.g. copy+reverse',
      'encodings': 'encodings joined by +, e.g. none+alibi+rope',
      'seeds': 'seeds per member (default 1)'})
  tasks = args.pop('tasks', '+'.join(TASKS)).split('+')
  encodings = args.pop('encodings', '+'.join(positions.REGISTRY)).split('+')
  seeds = int(args.pop('seeds', 1))
  size = ':' + ','.join(f'{k}={v}' for k, v in args.items()) if args else ''
  return {
      'config': f'configs/tasks/{tasks[0]}.py{size}',
      'product': {
          'config': [f'configs/tasks/{t}.py{size}' for t in tasks],
          'model.position': encodings,
          'positions.train': ['contiguous', 'randomized'],
          'seed': list(range(seeds)),
      },
  }
