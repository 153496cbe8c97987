"""Shaw et al. 2018: learned key embeddings of the relative distance,
clipped at 16, one table per layer shared by its heads (the value term of
the paper's Eq. 3 is not implemented: docs/encodings.md).

    python train.py --config=configs/shaw.py
    python eval.py --workdir=runs/shaw
"""

from configs import base


def get_config(arg=None):
  return base.encoding_config('shaw', arg)
