"""CAPE (Likhomanenko et al. 2021): sinusoidal embeddings trained on
augmented real-valued positions lambda (i + Delta + eps_i)
(config.positions.cape: max global shift 5, max local shift 1, max global
scaling 1.03), evaluated on contiguous integer positions.

    python train.py --config=configs/cape.py
    python eval.py --workdir=runs/cape

Its default run, evaluated at 1-16x the training length, is a row of
docs/evaluation.md's results table.
"""

from configs import base


def get_config(arg=None):
  return base.encoding_config('sinusoidal', arg, name='cape',
                              sampling='cape')
