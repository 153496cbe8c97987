"""A small decoder-only Transformer in Flax NNX with pluggable positions.

token embedding -> position.embed -> N x [pre-norm causal self-attention
(position.rotate on q/k, position.bias on the logits), pre-norm MLP] ->
final norm -> LM head.

The model never branches on the encoding's name: it builds the encoding from
the registry and calls its three hooks. A per-layer encoding
(``is_per_layer``) gets one instance per block (the first also serves ``embed``), otherwise one
instance is shared by the embedding and every block. ``config.model.layers``
(``lmx.model.layer_plan``) may give each block its own encoding, sliding window
and length scaling: each encoding named there is built as above among the
blocks that use it.

Layers run one after another in Python (unrolled), or with
``scan_layers`` under one ``jax.lax.scan`` whose body is traced and
compiled once, so compile time does not grow with depth. The parameters
are stored per layer either way (``blocks/<i>/...``): the scan stacks them
inside the step (one copy of the block parameters, and of their gradient,
per step), so a checkpoint has one layout, every run saved before the
field existed loads unchanged, and a run may switch between the two at any
time (even on resume or for one evaluation). ``remat`` recomputes each
block's activations in the backward pass: ``full`` keeps only the block's
input, ``dots`` also keeps the products with weight matrices (not the
attention logits, whose products have batch dimensions).

Dense products go through ``lmx.model.ops`` (the plain product, or on CPU the
XLA:CPU workarounds of ``lmx.model.xla_cpu``); the KV cache's layout and slot
bookkeeping live in ``lmx.model.kv_cache``.
"""

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lmx.model import attention
from lmx.model import kv_cache
from lmx.model import layer_plan
from lmx.model import ops
from lmx import positions as positions_lib
from lmx import sharding
from lmx.model.kv_cache import LayerCache

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# config.model.remat -> what jax.checkpoint keeps of a block for the
# backward pass ('off': everything, no recomputation).
REMAT_POLICIES = {
    'off': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _dropout(x, rate: float, key: Optional[jax.Array]):
  if rate == 0.0 or key is None:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


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
               position: positions_lib.PositionEncoding, *, rngs: nnx.Rngs,
               layer: Optional[layer_plan.LayerSpec] = None):
    d, h = cfg.d_model, cfg.num_heads
    self.num_heads, self.head_dim = h, d // h
    dtype = DTYPES[cfg.dtype]
    self.qkv = nnx.Linear(d, 3 * d, use_bias=False, dtype=dtype, rngs=rngs)
    self.out = nnx.Linear(d, d, use_bias=False, dtype=dtype, rngs=rngs)
    self.position = position
    self.backend = cfg.attention
    self.block = int(cfg.attention_block)
    self.threshold = int(cfg.chunk_threshold)
    self.accelerator_threshold = int(cfg.accelerator_chunk_threshold)
    self.mask = mask_from_config(cfg, layer)
    self.qk_norm = bool(layer.qk_norm) if layer is not None else False
    self.clamp = clamp_from_config(cfg)
    scaling = cfg.length_scaling
    kind = layer.length_scaling if layer is not None else scaling.kind
    self.logn_len = (int(scaling.base_len) if kind == 'logn' else 0)
    self.llama4 = ((float(scaling.floor_scale), float(scaling.attn_scale))
                   if kind == 'llama4' else None)
    # SSMax: a learned s per head of this layer (``attention.ssmax_init``).
    init = (float(scaling.ssmax_init) or attention.ssmax_init(
        int(scaling.base_len))) if kind == 'ssmax' else 0.0
    self.ssmax = (nnx.Param(jnp.full((h,), init, jnp.float32))
                  if kind == 'ssmax' else None)
    # Set by evaluation (lmx.evaluation.runner.attention_diagnostics) to sow
    # attention statistics, and by lmx.evaluation.ood to sow the masked
    # logits themselves; Python flags read at trace time, so training and
    # every other forward pass never pay for them.
    self.collect_stats = False
    self.collect_logits = False
    self.dtype = dtype
    # Attention sinks (config.model.sinks; lmx.model.attention.sink_prefix): a
    # learned logit per head, and learned key/value slots.
    sinks = cfg.sinks
    self.sink_logit = (nnx.Param(jnp.zeros((h,), jnp.float32))
                       if sinks.logit else None)
    m = int(sinks.memory)
    memory = lambda: nnx.Param(jax.random.normal(rngs.params(),
                                                 (m, h, self.head_dim)))
    self.mem_k = memory() if m else None
    self.mem_v = memory() if m else None

  def prefix(self, q_BxTxHxK) -> Optional[attention.Prefix]:
    """The sink slots for these (turned) queries, or None."""
    value = lambda p: None if p is None else p[...].astype(q_BxTxHxK.dtype)
    return attention.sink_prefix(
        q_BxTxHxK, None if self.sink_logit is None else self.sink_logit[...],
        value(self.mem_k), value(self.mem_v))

  def content_shapes(self, batch: int):
    """What one token's content key side looks like, for the KV cache."""
    return _content_shapes(self, batch)

  def branches(self, q_BxTxHxK, k_BxSxHxK, q_pos_BxT, k_pos_BxS,
               turned: bool = False):
    """The near branch (the encoding at the true positions) and, with a
    distance clamp, the far branch at the clamped positions. ``turned``:
    q and k come already turned (and there is no clamp)."""
    if turned:
      return attention.Branch(q_BxTxHxK, k_BxSxHxK, q_pos_BxT, k_pos_BxS), None
    qn, kn = self.turn(q_BxTxHxK, k_BxSxHxK, q_pos_BxT, k_pos_BxS)
    near = attention.Branch(qn, kn, q_pos_BxT, k_pos_BxS)
    if self.clamp is None:
      return near, None
    qf_pos, kf_pos = self.clamp.far_positions(q_pos_BxT, k_pos_BxS)
    qf, kf = self.turn(q_BxTxHxK, k_BxSxHxK, qf_pos, kf_pos)
    return near, attention.Branch(qf, kf, qf_pos, kf_pos)

  def turn(self, q_BxTxHxK, k_BxSxHxK, q_pos_BxT, k_pos_BxS):
    """q and k as the encoding turns them at these positions, then
    normalised where the layer has qk-norm (Llama 4 normalises after
    RoPE)."""
    q, k = self.position.rotate(q_BxTxHxK, k_BxSxHxK, q_pos_BxT, k_pos_BxS)
    if self.qk_norm:
      q, k = attention.qk_norm(q), attention.qk_norm(k)
    return q, k

  def __call__(self, x_BxTxD, positions_BxT,
               cache: Optional[LayerCache] = None):
    """``(out [B,T,D], (k, v, aux) of the cache with this call's stored)``;
    the second is None without a cache."""
    b, t, _ = x_BxTxD.shape
    # Three products from the slices of the one qkv kernel: the same values
    # as one product split three ways, but the backward pass then adds three
    # input gradients instead of concatenating (padding) the three output
    # gradients into one [B, T, 3, H, K] array, a transposing copy that took
    # 5-8% of a training step on a 2-core CPU.
    d = self.num_heads * self.head_dim
    q_BxTxHxK, k_BxTxHxK, v_BxTxHxK = (
        ops.dense(self.qkv, x_BxTxD, slice(i * d, (i + 1) * d)).reshape(
            b, t, self.num_heads, self.head_dim) for i in range(3))
    if self.logn_len or self.llama4:
      scale_BxT = (attention.logn_query_scale(positions_BxT, self.logn_len)
                   if self.logn_len else
                   attention.llama4_query_scale(positions_BxT, *self.llama4))
      q_BxTxHxK = (q_BxTxHxK.astype(jnp.float32)
                   * scale_BxT[:, :, None, None]).astype(q_BxTxHxK.dtype)
    ls_BxHxT = None
    if self.ssmax is not None:   # n from the token index of each query
      q_idx_T = cache.new_idx if cache is not None else jnp.arange(t)
      ls_BxHxT = jnp.broadcast_to(
          attention.ssmax_logit_scale(self.ssmax[...], q_idx_T, self.mask),
          (b, self.num_heads, t))
    window = self.clamp.window if self.clamp is not None else 0
    # The content term (None for most encodings), from the projected q, k
    # before any turn; when decoding it continues from the cached token
    # before this call's.
    content = self.position.content(
        x_BxTxD, q_BxTxHxK, k_BxTxHxK, positions_BxT,
        None if cache is None else cache.previous_aux())
    # Decoding with static keys: turn the new queries and keys once, and
    # cache the keys turned (see the class docstring).
    turned = (cache is not None and self.clamp is None
              and self.position.keys_static())
    if turned:
      q_BxTxHxK, k_BxTxHxK = self.turn(q_BxTxHxK, k_BxTxHxK, positions_BxT,
                                       positions_BxT)
    aux_new = None if content is None else content.k_side
    stored = None if cache is None else (
        *cache.store(k_BxTxHxK, v_BxTxHxK), cache.store_aux(aux_new))
    if cache is not None and cache.mode != 'prefill':
      # Decoding: the new queries against the cached keys (their own
      # included), masked by token index; dense, a row per new token.
      k_all, v_all, k_pos, k_idx = cache.visible(stored[:2], k_BxTxHxK,
                                                 v_BxTxHxK, positions_BxT)
      if content is not None:
        content = dataclasses.replace(
            content, k_side=cache.visible_aux(stored[2], aux_new))
      near, far = self.branches(q_BxTxHxK, k_all, positions_BxT, k_pos,
                                turned)
      visible = self.mask(cache.new_idx, k_idx)
      logits = attention.masked_scores(near, far, window, self.position.bias,
                                       visible, content, k_idx,
                                       logit_scale=ls_BxHxT)
      out_BxTxHxK = attention.attend(
          logits, v_all, self.prefix(near.q),
          attention.content_values(near, far, window, content, visible,
                                   k_idx))
    else:
      near, far = self.branches(q_BxTxHxK, k_BxTxHxK, positions_BxT,
                                positions_BxT, turned)
      if self.collect_stats or self.collect_logits:
        mask_TxT = self.mask(jnp.arange(t), jnp.arange(t))
        logits = attention.masked_scores(near, far, window,
                                         self.position.bias, mask_TxT,
                                         content, logit_scale=ls_BxHxT)
        if self.collect_stats:
          self.sow(nnx.Intermediate, 'attention_stats',
                   attention.attention_stats(logits, mask_TxT))
        if self.collect_logits:
          self.sow(nnx.Intermediate, 'attention_logits', logits)
        out_BxTxHxK = attention.attend(
            logits, v_BxTxHxK, self.prefix(near.q),
            attention.content_values(near, far, window, content, mask_TxT))
      else:
        out_BxTxHxK = attention.attention(
            near, v_BxTxHxK, bias_fn=self.position.bias, mask=self.mask,
            far=far, window=window, backend=self.backend, block=self.block,
            threshold=self.threshold,
            accelerator_threshold=self.accelerator_threshold,
            content=content, prefix=self.prefix(near.q),
            logit_scale=ls_BxHxT)
    return ops.dense(self.out, out_BxTxHxK.reshape(b, t, -1)), stored


def _content_shapes(attn: 'Attention', batch: int):
  """One token's content key side (shape-dtype structs ``[B, 1, ...]``)
  of ``attn``'s encoding, or None."""
  if not attn.position.has_content():
    return None
  d = attn.num_heads * attn.head_dim
  x = jax.ShapeDtypeStruct((batch, 1, d), attn.dtype)
  qk = jax.ShapeDtypeStruct((batch, 1, attn.num_heads, attn.head_dim),
                            attn.dtype)
  pos = jax.ShapeDtypeStruct((batch, 1), jnp.int32)
  graphdef, state = nnx.split(attn.position)

  def k_side(state, x, q, k, pos):
    term = nnx.merge(graphdef, state).content(x, q, k, pos)
    return None if term is None else term.k_side

  return jax.eval_shape(k_side, state, x, qk, qk, pos)


def mask_from_config(cfg: ml_collections.ConfigDict,
                     layer: Optional[layer_plan.LayerSpec] = None
                     ) -> attention.Mask:
  """Causal, LM-Infinite's Lambda-shaped mask (``cfg.lm_infinite``), or
  the layer's sliding window (``cfg.layers.window``)."""
  if layer is not None:
    return layer_plan.layer_mask(cfg, layer)
  lm = cfg.lm_infinite
  return attention.Mask(n_global=int(lm.n_global), n_local=int(lm.n_local))


def clamp_from_config(cfg: ml_collections.ConfigDict):
  """The far branch: ReRoPE's window (``cfg.rerope``), LM-Infinite's
  distance limit, or Self-Extend's grouped positions (``cfg.self_extend``);
  None without any (the config check allows one at most)."""
  rerope, lm, se = cfg.rerope, cfg.lm_infinite, cfg.self_extend
  if int(rerope.window) > 0:
    return attention.Clamp(int(rerope.window), float(rerope.leak))
  if int(lm.distance_limit) > 0 and int(lm.n_local) > 0:
    return attention.Clamp(int(lm.distance_limit), 0.0)
  if int(se.window) > 0:
    return attention.SelfExtend(int(se.window), int(se.group))
  return None


class Mlp(nnx.Module):

  def __init__(self, cfg, *, rngs):
    dtype = DTYPES[cfg.dtype]
    self.up = nnx.Linear(cfg.d_model, cfg.mlp_dim, dtype=dtype, rngs=rngs)
    self.down = nnx.Linear(cfg.mlp_dim, cfg.d_model, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    # On a CPU the activation is float32 whatever the compute dtype:
    # elementwise bf16 arithmetic is emulated there (6x slower here), and it
    # is rounded back before the next product anyway. Accelerators compute
    # it in the compute dtype, and keep half the bytes for the backward pass.
    h = ops.dense(self.up, x)
    if ops.platform() == 'cpu':
      return ops.dense(self.down,
                       jax.nn.gelu(h.astype(jnp.float32)).astype(x.dtype))
    return ops.dense(self.down, jax.nn.gelu(h))


class Block(nnx.Module):
  """Pre-norm residual block: x + attn(norm(x)); x + mlp(norm(x))."""

  def __init__(self, cfg, position, *, rngs, layer=None):
    self.attn_norm = nnx.RMSNorm(cfg.d_model, rngs=rngs)
    self.attn = Attention(cfg, position, rngs=rngs, layer=layer)
    self.mlp_norm = nnx.RMSNorm(cfg.d_model, rngs=rngs)
    self.mlp = Mlp(cfg, rngs=rngs)
    self.dropout = float(cfg.dropout)

  def __call__(self, x_BxTxD, positions_BxT, key=None, cache=None):
    """``(x [B,T,D], the layer's cache after this call or None)``."""
    k1 = k2 = None
    if key is not None:
      k1, k2 = jax.random.split(key)
    attn, new_kv = self.attn(self.attn_norm(x_BxTxD), positions_BxT, cache)
    x_BxTxD = x_BxTxD + _dropout(attn, self.dropout, k1)
    x_BxTxD = x_BxTxD + _dropout(self.mlp(self.mlp_norm(x_BxTxD)), self.dropout,
                                 k2)
    return x_BxTxD, new_kv


class Transformer(nnx.Module):
  """Decoder-only LM: ``(tokens [B,T], positions [B,T]) -> logits [B,T,V]``."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    self.dtype = DTYPES[cfg.dtype]
    self.dropout = float(cfg.dropout)
    self.tie_embeddings = bool(cfg.tie_embeddings)
    self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model,
                           embedding_init=nnx.initializers.normal(1.0),
                           rngs=rngs)
    specs = layer_plan.plan(cfg)
    # Each encoding a layer names: an instance per block that uses it
    # (is_per_layer), or one shared by those blocks.
    shared = {}
    layer_positions = []
    for spec in specs:
      encoding_cls = positions_lib.get_encoding(spec.position)
      view = layer_plan.view(cfg, spec.position)
      if encoding_cls.is_per_layer(view):
        layer_positions.append(encoding_cls(view, rngs=rngs))
      else:
        if spec.position not in shared:
          shared[spec.position] = encoding_cls(view, rngs=rngs)
        layer_positions.append(shared[spec.position])
    # The embedding hook is asked of the first layer's instance, so a
    # per-layer encoding has no extra, unused copy here (per-layer lists
    # hold no absolute encoding: lmx.model.layer_plan.check).
    self.position = layer_positions[0]
    self.blocks = nnx.List([
        Block(cfg, p, rngs=rngs, layer=spec)
        for p, spec in zip(layer_positions, specs)])
    # The KV cache's slots follow the mask every layer shares, else one
    # slot per token (each layer masks the cached token indices itself).
    self.cache_mask = layer_plan.cache_mask(cfg)
    self.final_norm = nnx.RMSNorm(cfg.d_model, rngs=rngs)
    self.scan_layers = bool(cfg.scan_layers)
    self.remat = str(cfg.remat)
    if not self.tie_embeddings:
      self.head = nnx.Linear(cfg.d_model, cfg.vocab_size, use_bias=False,
                             dtype=self.dtype, rngs=rngs)
    # Set by lmx.evaluation.ood to sow each block's output (read at trace
    # time: other forward passes never pay for it).
    self.collect_hidden = False

  def __call__(self, tokens_BxT: jax.Array, positions_BxT: jax.Array,
               dropout_key: Optional[jax.Array] = None) -> jax.Array:
    return self._logits(self.features(tokens_BxT, positions_BxT, dropout_key))

  def features(self, tokens_BxT: jax.Array, positions_BxT: jax.Array,
               dropout_key: Optional[jax.Array] = None) -> jax.Array:
    """The last block's output ``[B, T, D]``, before the final norm and the
    head (``token_losses`` computes those a chunk of tokens at a time)."""
    x_BxTxD = self.embed(tokens_BxT).astype(self.dtype)
    x_BxTxD = self.position.embed(x_BxTxD, positions_BxT)
    keys = [None] * (len(self.blocks) + 1)
    if dropout_key is not None and self.dropout > 0:
      keys = list(jax.random.split(dropout_key, len(self.blocks) + 1))
    x_BxTxD = _dropout(x_BxTxD, self.dropout, keys[-1])
    return self._blocks(x_BxTxD, positions_BxT, keys[:-1])

  def _diagnosing(self) -> bool:
    """Whether a forward pass sows intermediates (evaluation diagnostics),
    which only the unrolled layers do."""
    return self.collect_hidden or any(
        b.attn.collect_stats or b.attn.collect_logits for b in self.blocks)

  def _blocks(self, x_BxTxD, positions_BxT, keys):
    """Every block on ``x``: unrolled, or under one scan (``scan_layers``);
    each under ``jax.checkpoint`` with ``remat``."""
    policy = REMAT_POLICIES[self.remat]
    diagnosing = self._diagnosing()
    if self.scan_layers and not diagnosing and len(self.blocks) > 1:
      return self._scanned(x_BxTxD, positions_BxT, keys, policy)
    for block, key in zip(self.blocks, keys):
      if policy is None or diagnosing:
        x_BxTxD, _ = block(x_BxTxD, positions_BxT, key)
      else:
        graphdef, state = nnx.split(block)
        x_BxTxD = jax.checkpoint(_block_fn(graphdef, positions_BxT),
                                 policy=policy)(state, x_BxTxD, key)
      if self.collect_hidden:
        self.sow(nnx.Intermediate, 'hidden_states', x_BxTxD)
    return x_BxTxD

  def _scanned(self, x_BxTxD, positions_BxT, keys, policy):
    splits = [nnx.split(block) for block in self.blocks]
    graphdef = splits[0][0]
    states = [state for _, state in splits]
    structure = jax.tree.structure(states[0])
    if any(jax.tree.structure(s) != structure for s in states[1:]):
      raise ValueError('scan_layers needs blocks of one structure.')
    # Each layer's state holds the parameters it reads, a shared encoding's
    # included: the stack repeats those, and their gradients add up again
    # through it.
    stacked = sharding.constrain_stacked(
        jax.tree.map(lambda *xs: jnp.stack(xs), *states))
    fn = _block_fn(graphdef, positions_BxT)
    if policy is not None:
      fn = jax.checkpoint(fn, policy=policy)
    with_keys = keys[0] is not None
    xs = (stacked, jnp.stack(keys)) if with_keys else stacked

    def body(x, layer):
      state, key = layer if with_keys else (layer, None)
      return sharding.constrain_rows(fn(state, x, key)), None

    x_BxTxD, _ = jax.lax.scan(body, x_BxTxD, xs)
    return x_BxTxD

  def _logits(self, x_BxTxD):
    x_BxTxD = self.final_norm(x_BxTxD)
    if self.tie_embeddings:
      logits_BxTxV = self.embed.attend(x_BxTxD) * (x_BxTxD.shape[-1] ** -0.5)
    else:
      logits_BxTxV = ops.dense(self.head, x_BxTxD)
    return logits_BxTxV.astype(jnp.float32)

  # ---------------------------------------------------------------- decoding

  def cache_capacity(self, max_len: int) -> int:
    """Slots a KV cache needs for ``max_len`` tokens (``lmx.model.kv_cache``)."""
    return kv_cache.capacity(self.cache_mask, max_len)

  def init_cache(self, batch: int, max_len: int) -> dict:
    """An empty KV cache for ``batch`` sequences of up to ``max_len`` tokens
    (unbounded under the Lambda-shaped mask)."""
    attn = self.blocks[0].attn
    return kv_cache.init(len(self.blocks), batch,
                         self.cache_capacity(max_len), attn.num_heads,
                         attn.head_dim, self.dtype,
                         [b.attn.content_shapes(batch) for b in self.blocks])

  def decode(self, tokens_BxT: jax.Array, positions_BxT: jax.Array,
             cache: dict, prefill: bool = False):
    """Logits of the next ``T`` tokens given the cached ones, and the cache
    with them added: ``(logits [B,T,V], cache)``.

    ``prefill=True`` (only on an empty cache) attends over the new tokens
    alone through the configured backend, so a long prompt costs what a
    forward pass costs; otherwise the new tokens attend densely over the
    cache and themselves (``lmx.model.kv_cache.begin``).
    """
    call = kv_cache.begin(cache, self.cache_mask, positions_BxT, prefill)
    x_BxTxD = self.embed(tokens_BxT).astype(self.dtype)
    x_BxTxD = self.position.embed(x_BxTxD, positions_BxT)
    new_k, new_v, new_aux = [], [], []
    aux = cache.get('aux') or [None] * len(self.blocks)
    for block, k_c, v_c, a_c in zip(self.blocks, cache['k'], cache['v'], aux):
      x_BxTxD, (k_c, v_c, a_c) = block(x_BxTxD, positions_BxT, None,
                                       call.layer(k_c, v_c, a_c))
      new_k.append(k_c)
      new_v.append(v_c)
      new_aux.append(a_c)
    return self._logits(x_BxTxD), call.finish(new_k, new_v, new_aux)


def _block_fn(graphdef, positions_BxT):
  """``(block state, x, dropout key) -> x``: one block as a pure function,
  for ``jax.checkpoint`` and the scan body."""
  def fn(state, x_BxTxD, key):
    return nnx.merge(graphdef, state)(x_BxTxD, positions_BxT, key)[0]
  return fn


def token_losses(model: Transformer, tokens_BxT: jax.Array,
                 positions_BxT: jax.Array, targets_BxT: jax.Array,
                 dropout_key: Optional[jax.Array] = None,
                 chunk: int = 0) -> jax.Array:
  """Per-token losses ``[B, T]`` (nats, float32) of ``model``.

  With ``chunk`` > 0 the final norm, the head and the loss run on ``chunk``
  tokens of each sequence at a time under ``jax.checkpoint``, so the
  float32 logits ``[B, T, V]`` never exist at once, in the forward pass or
  the backward one: only ``[B, chunk, V]`` (the same values, per token).
  """
  t = tokens_BxT.shape[1]
  if not chunk or chunk >= t:
    return cross_entropy(model(tokens_BxT, positions_BxT, dropout_key),
                         targets_BxT)
  x_BxTxD = model.features(tokens_BxT, positions_BxT, dropout_key)
  b, _, d = x_BxTxD.shape
  n = -(-t // chunk)
  pad = n * chunk - t
  x_BxTxD = jnp.pad(x_BxTxD, ((0, 0), (0, pad), (0, 0)))
  y_BxT = jnp.pad(targets_BxT, ((0, 0), (0, pad)))
  x_NxBxCxD = x_BxTxD.reshape(b, n, chunk, d).swapaxes(0, 1)
  y_NxBxC = y_BxT.reshape(b, n, chunk).swapaxes(0, 1)

  @jax.checkpoint
  def one(x_BxCxD, y_BxC):
    return cross_entropy(model._logits(x_BxCxD), y_BxC)  # pylint: disable=protected-access

  _, losses_NxBxC = jax.lax.scan(
      lambda carry, xy: (carry, one(*xy)), None, (x_NxBxCxD, y_NxBxC))
  return losses_NxBxC.swapaxes(0, 1).reshape(b, n * chunk)[:, :t]


def cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
  """Per-token negative log-likelihood in nats, ``[B, T]`` (float32)."""
  logz_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
  target_logit_BxT = jnp.take_along_axis(
      logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  return logz_BxT - target_logit_BxT


def build(cfg: ml_collections.ConfigDict, seed: int) -> Transformer:
  """The model described by ``config.model``, initialised from ``seed``."""
  return Transformer(cfg, rngs=nnx.Rngs(params=seed))
