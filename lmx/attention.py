"""Attention: the dense reference backend and its causal mask.

Logits are computed and normalised in float32 whatever the compute dtype.
Causality is a property of token order (index ``j <= i``), not of position
values, so it holds for randomized and shifted positions alike.
"""

from typing import Optional

import jax
import jax.numpy as jnp

NEG_INF = -1e30


def causal_mask(q_len: int, k_len: int) -> jax.Array:
  """``[T, S]`` bool: query ``i`` sees key ``j`` iff ``j <= i + (S - T)``.

  With ``S > T`` the queries are the last ``T`` of the ``S`` keys.
  """
  q_idx = jnp.arange(q_len)[:, None] + (k_len - q_len)
  k_idx = jnp.arange(k_len)[None, :]
  return k_idx <= q_idx


def dense_attention(q_BxTxHxK: jax.Array, k_BxSxHxK: jax.Array,
                    v_BxSxHxK: jax.Array, bias: Optional[jax.Array] = None,
                    mask_TxS: Optional[jax.Array] = None) -> jax.Array:
  """Softmax attention with an optional ``[B, H, T, S]`` bias and mask."""
  scale = q_BxTxHxK.shape[-1] ** -0.5
  logits_BxHxTxS = jnp.einsum('bthk,bshk->bhts', q_BxTxHxK, k_BxSxHxK,
                              preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits_BxHxTxS = logits_BxHxTxS + bias.astype(jnp.float32)
  if mask_TxS is not None:
    logits_BxHxTxS = jnp.where(mask_TxS, logits_BxHxTxS, NEG_INF)
  probs_BxHxTxS = jax.nn.softmax(logits_BxHxTxS, axis=-1)
  return jnp.einsum('bhts,bshk->bthk', probs_BxHxTxS.astype(v_BxSxHxK.dtype),
                    v_BxSxHxK)
