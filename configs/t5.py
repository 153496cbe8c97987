"""T5 bucketed relative bias (Raffel et al. 2020).

    python train.py --config=configs/t5.py
    python eval.py --workdir=runs/t5

Measured (default size, seed 0, 1500 steps on a 2-core CPU): loss in
nats/byte at 1x 2x 4x 8x 16x the training length of 64:
    1.402 1.490 1.865 2.288 2.578
"""

from configs import base


def get_config(arg=None):
  return base.encoding_config('t5', arg)
