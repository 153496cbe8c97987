"""RoPE with log-n attention scaling (Su 2021, "从熵不变性看Attention的Scale
操作"; the scaling of HWFA's last layer, here in every layer): each query at
position ``p`` is multiplied by ``max(1, log(p + 1) / log(L))``, ``L`` the
training length, so the attention's entropy grows with the context no
faster than it did in training.

    python train.py --config=configs/logn.py
    python eval.py --workdir=runs/logn

``base_len`` follows ``--config.train.seq_len``.
"""

from configs import base


def get_config(arg=None):
  c = base.encoding_config('rope', arg, name='logn')
  c.model.length_scaling.kind = 'logn'
  c.model.length_scaling.base_len = c.train.get_ref('seq_len').identity()
  return c
