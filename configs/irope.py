"""iRoPE, Llama 4's interleaved layers: three RoPE layers with chunked
local attention and qk-norm, then one NoPE layer over every earlier token
whose queries get Llama 4's temperature, repeated.

    python train.py --config=configs/irope.py
    python eval.py --workdir=runs/irope

As in Llama 4's released code:

* the RoPE layers attend within fixed chunks (``attention_chunk_size``):
  query ``i`` sees the earlier keys ``j`` with ``j // c == i // c``
  (``lmx.model.attention.Mask``), and normalise their turned queries and keys
  by their root mean square (``use_qk_norm``; ``lmx.model.attention.qk_norm``);
* the NoPE layers see every earlier key, with no qk-norm, and scale their
  queries by ``1 + 0.1 log(floor((p + 1) / F) + 1)``
  (``attn_temperature_tuning``; ``lmx.positions.length_scaling.llama4_query_scale``).

Llama 4 sets the chunk and ``F`` to one number, 8192, and trains on longer
sequences than that; here both are a quarter of the training length, so
the same holds: the chunks and the temperature steps are all seen in
training. A model whose depth is not a multiple of four (the tiny size's
two layers) gets one period: RoPE layers, then a last NoPE one. Choose
another depth with the argument, ``configs/irope.py:size=tiny,layers=8``:
the structure is built for it. An override of ``config.model.num_layers``
would repeat the tuples built for the size's depth into another structure,
so it is refused (``config.model.layers.num_layers`` records the depth).
"""

from configs import base


def get_config(arg=None):
  c = base.layered_config('rope', arg, name='irope')
  n = c.model.num_layers
  period = 4 if n % 4 == 0 else n
  chunk = max(1, c.train.seq_len // 4)
  c.model.layers.position = ('rope',) * (period - 1) + ('none',)
  c.model.layers.chunk = (chunk,) * (period - 1) + (0,)
  c.model.layers.qk_norm = (True,) * (period - 1) + (False,)
  c.model.layers.length_scaling = ('off',) * (period - 1) + ('llama4',)
  c.model.length_scaling.floor_scale = float(chunk)
  return c
