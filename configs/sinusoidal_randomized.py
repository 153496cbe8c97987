"""Sinusoidal APE with randomized positions (Ruoss et al. 2023).

    python train.py --config=configs/sinusoidal_randomized.py
    python eval.py --workdir=runs/sinusoidal_randomized

Training positions are sorted random subsets of [0, 16 x seq_len); evaluation
uses the same sampling by default (config.positions.eval='train'). Add
--config.positions.eval=contiguous to eval.py to compare.
"""

from configs import base


def get_config(arg=None):
  return base.encoding_config('sinusoidal', arg, name='sinusoidal_randomized',
                              sampling='randomized')
