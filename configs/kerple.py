"""kerple position encoding on the built-in corpus.

    python train.py --config=configs/kerple.py
    python eval.py --workdir=runs/kerple
"""

from configs import base


def get_config(arg=None):
  c = base.get_config(arg)
  c.name = 'kerple'
  c.model.position = 'kerple'
  return c
