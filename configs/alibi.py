"""alibi position encoding on the built-in corpus.

    python train.py --config=configs/alibi.py
    python eval.py --workdir=runs/alibi
"""

from configs import base


def get_config(arg=None):
  c = base.get_config(arg)
  c.name = 'alibi'
  c.model.position = 'alibi'
  return c
