"""KERPLE log kernel (Chi et al. 2022).

    python train.py --config=configs/kerple.py
    python eval.py --workdir=runs/kerple

Measured (default size, seed 0, 1500 steps on a 2-core CPU): loss in
nats/byte at 1x 2x 4x 8x 16x the training length of 64:
    1.339 1.305 1.293 1.289 1.288
"""

from configs import base


def get_config(arg=None):
  return base.encoding_config('kerple', arg)
