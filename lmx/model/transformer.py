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
from lmx.model import gating
from lmx.model import kv_cache
from lmx.model import layer_plan
from lmx.model import ops
from lmx import positions as positions_lib
from lmx.positions import dape as score_adapter
from lmx.positions import far as far_lib
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


class Probe:
  """What a diagnostic forward pass records, passed to
  ``Transformer.__call__`` (evaluation's attention statistics, LM-Infinite's
  OOD factors): the model itself holds no diagnostic state, so training and
  every other forward pass never pay for it.

  ``stats``: each block's ``attention.attention_stats``; ``logits``: each
  block's masked logits ``[B, H, T, T]``; ``hidden``: each block's output
  ``[B, T, D]``. One entry per block in order; the layers run unrolled while
  a probe is passed, and the attention with its logits materialised. The
  entries are values of the traced pass, for the caller's function to
  return."""

  def __init__(self, *, stats: bool = False, logits: bool = False,
               hidden: bool = False):
    self.want_stats, self.want_logits, self.want_hidden = stats, logits, hidden
    self.stats: list = []
    self.logits: list = []
    self.hidden: list = []

  @property
  def attention(self) -> bool:
    """Whether it asks for the attention's logits or statistics."""
    return self.want_stats or self.want_logits

  def record_attention(self, logits_BxHxTxS, mask_TxS,
                       normaliser=None) -> None:
    if self.want_stats:
      self.stats.append(attention.attention_stats(logits_BxHxTxS, mask_TxS,
                                                  normaliser))
    if self.want_logits:
      self.logits.append(logits_BxHxTxS)

  def record_hidden(self, x_BxTxD) -> None:
    if self.want_hidden:
      self.hidden.append(x_BxTxD)


class Attention(nnx.Module):
  """Multi-head causal self-attention that asks the encoding for q/k and bias.

  What the layer computes is its ``attention.Spec`` (``layer_plan.
  attention_spec``), built once here: the mask, the far branch, the length
  scaling, qk-norm and the backend. The layer holds the learned values its
  length scaling and its far members ask for (SSMax's ``s``, sink slots),
  under the names they give.

  Decoding (``decode``) caches keys with their positions. Where the encoding
  turns each key by its own position alone (``keys_static()``: RoPE without
  dynamic scaling, and every encoding that turns nothing) and no far branch
  asks for a second turn, they are cached turned, so a decoding step turns
  only its new keys. Otherwise (xPos, whose key scale is centred on all the
  keys; dynamic NTK; ReRoPE and the distance limit) they are cached *before*
  the encoding turns them, and a step asks the encoding exactly what a full
  forward pass asks. Either way every encoding and clamp decodes with the
  logits of the full pass. (Dynamic NTK is the one exception past its
  original length, as with any KV cache: the deeper layers' cached keys
  come from hidden states computed at the scale of their own step.)
  """

  def __init__(self, cfg: ml_collections.ConfigDict,
               position: positions_lib.PositionEncoding, *, rngs: nnx.Rngs,
               layer: layer_plan.LayerSpec):
    d, h = cfg.d_model, cfg.num_heads
    self.num_heads, self.head_dim = h, d // h
    dtype = DTYPES[cfg.dtype]
    self.qkv = nnx.Linear(d, 3 * d, use_bias=False, dtype=dtype, rngs=rngs)
    self.out = nnx.Linear(d, d, use_bias=False, dtype=dtype, rngs=rngs)
    self.position = position
    self.spec = layer_plan.attention_spec(cfg, layer)
    self.dtype = dtype
    scaling = self.spec.scaling
    if scaling.param:
      setattr(self, scaling.param, nnx.Param(scaling.init_param(h)))
    # Learned slots of the far members (attention sinks): (member, names).
    slots = []
    for member in far_lib.active(cfg):
      values = member.init_params(cfg, h, self.head_dim, rngs.params)
      for name, value in values.items():
        setattr(self, name, nnx.Param(value))
      if values:
        slots.append((member.name, tuple(values)))
    self.slots = tuple(slots)
    # A score adapter's per-layer parameters (DAPE's MLP: dape_w1, ...).
    self.adapter = score_adapter.build(cfg)
    values = (self.adapter.init_params(h, rngs.params())
              if self.adapter.active else {})
    for name, value in values.items():
      setattr(self, f'{self.adapter.param}_{name}', nnx.Param(value))
    self.adapter_params = tuple(values)
    # Gated attention's W_theta (lmx.model.gating), only when on.
    width = gating.gate_width(cfg.get('attention_gate', gating.OFF), h,
                              self.head_dim)
    if width:
      self.out_gate = nnx.Linear(d, width, use_bias=False, dtype=dtype,
                                 rngs=rngs)

  def _adapt(self):
    """The score adapter's map of (logits, bias) with this layer's
    parameters, or None."""
    if not self.adapter.active:
      return None
    return self.adapter.adapt({
        n: getattr(self, f'{self.adapter.param}_{n}')[...]
        for n in self.adapter_params})

  def _output(self, x_BxTxD, out_BxTxHxK):
    """The heads' outputs, gated where the layer has a gate, merged and
    projected: ``[B, T, D]``."""
    b, t = out_BxTxHxK.shape[:2]
    if hasattr(self, 'out_gate'):
      out_BxTxHxK = gating.gate(out_BxTxHxK, ops.dense(self.out_gate, x_BxTxD))
    return ops.dense(self.out, out_BxTxHxK.reshape(b, t, -1))

  def prefix(self, q_BxTxHxK) -> Optional[far_lib.Prefix]:
    """The slots before the keys for these (turned) queries, or None."""
    parts = []
    for name, attrs in self.slots:
      values = {a: getattr(self, a)[...] for a in attrs}
      part = far_lib.REGISTRY[name].prefix(values, q_BxTxHxK,
                                           key_norm=self.key_norm)
      if part is not None:
        parts.append(part)
    if len(parts) < 2:
      return parts[0] if parts else None
    return far_lib.Prefix(jnp.concatenate([p.logits for p in parts], -1),
                          jnp.concatenate([p.v for p in parts], 1))

  def key_norm(self, k_BxSxHxK):
    """Keys without a position (memory slots) normalised as ``turn``
    normalises the layer's keys: the encoding's own norm, then qk-norm."""
    k = self.position.key_norm(k_BxSxHxK)
    return attention.qk_norm(k) if self.spec.qk_norm else k

  def content_shapes(self, batch: int):
    """What one token's content key side looks like, for the KV cache."""
    return _content_shapes(self, batch)

  def branches(self, q_BxTxHxK, k_BxSxHxK, q_pos_BxT, k_pos_BxS,
               turned: bool = False):
    """The near branch (the encoding at the true positions) and, with a
    far branch, the encoding at its positions (a tuple of branches for a
    far member with several, ``branch_positions``). ``turned``: q and k come
    already turned (and there is no far branch)."""
    if turned:
      return attention.Branch(q_BxTxHxK, k_BxSxHxK, q_pos_BxT, k_pos_BxS), None
    qn, kn = self.turn(q_BxTxHxK, k_BxSxHxK, q_pos_BxT, k_pos_BxS)
    near = attention.Branch(qn, kn, q_pos_BxT, k_pos_BxS)
    if self.spec.far is None:
      return near, None
    def far_branch(qf_pos, kf_pos):
      qf, kf = self.turn(q_BxTxHxK, k_BxSxHxK, qf_pos, kf_pos)
      return attention.Branch(qf, kf, qf_pos, kf_pos)

    rule = self.spec.far
    if hasattr(rule, 'branch_positions'):   # several far branches (DCA)
      return near, tuple(far_branch(*p) for p in
                         rule.branch_positions(q_pos_BxT, k_pos_BxS))
    return near, far_branch(*rule.far_positions(q_pos_BxT, k_pos_BxS))

  def turn(self, q_BxTxHxK, k_BxSxHxK, q_pos_BxT, k_pos_BxS):
    """q and k as the encoding turns them at these positions, then
    normalised where the layer has qk-norm (Llama 4 normalises after
    RoPE)."""
    q, k = self.position.rotate(q_BxTxHxK, k_BxSxHxK, q_pos_BxT, k_pos_BxS)
    if self.spec.qk_norm:
      q, k = attention.qk_norm(q), attention.qk_norm(k)
    return q, k

  def _project(self, x_BxTxD, positions_BxT, idx_T):
    """q (times the length scaling's query scale at these positions and
    token indices), k, v ``[B, T, H, K]``."""
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
    scale_BxT = self.spec.scaling.query_scale_at(positions_BxT, idx_T)
    if scale_BxT is not None:
      q_BxTxHxK = (q_BxTxHxK.astype(jnp.float32)
                   * scale_BxT[:, :, None, None]).astype(q_BxTxHxK.dtype)
    return q_BxTxHxK, k_BxTxHxK, v_BxTxHxK

  def _logit_scale(self, q_idx_T, batch: int):
    """The length scaling's ``[B, H, T]`` factors of each query's scores
    (``n`` from the token index of each query), or None."""
    scaling = self.spec.scaling
    if not scaling.param:
      return None
    scale_HxT = scaling.logit_scale(getattr(self, scaling.param)[...],
                                    q_idx_T, self.spec.mask)
    return jnp.broadcast_to(scale_HxT,
                            (batch, self.num_heads, q_idx_T.shape[0]))

  def _call(self, near, far, v, content, logit_scale) -> attention.Call:
    return attention.Call(near, v, far, bias_fn=self.position.bias,
                          encoding=self.position, content=content,
                          prefix=self.prefix(near.q), logit_scale=logit_scale,
                          adapt=self._adapt())

  def __call__(self, x_BxTxD, positions_BxT, probe: Optional[Probe] = None):
    """``[B, T, D]``: attention over the sequence itself, through the
    backend the spec chooses, or with the logits materialised for a
    ``probe`` that asks for them."""
    b, t, _ = x_BxTxD.shape
    idx_T = jnp.arange(t)
    q_BxTxHxK, k_BxTxHxK, v_BxTxHxK = self._project(x_BxTxD, positions_BxT,
                                                    idx_T)
    # The content term (None for most encodings), from the projected q, k
    # before any turn.
    content = self.position.content(x_BxTxD, q_BxTxHxK, k_BxTxHxK,
                                    positions_BxT, None)
    near, far = self.branches(q_BxTxHxK, k_BxTxHxK, positions_BxT,
                              positions_BxT)
    call = self._call(near, far, v_BxTxHxK, content,
                      self._logit_scale(idx_T, b))
    if probe is not None and probe.attention:
      out_BxTxHxK, logits = attention.explicit(self.spec, call, idx_T, idx_T)
      visible = self.spec.mask(idx_T, idx_T)
      if self.spec.normaliser is not None:   # the pairs it weighs
        visible = self.spec.normaliser.restrict(visible, idx_T, idx_T)
      probe.record_attention(logits, visible, self.spec.normaliser)
    else:
      out_BxTxHxK = attention.attention(self.spec, call)
    return self._output(x_BxTxD, out_BxTxHxK)

  def decode(self, x_BxTxD, positions_BxT, cache: LayerCache):
    """``(out [B, T, D], (k, v, aux) of the cache with this call's
    stored)``: the new tokens against the cached ones and themselves. A
    prefill (an empty cache) runs through the backend as a forward pass
    does; a step attends densely, a row per new token."""
    b, t, _ = x_BxTxD.shape
    q_BxTxHxK, k_BxTxHxK, v_BxTxHxK = self._project(x_BxTxD, positions_BxT,
                                                    cache.new_idx)
    logit_scale = self._logit_scale(cache.new_idx, b)
    # The content term continues from the cached token before this call's.
    content = self.position.content(x_BxTxD, q_BxTxHxK, k_BxTxHxK,
                                    positions_BxT, cache.previous_aux())
    # Static keys: turn the new queries and keys once, and cache the keys
    # turned (see the class docstring).
    turned = self.spec.far is None and self.position.keys_static()
    if turned:
      q_BxTxHxK, k_BxTxHxK = self.turn(q_BxTxHxK, k_BxTxHxK, positions_BxT,
                                       positions_BxT)
    aux_new = None if content is None else content.k_side
    stored = (*cache.store(k_BxTxHxK, v_BxTxHxK), cache.store_aux(aux_new))
    if cache.mode == 'prefill':
      near, far = self.branches(q_BxTxHxK, k_BxTxHxK, positions_BxT,
                                positions_BxT, turned)
      out_BxTxHxK = attention.attention(
          self.spec, self._call(near, far, v_BxTxHxK, content, logit_scale))
    else:
      k_all, v_all, k_pos, k_idx = cache.visible(stored[:2], k_BxTxHxK,
                                                 v_BxTxHxK, positions_BxT)
      if content is not None:
        content = dataclasses.replace(
            content, k_side=cache.visible_aux(stored[2], aux_new))
      near, far = self.branches(q_BxTxHxK, k_all, positions_BxT, k_pos,
                                turned)
      out_BxTxHxK, _ = attention.explicit(
          self.spec, self._call(near, far, v_all, content, logit_scale),
          cache.new_idx, k_idx)
    return self._output(x_BxTxD, out_BxTxHxK), stored


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

  def __init__(self, cfg, position, *, rngs, layer: layer_plan.LayerSpec):
    self.attn_norm = nnx.RMSNorm(cfg.d_model, rngs=rngs)
    self.attn = Attention(cfg, position, rngs=rngs, layer=layer)
    self.mlp_norm = nnx.RMSNorm(cfg.d_model, rngs=rngs)
    self.mlp = Mlp(cfg, rngs=rngs)
    self.dropout = float(cfg.dropout)

  def __call__(self, x_BxTxD, positions_BxT, key=None, probe=None):
    k1 = k2 = None
    if key is not None:
      k1, k2 = jax.random.split(key)
    attn = self.attn(self.attn_norm(x_BxTxD), positions_BxT, probe)
    x_BxTxD = x_BxTxD + _dropout(attn, self.dropout, k1)
    return x_BxTxD + _dropout(self.mlp(self.mlp_norm(x_BxTxD)), self.dropout,
                              k2)

  def decode(self, x_BxTxD, positions_BxT, cache):
    """``(x [B,T,D], the layer's cache after this call)``."""
    attn, new_kv = self.attn.decode(self.attn_norm(x_BxTxD), positions_BxT,
                                    cache)
    x_BxTxD = x_BxTxD + attn
    return x_BxTxD + self.mlp(self.mlp_norm(x_BxTxD)), new_kv


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

  def __call__(self, tokens_BxT: jax.Array, positions_BxT: jax.Array,
               dropout_key: Optional[jax.Array] = None,
               probe: Optional[Probe] = None) -> jax.Array:
    """Logits ``[B, T, V]`` (float32); a ``probe`` records what it asks
    for on the way."""
    return self._logits(self.features(tokens_BxT, positions_BxT, dropout_key,
                                      probe))

  def features(self, tokens_BxT: jax.Array, positions_BxT: jax.Array,
               dropout_key: Optional[jax.Array] = None,
               probe: Optional[Probe] = None) -> jax.Array:
    """The last block's output ``[B, T, D]``, before the final norm and the
    head (``token_losses`` computes those a chunk of tokens at a time)."""
    x_BxTxD = self.embed(tokens_BxT).astype(self.dtype)
    x_BxTxD = self.position.embed(x_BxTxD, positions_BxT)
    keys = [None] * (len(self.blocks) + 1)
    if dropout_key is not None and self.dropout > 0:
      keys = list(jax.random.split(dropout_key, len(self.blocks) + 1))
    x_BxTxD = _dropout(x_BxTxD, self.dropout, keys[-1])
    return self._blocks(x_BxTxD, positions_BxT, keys[:-1], probe)

  def _blocks(self, x_BxTxD, positions_BxT, keys, probe=None):
    """Every block on ``x``: unrolled, or under one scan (``scan_layers``);
    each under ``jax.checkpoint`` with ``remat``. With a probe, unrolled
    and without remat, so it sees every block."""
    if probe is not None:
      for block, key in zip(self.blocks, keys):
        x_BxTxD = block(x_BxTxD, positions_BxT, key, probe)
        probe.record_hidden(x_BxTxD)
      return x_BxTxD
    policy = REMAT_POLICIES[self.remat]
    if self.scan_layers and len(self.blocks) > 1:
      return self._scanned(x_BxTxD, positions_BxT, keys, policy)
    for block, key in zip(self.blocks, keys):
      if policy is None:
        x_BxTxD = block(x_BxTxD, positions_BxT, key)
      else:
        graphdef, state = nnx.split(block)
        x_BxTxD = jax.checkpoint(_block_fn(graphdef, positions_BxT),
                                 policy=policy)(state, x_BxTxD, key)
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
      x_BxTxD, (k_c, v_c, a_c) = block.decode(x_BxTxD, positions_BxT,
                                              call.layer(k_c, v_c, a_c))
      new_k.append(k_c)
      new_v.append(v_c)
      new_aux.append(a_c)
    return self._logits(x_BxTxD), call.finish(new_k, new_v, new_aux)


def _block_fn(graphdef, positions_BxT):
  """``(block state, x, dropout key) -> x``: one block as a pure function,
  for ``jax.checkpoint`` and the scan body."""
  def fn(state, x_BxTxD, key):
    return nnx.merge(graphdef, state)(x_BxTxD, positions_BxT, key)
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
