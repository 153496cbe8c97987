"""xpos position encoding on the built-in corpus.

    python train.py --config=configs/xpos.py
    python eval.py --workdir=runs/xpos
"""

from configs import base


def get_config(arg=None):
  c = base.get_config(arg)
  c.name = 'xpos'
  c.model.position = 'xpos'
  return c
