"""FIRE (Li et al. 2023): a learned MLP per layer of the log distance,
normalised by the query position (progressive interpolation), with the
threshold starting at the training length.

    python train.py --config=configs/fire.py
    python eval.py --workdir=runs/fire
"""

from configs import base


def get_config(arg=None):
  c = base.encoding_config('fire', arg)
  c.model.fire.init_threshold = float(c.train.seq_len)
  return c
