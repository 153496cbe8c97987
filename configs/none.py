"""none position encoding on the built-in corpus.

    python train.py --config=configs/none.py
    python eval.py --workdir=runs/none
"""

from configs import base


def get_config(arg=None):
  c = base.get_config(arg)
  c.name = 'none'
  c.model.position = 'none'
  return c
