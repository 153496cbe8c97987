"""iRoPE, Llama 4's interleaved layers: three RoPE layers with local
attention, then one NoPE layer over every earlier token whose queries get
Llama 4's temperature, repeated.

    python train.py --config=configs/irope.py
    python eval.py --workdir=runs/irope

The local layers here use a sliding window of a quarter of the training
length (Llama 4's own local layers attend within fixed chunks of 8192
tokens instead; lmx has sliding windows only). The NoPE layers scale
their queries by ``1 + 0.1 log(floor((p + 1) / F) + 1)`` with ``F`` the
training length (Llama 4: ``F = 8192``), so the scale is 1 inside it. A
model whose depth is not a multiple of four (the tiny size's two layers)
gets one period: RoPE layers, then a last NoPE one.
"""

from configs import base


def get_config(arg=None):
  c = base.encoding_config('rope', arg, name='irope')
  n = c.model.num_layers
  period = 4 if n % 4 == 0 else n
  window = max(1, c.train.seq_len // 4)
  c.model.layers.position = ('rope',) * (period - 1) + ('none',)
  c.model.layers.window = (window,) * (period - 1) + (0,)
  c.model.layers.length_scaling = ('off',) * (period - 1) + ('llama4',)
  c.model.length_scaling.floor_scale = float(c.train.seq_len)
  return c
