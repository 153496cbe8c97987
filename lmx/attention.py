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


def attention_logits(q_BxTxHxK: jax.Array, k_BxSxHxK: jax.Array,
                     bias: Optional[jax.Array] = None,
                     mask_TxS: Optional[jax.Array] = None) -> jax.Array:
  """Scaled dot products plus bias, masked keys at ``NEG_INF``: float32
  ``[B, H, T, S]``."""
  scale = q_BxTxHxK.shape[-1] ** -0.5
  logits_BxHxTxS = jnp.einsum('bthk,bshk->bhts', q_BxTxHxK, k_BxSxHxK,
                              preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits_BxHxTxS = logits_BxHxTxS + bias.astype(jnp.float32)
  if mask_TxS is not None:
    logits_BxHxTxS = jnp.where(mask_TxS, logits_BxHxTxS, NEG_INF)
  return logits_BxHxTxS


def attend(logits_BxHxTxS: jax.Array, v_BxSxHxK: jax.Array) -> jax.Array:
  """Softmax over keys (float32), then the weighted sum of values."""
  probs_BxHxTxS = jax.nn.softmax(logits_BxHxTxS, axis=-1)
  return jnp.einsum('bhts,bshk->bthk', probs_BxHxTxS.astype(v_BxSxHxK.dtype),
                    v_BxSxHxK)


def dense_attention(q_BxTxHxK: jax.Array, k_BxSxHxK: jax.Array,
                    v_BxSxHxK: jax.Array, bias: Optional[jax.Array] = None,
                    mask_TxS: Optional[jax.Array] = None) -> jax.Array:
  """Softmax attention with an optional ``[B, H, T, S]`` bias and mask."""
  return attend(attention_logits(q_BxTxHxK, k_BxSxHxK, bias, mask_TxS),
                v_BxSxHxK)


def attention_stats(logits_BxHxTxS: jax.Array,
                    mask_TxS: jax.Array) -> dict[str, jax.Array]:
  """Per query, two of LM-Infinite's out-of-distribution signals (Han et al.
  2023, section 3):

  - ``entropy`` ``[B, T]``: entropy of the attention distribution over the
    visible keys in nats, mean over heads. It grows with the number of
    tokens attended to (log of the count for uniform attention).
  - ``max_logit`` ``[B, T]``: the largest logit over visible keys and
    heads. Unseen distances can make it explode.
  """
  visible = jnp.where(mask_TxS, logits_BxHxTxS, NEG_INF)
  logp_BxHxTxS = jax.nn.log_softmax(visible, axis=-1)
  plogp = jnp.where(mask_TxS, jnp.exp(logp_BxHxTxS) * logp_BxHxTxS, 0.0)
  entropy_BxT = -plogp.sum(axis=-1).mean(axis=1)
  max_logit_BxT = visible.max(axis=(1, 3))
  return {'entropy': entropy_BxT, 'max_logit': max_logit_BxT}
