"""RoPE rotary embedding (Su et al. 2021).

    python train.py --config=configs/rope.py
    python eval.py --workdir=runs/rope
"""

from configs import base


def get_config(arg=None):
  return base.encoding_config('rope', arg)
