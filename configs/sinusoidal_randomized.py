"""Sinusoidal APE with randomized positions (Ruoss et al. 2023).

Training positions are sorted random subsets of [0, max_position); evaluation
uses the same sampling by default (config.positions.eval = 'train').

    python train.py --config=configs/sinusoidal_randomized.py
    python eval.py --workdir=runs/sinusoidal_randomized
"""

from configs import base


def get_config(arg=None):
  c = base.get_config(arg)
  c.name = 'sinusoidal_randomized'
  c.model.position = 'sinusoidal'
  c.positions.train = 'randomized'
  c.positions.max_position = 16 * c.train.seq_len
  return c
