"""RoPE with Scalable-Softmax (Nakanishi 2025, "Scalable-Softmax Is
Superior for Attention", eq. 1): each query's scores times ``s log n``,
``n`` the keys it sees and ``s`` learned per head and layer, initialised so
that the factor averages 1 over the training length (lmx's choice,
docs/extensions.md).

    python train.py --config=configs/ssmax.py
    python eval.py --workdir=runs/ssmax

``base_len`` (for the initial ``s``) follows ``--config.train.seq_len``.
"""

from configs import base


def get_config(arg=None):
  c = base.encoding_config('rope', arg, name='ssmax')
  c.model.length_scaling.kind = 'ssmax'
  c.model.length_scaling.base_len = c.train.get_ref('seq_len').identity()
  return c
