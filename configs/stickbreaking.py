"""Stick-breaking attention (Tan et al., ICLR 2025): each query gives every
earlier key the share sigmoid(z) of the weight the nearer keys left, the
rest to its own value, in place of a softmax; no position encoding, as the
paper's models (lmx/model/stickbreaking.py, docs/backends.md).

    python train.py --config=configs/stickbreaking.py
    python eval.py --workdir=runs/stickbreaking
"""

from configs import base


def get_config(arg=None):
  c = base.encoding_config('none', arg, name='stickbreaking')
  c.model.normaliser = 'stick_breaking'
  return c
