"""FIRE (Li et al. 2023): a learned MLP per layer of the log distance,
normalised by the query position (progressive interpolation) past a learned
threshold that starts at 512, as in the paper's reference code.

    python train.py --config=configs/fire.py
    python eval.py --workdir=runs/fire

Measured (default size, seed 0, 1500 steps on a 2-core CPU, 2026-12-02):
loss in nats/byte at 1x 2x 4x 8x 16x the training length of 64:
    1.347 1.314 1.341 1.398 1.480
"""

from configs import base


def get_config(arg=None):
  return base.encoding_config('fire', arg)
