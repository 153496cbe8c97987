"""KeyNorm (Su 2023): L2-normalised keys on top of RoPE, logits
q . k / ||k|| (no 1/sqrt(d)); --config.model.keynorm.rope=false normalises
the keys of a model without positions.

    python train.py --config=configs/keynorm.py
    python eval.py --workdir=runs/keynorm

Its default run, evaluated at 1-16x the training length, is a row of
docs/evaluation.md's results table.
"""

from configs import base


def get_config(arg=None):
  return base.encoding_config('keynorm', arg)
