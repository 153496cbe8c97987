"""Sandwich (Chi et al. 2023): the parameter-free bias of inner products of
sinusoidal position embeddings of dimension d' (config.model.sandwich.dim,
128), divided per head by 8h/H.

    python train.py --config=configs/sandwich.py
    python eval.py --workdir=runs/sandwich

Its default run, evaluated at 1-16x the training length, is a row of
docs/evaluation.md's results table.
"""

from configs import base


def get_config(arg=None):
  return base.encoding_config('sandwich', arg)
