"""DAPE on KERPLE (Zheng et al., NeurIPS 2024, "DAPE: Data-Adaptive
Positional Encoding for Length Extrapolation"): in every layer, an MLP over
each (query, key) pair's logits and KERPLE bias across the heads adds
``f([A; B])`` to ``A + B`` (``lmx/positions/dape.py``), with the hidden
width 32 of the paper and its code.

    python train.py --config=configs/dape.py
    python eval.py --workdir=runs/dape

The paper's other bases take the same switch:
``--config.model.position=alibi`` (or ``fire``). The MLP is computed pair
by pair, in the dense and chunked backends and in KV-cache decoding; the
fused kernels do not compute it (``auto`` falls back, ``flash`` is
refused).
"""

from configs import base


def get_config(arg=None):
  c = base.encoding_config('kerple', arg, name='dape')
  c.model.score_adapter.kind = 'dape'
  return c
