"""DroPE's recalibration of a finished RoPE run, as one command: train
``configs/drope.py`` from the run into ``<workdir>/drope`` and evaluate it
there. The replicate sweep runs it after each ``lm-rope-s<seed>`` member
(``configs/sweeps/replicate.py``, finding 9), so every DroPE model starts
from the RoPE model it is compared with.

    python -m experiments.drope --workdir=runs/rope [--steps=150] [--arg=size=tiny]

The recalibration takes the data, seed and evaluation settings of the RoPE
run's saved ``config.json`` (a sweep's ``--train_args`` reach it this way),
and only what ``configs/drope.py`` changes differs. Rerunning resumes: a
finished recalibration is not trained again (train.py resumes from its last
checkpoint), and the evaluation is rewritten.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from lmx import fs
from lmx import sweeps
from lmx.config import defaults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBDIR = 'drope'
# What the recalibration takes from the run it starts from.
CARRIED = ('data.', 'eval.', 'seed')


def carried(config: dict) -> dict:
  """The flattened fields of a saved config that the recalibration keeps."""
  flat = defaults.flatten(config)
  return {k: v for k, v in flat.items() if k.startswith(CARRIED)}


def commands(workdir: str, steps: int, arg: str = '') -> list[list[str]]:
  """train.py then eval.py for the recalibration of ``workdir``."""
  out = os.path.join(workdir, SUBDIR)
  config = fs.read_json(os.path.join(workdir, 'config.json'))
  spec = f'from={workdir},steps={steps}' + (f',{arg}' if arg else '')
  train = [sys.executable, os.path.join(ROOT, 'train.py'),
           f'--config={os.path.join(ROOT, "configs", "drope.py")}:{spec}',
           *sweeps.config_args(carried(config)),
           f'--workdir={out}', '--progress=false']
  evaluate = [sys.executable, os.path.join(ROOT, 'eval.py'),
              f'--workdir={out}', f'--out={os.path.join(out, "eval")}']
  return [train, evaluate]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--workdir', required=True, help='the finished RoPE run')
  p.add_argument('--steps', type=int, default=150,
                 help='recalibration steps (configs/drope.py)')
  p.add_argument('--arg', default='',
                 help="more of configs/drope.py's argument, e.g. size=tiny")
  a = p.parse_args(argv)
  if not os.path.isfile(os.path.join(a.workdir, 'config.json')):
    print(f'error: {a.workdir} has no config.json: give --workdir a finished '
          'RoPE run.', file=sys.stderr)
    return 2
  for cmd in commands(a.workdir, a.steps, a.arg):
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc:
      return rc
  return 0


if __name__ == '__main__':
  sys.exit(main())
