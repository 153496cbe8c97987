"""A small decoder-only Transformer in Flax NNX with pluggable positions.

token embedding -> position.embed -> N x [pre-norm causal self-attention
(position.rotate on q/k, position.bias on the logits), pre-norm MLP] ->
final norm -> LM head.

The model never branches on the encoding's name: it builds the encoding from
the registry and calls its three hooks. An encoding with ``per_layer = True``
gets one instance per block (the first also serves ``embed``), otherwise one
instance is shared by the embedding and every block.
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lmx import attention
from lmx import positions as positions_lib

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@jax.custom_vjp
def _matmul_low(x_NxD: jax.Array, w_DxF: jax.Array) -> jax.Array:
  """``x @ w`` in ``x``'s low precision (bf16), accumulated in float32.

  ``w`` is the float32 parameter: it is rounded for the product, and its
  gradient comes back in float32. On XLA:CPU a bf16 product reaches the
  CPU's bf16 matrix units (AMX) only as a plain GEMM with a float32 result
  whose operands are whole buffers; an elementwise producer fused into the
  dot, or a bf16 result type, sends it down a generic path several times
  slower. So every product here asks for float32, its operands sit behind
  ``optimization_barrier`` (no effect on values), and the weight gradient
  contracts over blocks of rows (measured fastest).
  """
  return _dot_low(x_NxD, w_DxF.astype(x_NxD.dtype)).astype(x_NxD.dtype)


def _dot_low(a, b, contract=((1,), (0,))):
  barrier = jax.lax.optimization_barrier
  return jax.lax.dot_general(barrier(a), barrier(b), (contract, ((), ())),
                             preferred_element_type=jnp.float32)


def _matmul_low_fwd(x_NxD, w_DxF):
  return _matmul_low(x_NxD, w_DxF), (x_NxD, w_DxF)


def _matmul_low_bwd(res, g_NxF):
  x_NxD, w_DxF = res
  low = x_NxD.dtype
  g_NxF = g_NxF.astype(low)
  dx = _dot_low(g_NxF, w_DxF.astype(low), ((1,), (1,))).astype(low)
  n = x_NxD.shape[0]
  rows = next(r for r in (256, 128, 64, 32, 16, 8, 4, 2, 1) if n % r == 0)
  dw = _dot_low(x_NxD.reshape(n // rows, rows, -1),
                g_NxF.reshape(n // rows, rows, -1), ((0, 1), (0, 1)))
  return dx, dw.astype(w_DxF.dtype)


_matmul_low.defvjp(_matmul_low_fwd, _matmul_low_bwd)


@jax.custom_vjp
def _add_bias_low(y_NxF: jax.Array, b_F: jax.Array) -> jax.Array:
  """``y + b`` in ``y``'s low precision, ``b`` a float32 parameter.

  The bias gradient (a sum over the rows of the incoming gradient) is a
  product with a vector of ones in bf16 with a float32 result: the plain
  reduction XLA:CPU emits for it converts the whole gradient to float32
  and reduces it in strided windows, several times slower.
  """
  return y_NxF + b_F.astype(y_NxF.dtype)


def _add_bias_low_fwd(y_NxF, b_F):
  return _add_bias_low(y_NxF, b_F), b_F


def _add_bias_low_bwd(b_F, g_NxF):
  ones_1xN = jnp.ones((1, g_NxF.shape[0]), g_NxF.dtype)
  return g_NxF, _dot_low(ones_1xN, g_NxF)[0].astype(b_F.dtype)


_add_bias_low.defvjp(_add_bias_low_fwd, _add_bias_low_bwd)


def _dense(layer: nnx.Linear, x_BxTxD: jax.Array, cols: Optional[slice] = None
           ) -> jax.Array:
  """``layer(x)`` computed on ``x`` flattened to ``[B*T, D]``; with ``cols``,
  only those output columns (a slice of the kernel).

  The same product, but as a plain 2-D matmul its backward is one too: with
  a 3-D input the weight gradient contracts over (B, T), and XLA:CPU emits
  it as a generic dot after a transposing copy of the activations instead of
  its fast GEMM. Flattening made the train step 1.15-1.3x faster on a 2-core
  CPU (bench/train_throughput.py) with identical losses. In bfloat16 the
  product is ``_matmul_low``.
  """
  x_NxD = x_BxTxD.reshape(-1, x_BxTxD.shape[-1])
  kernel = layer.kernel[...]
  bias = layer.bias[...] if layer.bias is not None else None
  if cols is not None:
    kernel = kernel[:, cols]
    bias = bias[cols] if bias is not None else None
  if layer.dtype == jnp.bfloat16:
    y_NxF = _matmul_low(x_NxD.astype(jnp.bfloat16), kernel)
    if bias is not None:
      y_NxF = _add_bias_low(y_NxF, bias)
  else:
    y_NxF = jnp.dot(x_NxD.astype(layer.dtype or x_NxD.dtype),
                    kernel.astype(layer.dtype or kernel.dtype))
    if bias is not None:
      y_NxF = y_NxF + bias
  return y_NxF.reshape(*x_BxTxD.shape[:-1], y_NxF.shape[-1])


def _dropout(x, rate: float, key: Optional[jax.Array]):
  if rate == 0.0 or key is None:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class LayerCache(NamedTuple):
  """One attention layer's KV cache in a decoding call, and how to use it.

  ``mode``: ``'prefill'`` (the cache is empty: attend over the new tokens
  alone, through the configured backend, then store them), ``'write'``
  (store the new keys first, then attend over the cache alone: no copy of
  it is made) or ``'concat'`` (attend over the cache and the new keys side
  by side, then store: for several new tokens in a ring, where storing
  first would overwrite keys the earlier of them still see).
  """
  k: jax.Array         # [B, C, H, K] cached keys, before the encoding turns them
  v: jax.Array         # [B, C, H, K]
  pos: jax.Array       # [B, C] their positions ('write': after this call's)
  idx: jax.Array       # [C] their token indices, -1 for an empty slot (idem)
  new_idx: jax.Array   # [T] token indices of this call's tokens
  slots: jax.Array     # [T] their slots; C for a token not kept
  mode: str


class Attention(nnx.Module):
  """Multi-head causal self-attention that asks the encoding for q/k and bias.

  Keys are cached with their positions. Where the encoding turns each key by
  its own position alone (``keys_static()``: RoPE without dynamic scaling,
  and every encoding that turns nothing) and no distance clamp asks for a
  second turn, they are cached turned, so a decoding step turns only its
  new keys. Otherwise (xPos, whose key scale is centred on all the keys;
  dynamic NTK; ReRoPE and the distance limit) they are cached *before* the
  encoding turns them, and a step asks the encoding exactly what a full
  forward pass asks. Either way every encoding and clamp decodes with the
  logits of the full pass. (Dynamic NTK is the one exception past its
  original length, as with any KV cache: the deeper layers' cached keys
  come from hidden states computed at the scale of their own step.)
  """

  def __init__(self, cfg: ml_collections.ConfigDict,
               position: positions_lib.PositionEncoding, *, rngs: nnx.Rngs):
    d, h = cfg.d_model, cfg.num_heads
    self.num_heads, self.head_dim = h, d // h
    dtype = DTYPES[cfg.dtype]
    self.qkv = nnx.Linear(d, 3 * d, use_bias=False, dtype=dtype, rngs=rngs)
    self.out = nnx.Linear(d, d, use_bias=False, dtype=dtype, rngs=rngs)
    self.position = position
    self.backend = cfg.get('attention', 'auto')
    self.block = int(cfg.get('attention_block', 512))
    self.threshold = int(cfg.get('chunk_threshold', 2048))
    self.mask = mask_from_config(cfg)
    self.clamp = clamp_from_config(cfg)
    # Set by evaluation (lmx.evaluation.attention_diagnostics) to sow
    # attention statistics; training never pays for them.
    self.collect_stats = False

  def branches(self, q_BxTxHxK, k_BxSxHxK, q_pos_BxT, k_pos_BxS,
               turned: bool = False):
    """The near branch (the encoding at the true positions) and, with a
    distance clamp, the far branch at the clamped positions. ``turned``:
    q and k come already turned (and there is no clamp)."""
    if turned:
      return attention.Branch(q_BxTxHxK, k_BxSxHxK, q_pos_BxT, k_pos_BxS), None
    qn, kn = self.position.rotate(q_BxTxHxK, k_BxSxHxK, q_pos_BxT, k_pos_BxS)
    near = attention.Branch(qn, kn, q_pos_BxT, k_pos_BxS)
    if self.clamp is None:
      return near, None
    qf_pos, kf_pos = self.clamp.far_positions(q_pos_BxT, k_pos_BxS)
    qf, kf = self.position.rotate(q_BxTxHxK, k_BxSxHxK, qf_pos, kf_pos)
    return near, attention.Branch(qf, kf, qf_pos, kf_pos)

  def __call__(self, x_BxTxD, positions_BxT, cache: Optional[LayerCache] = None):
    b, t, _ = x_BxTxD.shape
    # Three products from the slices of the one qkv kernel: the same values
    # as one product split three ways, but the backward pass then adds three
    # input gradients instead of concatenating (padding) the three output
    # gradients into one [B, T, 3, H, K] array, a transposing copy that took
    # 5-8% of a training step on a 2-core CPU.
    d = self.num_heads * self.head_dim
    q_BxTxHxK, k_BxTxHxK, v_BxTxHxK = (
        _dense(self.qkv, x_BxTxD, slice(i * d, (i + 1) * d)).reshape(
            b, t, self.num_heads, self.head_dim) for i in range(3))
    window = self.clamp.window if self.clamp is not None else 0
    # Decoding with static keys: turn the new queries and keys once, and
    # cache the keys turned (see the class docstring).
    turned = (cache is not None and self.clamp is None
              and self.position.keys_static())
    if turned:
      q_BxTxHxK, k_BxTxHxK = self.position.rotate(
          q_BxTxHxK, k_BxTxHxK, positions_BxT, positions_BxT)
    stored = None
    if cache is not None:
      stored = (cache.k.at[:, cache.slots].set(k_BxTxHxK.astype(cache.k.dtype),
                                               mode='drop'),
                cache.v.at[:, cache.slots].set(v_BxTxHxK.astype(cache.v.dtype),
                                               mode='drop'))
    if cache is not None and cache.mode != 'prefill':
      # Decoding: the new queries against the cached keys (their own
      # included), masked by token index; dense, a row per new token.
      if cache.mode == 'write':
        k_all, v_all = stored
        k_pos, k_idx = cache.pos, cache.idx
      else:
        k_all = jnp.concatenate([cache.k, k_BxTxHxK], axis=1)
        v_all = jnp.concatenate([cache.v, v_BxTxHxK], axis=1)
        k_pos = jnp.concatenate([cache.pos, positions_BxT], axis=1)
        k_idx = jnp.concatenate([cache.idx, cache.new_idx])
      near, far = self.branches(q_BxTxHxK, k_all, positions_BxT, k_pos,
                                turned)
      logits = attention.masked_scores(near, far, window, self.position.bias,
                                       self.mask(cache.new_idx, k_idx))
      out_BxTxHxK = attention.attend(logits, v_all)
    else:
      near, far = self.branches(q_BxTxHxK, k_BxTxHxK, positions_BxT,
                                positions_BxT, turned)
      if self.collect_stats:
        mask_TxT = self.mask(jnp.arange(t), jnp.arange(t))
        logits = attention.masked_scores(near, far, window,
                                         self.position.bias, mask_TxT)
        self.sow(nnx.Intermediate, 'attention_stats',
                 attention.attention_stats(logits, mask_TxT))
        out_BxTxHxK = attention.attend(logits, v_BxTxHxK)
      else:
        out_BxTxHxK = attention.attention(
            near, v_BxTxHxK, bias_fn=self.position.bias, mask=self.mask,
            far=far, window=window, backend=self.backend, block=self.block,
            threshold=self.threshold)
    out = _dense(self.out, out_BxTxHxK.reshape(b, t, -1))
    if cache is None:
      return out
    return out, stored


def mask_from_config(cfg: ml_collections.ConfigDict) -> attention.Mask:
  """Causal, or LM-Infinite's Lambda-shaped mask (``cfg.lm_infinite``)."""
  lm = cfg.get('lm_infinite') or {}
  return attention.Mask(n_global=int(lm.get('n_global', 0)),
                        n_local=int(lm.get('n_local', 0)))


def clamp_from_config(cfg: ml_collections.ConfigDict) -> Optional[attention.Clamp]:
  """ReRoPE's window (``cfg.rerope``) or LM-Infinite's distance limit."""
  rerope = cfg.get('rerope') or {}
  lm = cfg.get('lm_infinite') or {}
  if int(rerope.get('window', 0)) > 0:
    return attention.Clamp(int(rerope['window']), float(rerope.get('leak', 0.0)))
  if int(lm.get('distance_limit', 0)) > 0 and int(lm.get('n_local', 0)) > 0:
    return attention.Clamp(int(lm['distance_limit']), 0.0)
  return None


class Mlp(nnx.Module):

  def __init__(self, cfg, *, rngs):
    dtype = DTYPES[cfg.dtype]
    self.up = nnx.Linear(cfg.d_model, cfg.mlp_dim, dtype=dtype, rngs=rngs)
    self.down = nnx.Linear(cfg.mlp_dim, cfg.d_model, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    # The activation in float32 whatever the compute dtype: elementwise
    # bf16 arithmetic is emulated on CPUs (6x slower here), and it is
    # rounded back before the next product anyway.
    h = jax.nn.gelu(_dense(self.up, x).astype(jnp.float32))
    return _dense(self.down, h.astype(x.dtype))


class Block(nnx.Module):
  """Pre-norm residual block: x + attn(norm(x)); x + mlp(norm(x))."""

  def __init__(self, cfg, position, *, rngs):
    self.attn_norm = nnx.RMSNorm(cfg.d_model, rngs=rngs)
    self.attn = Attention(cfg, position, rngs=rngs)
    self.mlp_norm = nnx.RMSNorm(cfg.d_model, rngs=rngs)
    self.mlp = Mlp(cfg, rngs=rngs)
    self.dropout = float(cfg.dropout)

  def __call__(self, x_BxTxD, positions_BxT, key=None, cache=None):
    k1 = k2 = None
    if key is not None:
      k1, k2 = jax.random.split(key)
    attn = self.attn(self.attn_norm(x_BxTxD), positions_BxT, cache)
    new_kv = None
    if cache is not None:
      attn, new_kv = attn
    x_BxTxD = x_BxTxD + _dropout(attn, self.dropout, k1)
    x_BxTxD = x_BxTxD + _dropout(self.mlp(self.mlp_norm(x_BxTxD)), self.dropout,
                                 k2)
    return x_BxTxD if cache is None else (x_BxTxD, new_kv)


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
    return self._logits(x_BxTxD)

  def _logits(self, x_BxTxD):
    x_BxTxD = self.final_norm(x_BxTxD)
    if self.tie_embeddings:
      logits_BxTxV = self.embed.attend(x_BxTxD) * (x_BxTxD.shape[-1] ** -0.5)
    else:
      logits_BxTxV = _dense(self.head, x_BxTxD)
    return logits_BxTxV.astype(jnp.float32)

  # ---------------------------------------------------------------- decoding

  def cache_capacity(self, max_len: int) -> int:
    """Slots a KV cache needs for ``max_len`` tokens: all of them, or under
    LM-Infinite's Lambda-shaped mask only the global and local tokens (the
    cache is bounded, so each new token costs the same however long the
    context grows)."""
    mask = self.blocks[0].attn.mask
    if mask.n_local:
      return min(max_len, mask.n_global + mask.n_local)
    return max_len

  def init_cache(self, batch: int, max_len: int) -> dict:
    """An empty KV cache for ``batch`` sequences of up to ``max_len`` tokens
    (unbounded under the Lambda-shaped mask)."""
    attn = self.blocks[0].attn
    c = self.cache_capacity(max_len)
    zeros = lambda: jnp.zeros((batch, c, attn.num_heads, attn.head_dim),
                              self.dtype)
    return {'k': [zeros() for _ in self.blocks],
            'v': [zeros() for _ in self.blocks],
            'pos': jnp.zeros((batch, c), jnp.int32),
            'idx': jnp.full((c,), -1, jnp.int32),
            'next': jnp.zeros((), jnp.int32)}

  def decode(self, tokens_BxT: jax.Array, positions_BxT: jax.Array,
             cache: dict, prefill: bool = False):
    """Logits of the next ``T`` tokens given the cached ones, and the cache
    with them added: ``(logits [B,T,V], cache)``.

    ``prefill=True`` (only on an empty cache) attends over the new tokens
    alone through the configured backend, so a long prompt costs what a
    forward pass costs; otherwise the new tokens attend densely over the
    cache and themselves. Token indices continue from ``cache['next']``.
    """
    t = tokens_BxT.shape[1]
    c = cache['idx'].shape[0]
    start = cache['next']
    new_idx = start + jnp.arange(t, dtype=jnp.int32)
    slots = self._slots(new_idx, start + t - 1, c)
    pos = cache['pos'].at[:, slots].set(positions_BxT.astype(jnp.int32),
                                        mode='drop')
    idx = cache['idx'].at[slots].set(new_idx, mode='drop')
    ring = bool(self.blocks[0].attn.mask.n_local)
    mode = 'prefill' if prefill else ('concat' if ring and t > 1 else 'write')
    seen_pos, seen_idx = ((pos, idx) if mode == 'write'
                          else (cache['pos'], cache['idx']))
    x_BxTxD = self.embed(tokens_BxT).astype(self.dtype)
    x_BxTxD = self.position.embed(x_BxTxD, positions_BxT)
    new_k, new_v = [], []
    for block, k_c, v_c in zip(self.blocks, cache['k'], cache['v']):
      layer = LayerCache(k_c, v_c, seen_pos, seen_idx, new_idx, slots, mode)
      x_BxTxD, (k_c, v_c) = block(x_BxTxD, positions_BxT, None, layer)
      new_k.append(k_c)
      new_v.append(v_c)
    cache = {'k': new_k, 'v': new_v, 'pos': pos, 'idx': idx,
             'next': start + t}
    return self._logits(x_BxTxD), cache

  def _slots(self, new_idx, last, capacity):
    """Cache slot of each new token, ``capacity`` (dropped) for a token that
    will not be needed. Bounded caches keep the global tokens in the first
    ``n_global`` slots and the local window in a ring after them."""
    mask = self.blocks[0].attn.mask
    if not mask.n_local or capacity < mask.n_global + mask.n_local:
      return jnp.where(new_idx < capacity, new_idx, capacity)
    g, n = mask.n_global, mask.n_local
    slot = jnp.where(new_idx < g, new_idx, g + (new_idx - g) % n)
    keep = (new_idx < g) | (new_idx > last - n)
    return jnp.where(keep, slot, capacity)


def cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
  """Per-token negative log-likelihood in nats, ``[B, T]`` (float32)."""
  logz_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
  target_logit_BxT = jnp.take_along_axis(
      logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  return logz_BxT - target_logit_BxT


def build(cfg: ml_collections.ConfigDict, seed: int) -> Transformer:
  """The model described by ``config.model``, initialised from ``seed``."""
  return Transformer(cfg, rngs=nnx.Rngs(params=seed))
