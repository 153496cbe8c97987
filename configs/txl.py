"""Transformer-XL's relative positions (Dai et al. 2019): the sinusoid of
the distance through a learned projection per layer, with the global
content and position biases u and v (lmx/positions/txl.py).

    python train.py --config=configs/txl.py
    python eval.py --workdir=runs/txl

Its default run, evaluated at 1-16x the training length, is a row of
docs/evaluation.md's results table.
"""

from configs import base


def get_config(arg=None):
  return base.encoding_config('txl', arg)
