"""Sinusoidal APE with randomized positions (Ruoss et al. 2023).

    python train.py --config=configs/sinusoidal_randomized.py
    python eval.py --workdir=runs/sinusoidal_randomized

Training positions are sorted random subsets of [0, 16 x seq_len); evaluation
uses the same sampling by default (config.positions.eval='train'). Add
--config.positions.eval=contiguous to eval.py to compare.

Measured (default size, seed 0, 1500 steps on a 2-core CPU): loss in
nats/byte at 1x 2x 4x 8x 16x the training length of 64:
    1.491 1.563 1.828 2.246 2.670
"""

from configs import base


def get_config(arg=None):
  return base.encoding_config('sinusoidal', arg, name='sinusoidal_randomized',
                              sampling='randomized')
