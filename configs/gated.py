"""RoPE with gated attention (Qiu et al. 2025, "Gated Attention for Large
Language Models: Non-linearity, Sparsity, and Attention-Sink-Free"): each
head's attention output times ``sigmoid(x W_theta)``, a gate per channel
computed from the layer's input (the elementwise gate at their position
G1; ``lmx/model/gating.py``).

    python train.py --config=configs/gated.py
    python eval.py --workdir=runs/gated

``--config.model.attention_gate=headwise`` gives one gate per head instead;
the gate goes with any encoding (``--config.model.position=alibi``).
"""

from configs import base


def get_config(arg=None):
  c = base.encoding_config('rope', arg, name='gated')
  c.model.attention_gate = 'elementwise'
  return c
