"""FIRE (Li et al. 2023): a learned MLP per layer of the log distance,
normalised by the query position (progressive interpolation) past a learned
threshold that starts at 512, as in the paper's reference code.

    python train.py --config=configs/fire.py
    python eval.py --workdir=runs/fire
"""

from configs import base


def get_config(arg=None):
  return base.encoding_config('fire', arg)
