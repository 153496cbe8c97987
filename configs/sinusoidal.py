"""sinusoidal position encoding on the built-in corpus.

    python train.py --config=configs/sinusoidal.py
    python eval.py --workdir=runs/sinusoidal
"""

from configs import base


def get_config(arg=None):
  c = base.get_config(arg)
  c.name = 'sinusoidal'
  c.model.position = 'sinusoidal'
  return c
