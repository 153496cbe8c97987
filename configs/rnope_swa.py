"""RNoPE-SWA (Yang et al. 2025, "Rope to Nope and Back Again: A New Hybrid
Attention Strategy"): three RoPE layers with sliding-window attention, then
one NoPE layer over every earlier token, repeated.

    python train.py --config=configs/rnope_swa.py
    python eval.py --workdir=runs/rnope_swa

The paper interleaves the two kinds of layer so that the RoPE layers carry
local, position-aware attention whose window the model has seen whole in
training, and the NoPE layers retrieve over the whole context with no
position signal to go out of distribution. Here the window is half the
training length (``window = L / 2``; the paper's windows are likewise a
fraction of its training length) and the NoPE layer ends each group of four.
A depth that is not a multiple of four (the tiny size's two layers) gets
one group: RoPE windowed layers, then a last NoPE one. Choose another depth
with the argument (``configs/rnope_swa.py:size=tiny,layers=8``), not with
``--config.model.num_layers``, which is refused (``lmx.model.layer_plan``).

``configs/swan.py`` is the same structure with SWAN-GPT's scaling of the
NoPE layers beyond the training length.
"""

from configs import base

NAME = 'rnope_swa'


def hybrid(arg, name: str, window_fraction: float):
  """RoPE layers with a sliding window of ``window_fraction`` x L, then a
  NoPE layer with full attention, in groups of four (one group when the
  depth is not a multiple of four)."""
  c = base.layered_config('rope', arg, name=name)
  n = c.model.num_layers
  period = 4 if n % 4 == 0 else n
  window = max(1, int(c.train.seq_len * window_fraction))
  c.model.layers.position = ('rope',) * (period - 1) + ('none',)
  c.model.layers.window = (window,) * (period - 1) + (0,)
  return c


def get_config(arg=None):
  return hybrid(arg, NAME, 0.5)
