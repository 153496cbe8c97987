"""Gated attention: ``config.model.attention_gate``.

Qiu et al. 2025, "Gated Attention for Large Language Models:
Non-linearity, Sparsity, and Attention-Sink-Free"; the gate at their
position G1, after the scaled dot-product attention): each head's output
of the attention is multiplied by a sigmoid gate computed from the layer's
input,

    Y' = Y * sigmoid(X W_theta),

``X`` the hidden state the queries are projected from (after the block's
pre-norm). The gate is head-specific and query-dependent:

* ``elementwise``: ``W_theta: d_model -> H * K``, a gate per channel of
  each head (``elementwise_attn_output_gate`` in their code);
* ``headwise``: ``W_theta: d_model -> H``, one gate per head, the same for
  its ``K`` channels (``headwise_attn_output_gate``);
* ``off``: no gate, the model as before.

In their released code (github.com/qiuzh20/gated_attention,
``modeling_qwen3.py``) the gate's rows are extra outputs of ``q_proj``,
with its bias setting (``qkv_bias``, False for Qwen3) and its
initialisation, and ``attn_output * torch.sigmoid(gate_score)`` is taken
before the heads are merged and projected by ``o_proj``. Here the gate is
its own projection without a bias (lmx's q/k/v projection has none),
initialised as the layer's other projections (``nnx.Linear``'s default):
the same function, parameters counted apart. The gate is computed in
float32 and the product cast back to the output's dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# config.model.attention_gate -> the gate's outputs per head (0: no gate;
# None: one per channel of the head).
OFF = 'off'
KINDS = {OFF: 0, 'elementwise': None, 'headwise': 1}


def gate_width(kind: str, num_heads: int, head_dim: int) -> int:
  """The width of ``W_theta``'s output: ``H * K`` (elementwise), ``H``
  (headwise), 0 (off)."""
  per_head = KINDS[kind]
  if per_head == 0:
    return 0
  return num_heads * (head_dim if per_head is None else per_head)


def gate(y_BxTxHxK: jax.Array, scores_BxTxG: jax.Array) -> jax.Array:
  """``y * sigmoid(scores)``: ``scores`` the gate's pre-activations
  ``X W_theta`` ``[B, T, H * K]`` (elementwise) or ``[B, T, H]``
  (headwise, broadcast over each head's channels). ``y``'s dtype out."""
  b, t, h, k = y_BxTxHxK.shape
  per_head = scores_BxTxG.shape[-1] // h
  g = jax.nn.sigmoid(scores_BxTxG.astype(jnp.float32)).reshape(
      b, t, h, per_head)
  return (y_BxTxHxK.astype(jnp.float32) * g).astype(y_BxTxHxK.dtype)
