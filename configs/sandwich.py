"""Sandwich (Chi et al. 2023): the parameter-free bias of inner products of
sinusoidal position embeddings of dimension d' (config.model.sandwich.dim,
128), divided per head by 8h/H.

    python train.py --config=configs/sandwich.py
    python eval.py --workdir=runs/sandwich

Not measured yet at the default size.
"""

from configs import base


def get_config(arg=None):
  return base.encoding_config('sandwich', arg)
