"""t5 position encoding on the built-in corpus.

    python train.py --config=configs/t5.py
    python eval.py --workdir=runs/t5
"""

from configs import base


def get_config(arg=None):
  c = base.get_config(arg)
  c.name = 't5'
  c.model.position = 't5'
  return c
