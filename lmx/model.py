"""A small decoder-only Transformer in Flax NNX with pluggable positions.

token embedding -> position.embed -> N x [pre-norm causal self-attention
(position.rotate on q/k, position.bias on the logits), pre-norm MLP] ->
final norm -> LM head.

The model never branches on the encoding's name: it builds the encoding from
the registry and calls its three hooks. An encoding with ``per_layer = True``
gets one instance per block (the first also serves ``embed``), otherwise one
instance is shared by the embedding and every block.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lmx import attention
from lmx import positions as positions_lib

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def _dropout(x, rate: float, key: Optional[jax.Array]):
  if rate == 0.0 or key is None:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class Attention(nnx.Module):
  """Multi-head causal self-attention that asks the encoding for q/k and bias."""

  def __init__(self, cfg: ml_collections.ConfigDict,
               position: positions_lib.PositionEncoding, *, rngs: nnx.Rngs):
    d, h = cfg.d_model, cfg.num_heads
    self.num_heads, self.head_dim = h, d // h
    dtype = DTYPES[cfg.dtype]
    self.qkv = nnx.Linear(d, 3 * d, use_bias=False, dtype=dtype, rngs=rngs)
    self.out = nnx.Linear(d, d, use_bias=False, dtype=dtype, rngs=rngs)
    self.position = position
    # Set by evaluation (lmx.evaluation.attention_diagnostics) to sow
    # attention statistics; training never pays for them.
    self.collect_stats = False

  def __call__(self, x_BxTxD, positions_BxT):
    b, t, _ = x_BxTxD.shape
    qkv = self.qkv(x_BxTxD).reshape(b, t, 3, self.num_heads, self.head_dim)
    q_BxTxHxK, k_BxTxHxK, v_BxTxHxK = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q_BxTxHxK, k_BxTxHxK = self.position.rotate(q_BxTxHxK, k_BxTxHxK,
                                                positions_BxT, positions_BxT)
    bias = self.position.bias(positions_BxT, positions_BxT)
    mask_TxT = attention.causal_mask(t, t)
    logits_BxHxTxT = attention.attention_logits(q_BxTxHxK, k_BxTxHxK, bias,
                                                mask_TxT)
    if self.collect_stats:
      self.sow(nnx.Intermediate, 'attention_stats',
               attention.attention_stats(logits_BxHxTxT, mask_TxT))
    out_BxTxHxK = attention.attend(logits_BxHxTxT, v_BxTxHxK)
    return self.out(out_BxTxHxK.reshape(b, t, -1))


class Mlp(nnx.Module):

  def __init__(self, cfg, *, rngs):
    dtype = DTYPES[cfg.dtype]
    self.up = nnx.Linear(cfg.d_model, cfg.mlp_dim, dtype=dtype, rngs=rngs)
    self.down = nnx.Linear(cfg.mlp_dim, cfg.d_model, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.down(jax.nn.gelu(self.up(x)))


class Block(nnx.Module):
  """Pre-norm residual block: x + attn(norm(x)); x + mlp(norm(x))."""

  def __init__(self, cfg, position, *, rngs):
    self.attn_norm = nnx.RMSNorm(cfg.d_model, rngs=rngs)
    self.attn = Attention(cfg, position, rngs=rngs)
    self.mlp_norm = nnx.RMSNorm(cfg.d_model, rngs=rngs)
    self.mlp = Mlp(cfg, rngs=rngs)
    self.dropout = float(cfg.dropout)

  def __call__(self, x_BxTxD, positions_BxT, key=None):
    k1 = k2 = None
    if key is not None:
      k1, k2 = jax.random.split(key)
    x_BxTxD = x_BxTxD + _dropout(
        self.attn(self.attn_norm(x_BxTxD), positions_BxT), self.dropout, k1)
    return x_BxTxD + _dropout(self.mlp(self.mlp_norm(x_BxTxD)), self.dropout, k2)


class Transformer(nnx.Module):
  """Decoder-only LM: ``(tokens [B,T], positions [B,T]) -> logits [B,T,V]``."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    encoding_cls = positions_lib.get_encoding(cfg.position)
    self.dtype = DTYPES[cfg.dtype]
    self.dropout = float(cfg.dropout)
    self.tie_embeddings = bool(cfg.tie_embeddings)
    self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model,
                           embedding_init=nnx.initializers.normal(1.0),
                           rngs=rngs)
    if encoding_cls.per_layer:
      layer_positions = [encoding_cls(cfg, rngs=rngs)
                         for _ in range(cfg.num_layers)]
    else:
      layer_positions = [encoding_cls(cfg, rngs=rngs)] * cfg.num_layers
    # The embedding hook is asked of the first layer's instance, so a
    # per-layer encoding has no extra, unused copy here.
    self.position = layer_positions[0]
    self.blocks = nnx.List([Block(cfg, p, rngs=rngs) for p in layer_positions])
    self.final_norm = nnx.RMSNorm(cfg.d_model, rngs=rngs)
    if not self.tie_embeddings:
      self.head = nnx.Linear(cfg.d_model, cfg.vocab_size, use_bias=False,
                             dtype=self.dtype, rngs=rngs)

  def __call__(self, tokens_BxT: jax.Array, positions_BxT: jax.Array,
               dropout_key: Optional[jax.Array] = None) -> jax.Array:
    x_BxTxD = self.embed(tokens_BxT).astype(self.dtype)
    x_BxTxD = self.position.embed(x_BxTxD, positions_BxT)
    keys = [None] * (len(self.blocks) + 1)
    if dropout_key is not None and self.dropout > 0:
      keys = list(jax.random.split(dropout_key, len(self.blocks) + 1))
    x_BxTxD = _dropout(x_BxTxD, self.dropout, keys[-1])
    for block, key in zip(self.blocks, keys):
      x_BxTxD = block(x_BxTxD, positions_BxT, key)
    x_BxTxD = self.final_norm(x_BxTxD)
    if self.tie_embeddings:
      logits_BxTxV = self.embed.attend(x_BxTxD) * (x_BxTxD.shape[-1] ** -0.5)
    else:
      logits_BxTxV = self.head(x_BxTxD)
    return logits_BxTxV.astype(jnp.float32)


def cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
  """Per-token negative log-likelihood in nats, ``[B, T]`` (float32)."""
  logz_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
  target_logit_BxT = jnp.take_along_axis(
      logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  return logz_BxT - target_logit_BxT


def build(cfg: ml_collections.ConfigDict, seed: int) -> Transformer:
  """The model described by ``config.model``, initialised from ``seed``."""
  return Transformer(cfg, rngs=nnx.Rngs(params=seed))
