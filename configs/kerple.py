"""KERPLE log kernel (Chi et al. 2022).

    python train.py --config=configs/kerple.py
    python eval.py --workdir=runs/kerple

The kernel parameters are shared by every layer, as in the paper and its
code (``--config.model.kerple.per_layer=true`` gives each layer its own).

Measured (default size, seed 0, 1500 steps on a 2-core CPU, 2026-12-02):
loss in nats/byte at 1x 2x 4x 8x 16x the training length of 64:
    1.344 1.312 1.300 1.298 1.297
"""

from configs import base


def get_config(arg=None):
  return base.encoding_config('kerple', arg)
