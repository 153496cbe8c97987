"""rope position encoding on the built-in corpus.

    python train.py --config=configs/rope.py
    python eval.py --workdir=runs/rope
"""

from configs import base


def get_config(arg=None):
  c = base.get_config(arg)
  c.name = 'rope'
  c.model.position = 'rope'
  return c
