"""xPos: RoPE with exponential decay (Sun et al. 2023).

    python train.py --config=configs/xpos.py
    python eval.py --workdir=runs/xpos
"""

from configs import base


def get_config(arg=None):
  return base.encoding_config('xpos', arg)
