"""The Forgetting Transformer (Lin et al. 2025): a data-dependent forget
gate per head decays every logit by the product of the gates between query
and key; no other position encoding, as the paper's FoX.

    python train.py --config=configs/fox.py
    python eval.py --workdir=runs/fox
"""

from configs import base


def get_config(arg=None):
  return base.encoding_config('fox', arg)
