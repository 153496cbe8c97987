"""NoPE, no position encoding (Kazemnejad et al. 2023).

    python train.py --config=configs/none.py
    python eval.py --workdir=runs/none

Measured (default size, seed 0, 1500 steps on a 2-core CPU): loss in
nats/byte at 1x 2x 4x 8x 16x the training length of 64:
    1.615 1.746 2.136 2.478 2.679
"""

from configs import base


def get_config(arg=None):
  return base.encoding_config('none', arg)
