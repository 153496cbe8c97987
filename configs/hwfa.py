"""HWFA, hybrid window-full attention (Su 2023, "Transformer升级之路：14、当
HWFA遇见ReRoPE" and the HWFA post before it).

    python train.py --config=configs/hwfa.py
    python eval.py --workdir=runs/hwfa

Every layer but the last is RoPE with a sliding window of a quarter of the
training length (each query sees itself and the w - 1 keys before it);
the last layer attends to every earlier token with no position encoding
and log-n scaling over the training length. The tuples are computed here
from the size's num_layers (``config.model.layers``, lmx/model/layer_plan.py):
change the depth with ``:size=...`` or ``:layers=N``, not
``--config.model.num_layers``, which is refused: the tuples were built for
the depth ``config.model.layers.num_layers`` records.
"""

from configs import base


def get_config(arg=None):
  c = base.layered_config('rope', arg, name='hwfa')
  n = c.model.num_layers
  window = max(1, c.train.seq_len // 4)
  c.model.layers.position = ('rope',) * (n - 1) + ('none',)
  c.model.layers.window = (window,) * (n - 1) + (0,)
  c.model.layers.length_scaling = ('off',) * (n - 1) + ('logn',)
  c.model.length_scaling.base_len = c.train.get_ref('seq_len').identity()
  return c
