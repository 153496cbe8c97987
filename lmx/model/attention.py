"""Attention on one spec: the backends and the one walk that picks them.

A layer's attention is described once, by a frozen ``Spec`` (its mask, its
far branch, its length scaling, qk-norm, the backend asked for and its
tiles), and each call brings its arrays in a ``Call`` (the near branch and
the far one, the values, the encoding and its bias, the content term, sink
slots, SSMax's logit scale). Backends are objects: ``unavailable(spec,
call)`` says why one cannot take a call, and calling it computes the
attention. Four compute the same softmax attention:

* ``dense`` (``Dense``): the logits are materialized, a block of queries at
  a time against the keys up to its last query. The reference.
* ``chunked`` (``Chunked``): blockwise attention with an online softmax
  (the running max and normaliser of Milakov & Gimelshein 2018, as in
  FlashAttention) in pure JAX. The position bias and the mask are computed
  tile by tile from the position and token-index arrays, so no ``T x S``
  array ever exists, and tiles the mask hides entirely are skipped, not
  computed: under the Lambda-shaped mask each query block visits a fixed
  number of key tiles, so the cost is O(T). Each query block is
  rematerialized in the backward pass, so training memory is linear in T.
* ``cudnn`` (``Cudnn``): ``jax.nn.dot_product_attention(implementation=
  'cudnn')`` on a GPU in bfloat16/float16.
* ``flash`` (``Flash``): a fused Pallas kernel with the encoding's bias
  computed in the kernel from its ``kernel_bias()``.

``choose`` walks ``candidates`` and takes the first backend that can run
the call; a backend asked for by name that cannot says why, once, in the
log. ``auto`` chooses per platform (the platform is
``lmx.model.ops.platform()``, so compiling for a TPU from a CPU host
chooses as the TPU would): on a GPU, the flash kernel for a bias with a
kernel form, cudnn where it can run; else dense up to ``dense_key_limit``
keys and chunked beyond, the same rule for every fallback.

Logits and the softmax are float32 whatever the compute dtype. Masks are
functions of token indices (``lmx.model.masks``). A far branch
(``lmx.positions.far``: ReRoPE's and LM-Infinite's distance clamps,
Self-Extend's grouped positions, STRING's shifted ones) scores the pairs at
distance ``>= spec.far_from`` with the same queries and keys turned (and
biased) by the encoding's own hooks at its far positions; a member with
several far branches (Dual Chunk Attention) picks each pair's branch by its
own ``select`` from the positions, tile by tile in the chunked backend. Length scalings
(``lmx.positions.length_scaling``) multiply the queries before either
branch, or each query's whole score (SSMax's ``logit_scale``, applied
before the mask, tile by tile in the chunked backend). qk-norm acts on the
queries and keys after the encoding turns them, in each branch.

``Spec.normaliser`` replaces the softmax where it is set
(``lmx.model.stickbreaking``: stick-breaking attention): ``attend`` hands
it the masked logits in the dense backend and in ``explicit`` (decoding),
and the chunked backend then walks the key tiles from the nearest
backwards, carrying the normaliser's running sum in place of the online
softmax's; the fused kernels refuse it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from lmx.model import ops
from lmx.model.masks import CAUSAL, Mask, causal_mask  # noqa: F401
from lmx.positions import base as positions_base
from lmx.positions import length_scaling as length_scaling_lib
from lmx.positions.far import Prefix

NEG_INF = -1e30

log = logging.getLogger('lmx')

BiasFn = Callable[[jax.Array, jax.Array], Optional[jax.Array]]


# ---------------------------------------------------------------- the spec


@dataclasses.dataclass(frozen=True)
class Spec:
  """One layer's attention, built once per layer (``lmx.model.layer_plan.
  attention_spec``): everything about it that is not an array. Frozen and
  hashable, so the model holds it as static structure.

  * ``mask``: which keys a query sees (``lmx.model.masks``);
  * ``far``: the far branch's positions (``far_positions``) and the
    distance ``window`` from which pairs are scored by it (a member of
    ``lmx.positions.far``: ReRoPE, LM-Infinite's limit, Self-Extend), or
    None;
  * ``scaling``: the layer's length scaling (``lmx.positions.
    length_scaling``); ``qk_norm``: queries and keys normalised after the
    encoding turns them;
  * ``backend`` (``BACKENDS``), ``block`` (the tile of the chunked and
    flash backends), ``threshold``/``accelerator_threshold`` (the most keys
    ``auto`` computes densely on a CPU / on a GPU or TPU);
  * ``normaliser``: None (softmax) or a ``lmx.model.stickbreaking``
    normaliser, which turns the masked logits into weights instead.
  """
  mask: Mask = CAUSAL
  far: Any = None
  scaling: length_scaling_lib.LengthScaling = length_scaling_lib.Off()
  qk_norm: bool = False
  backend: str = 'dense'
  block: int = 512
  threshold: int = 2048
  accelerator_threshold: int = 512
  normaliser: Any = None

  @property
  def far_from(self) -> int:
    """The distance from which the far branch scores a pair (0: none): the
    far member's own window (a clamp's, Self-Extend's neighbour window), not
    a sliding window, which is a mask."""
    return int(getattr(self.far, 'window', 0)) if self.far is not None else 0

  @property
  def far_rule(self):
    """What picks the far pairs (``_far_pairs``): the far member's own
    ``select(q_pos, k_pos)`` where it has several far branches (Dual Chunk
    Attention), else the distance ``far_from``."""
    return getattr(self.far, 'select', None) or self.far_from


class Branch(NamedTuple):
  """Queries and keys as the encoding turned them, with their positions."""
  q: jax.Array       # [B, T, H, K]
  k: jax.Array       # [B, S, H, K]
  q_pos: jax.Array   # [B, T]
  k_pos: jax.Array   # [B, S]


class Call(NamedTuple):
  """The arrays of one attention call; queries are the last T of the S
  keys.

  ``far``: the far branch (the encoding at ``spec.far``'s positions), a
  tuple of them (a member with several, ``spec.far.select``), or None;
  ``bias_fn(q_pos, k_pos)``: the encoding's bias, or None;
  ``encoding``: the position encoding itself (a fused kernel asks it for
  its ``kernel_bias``), or None; ``content``: its ``ContentTerm`` over
  these queries and keys, or None; ``prefix``: sink slots, or None;
  ``logit_scale``: each query's scores times it (SSMax, ``[B, H, T]``), or
  None; ``adapt(logits, bias)``: a score adapter's map of the logits and
  the bias to the logits, pair by pair (``lmx.positions.dape``), or None."""
  near: Branch
  v: jax.Array       # [B, S, H, K]
  far: Any = None     # Branch, tuple of Branches, or None
  bias_fn: Optional[BiasFn] = None
  encoding: Any = None
  content: Any = None
  prefix: Optional[Prefix] = None
  logit_scale: Optional[jax.Array] = None
  adapt: Optional[Callable] = None


QK_NORM_EPS = 1e-5   # Llama 4's rms_norm_eps, which its qk-norm uses


def qk_norm(x_BxTxHxK: jax.Array, eps: float = QK_NORM_EPS) -> jax.Array:
  """Llama 4's qk-norm (``use_qk_norm``; ``L2Norm`` in its released code,
  applied to the queries and keys of its RoPE layers after they are
  turned): each head vector divided by its root mean square,
  ``x / sqrt(mean_k x_k^2 + eps)``, with no learned weight. A normalised
  vector has length ``sqrt(K)``, so ``q . k / sqrt(K)`` is ``sqrt(K)``
  times the cosine of the two: every logit lies in ``[-sqrt(K), sqrt(K)]``
  whatever the length. Float32 inside, the input's dtype out."""
  x = x_BxTxHxK.astype(jnp.float32)
  x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
  return x.astype(x_BxTxHxK.dtype)



# ------------------------------------------------------------------ scores


class Content(NamedTuple):
  """A ``ContentTerm`` (``lmx.positions.base``) where one block of pairs
  is scored: its per-token arrays already sliced to the block's queries and
  keys, with the keys' mask and token indices, for ``Tile``."""
  term: object        # the ContentTerm (q_side/k_side sliced)
  visible: jax.Array  # [t, s] bool
  k_idx: jax.Array    # [s] int32


def _content_slice(term, q_lo: int, q_len: int, k_lo: int, k_len: int,
                   visible, k_idx) -> Optional[Content]:
  """``term`` restricted to queries ``[q_lo, q_lo + q_len)`` and keys
  ``[k_lo, k_lo + k_len)`` (None for no term)."""
  if term is None:
    return None
  return Content(dataclasses.replace(
      term, q_side=positions_base.slice_tokens(term.q_side, q_lo, q_len),
      k_side=positions_base.slice_tokens(term.k_side, k_lo, k_len)),
      visible, k_idx)


def _branch_logits(br: Branch, bias_fn: Optional[BiasFn], scale: float,
                   content: Optional[Content] = None,
                   logit_scale: Optional[jax.Array] = None, adapt=None,
                   heads_major: bool = False):
  """The branch's float32 logits ``[B, H, T, S]``. ``heads_major``: its
  queries and keys come as ``[B, H, T, K]`` (the chunked backend's layout
  without a content term), not ``[B, T, H, K]``."""
  if heads_major:
    logits = jnp.einsum('bhtk,bhsk->bhts', br.q, br.k,
                        preferred_element_type=jnp.float32) * scale
  else:
    logits = ops.attention_scores(br.q, br.k) * scale
  bias = bias_fn(br.q_pos, br.k_pos) if bias_fn is not None else None
  if adapt is not None:   # a score adapter: (A, B) -> the logits, per pair
    logits = adapt(logits, bias)
  elif bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if content is not None:
    term = content.term
    logits = logits + term.fn(positions_base.Tile(
        br.q, br.k, br.q_pos, br.k_pos, term.q_side, term.k_side, logits,
        content.visible, content.k_idx)).astype(jnp.float32)
  if logit_scale is not None:   # [B, H, T]: the whole score of each query
    logits = logits * logit_scale[..., None]
  return logits


def _far_list(far) -> tuple:
  """The far branches of ``Call.far`` (one Branch, a tuple, or None)."""
  if far is None:
    return ()
  return (far,) if isinstance(far, Branch) else tuple(far)


def _map_far(fn, far):
  """``fn`` applied to each far branch, in ``Call.far``'s form."""
  if far is None or isinstance(far, Branch):
    return None if far is None else fn(far)
  return tuple(fn(f) for f in far)


def _picks(which, i: int) -> jax.Array:
  """Where far branch ``i`` (from 1) scores, from ``_far_pairs``."""
  return which if which.dtype == jnp.bool_ else which == i


def _far_pairs(near: Branch, window) -> jax.Array:
  """``[B, 1, T, S]``: the pairs each far branch scores. With a distance
  ``window`` (an int), bool: those whose (near) distance reaches it; with
  a member's ``select(q_pos, k_pos)``, int: 0 for the near branch, ``i``
  for far branch ``i`` (from 1). ``_scores`` picks their logits and
  ``_values`` their weights by it, so the two agree."""
  if callable(window):
    return window(near.q_pos, near.k_pos)[:, None]
  dist_BxTxS = (near.q_pos[:, :, None].astype(jnp.float32)
                - near.k_pos[:, None, :].astype(jnp.float32))
  return (dist_BxTxS >= window)[:, None]


def _scores(near: Branch, far: Optional[Branch], window: int,
            bias_fn: Optional[BiasFn], content: Optional[Content] = None,
            logit_scale: Optional[jax.Array] = None, adapt=None,
            heads_major: bool = False) -> jax.Array:
  scale = near.q.shape[-1] ** -0.5
  logits = _branch_logits(near, bias_fn, scale, content, logit_scale, adapt,
                          heads_major)
  if far is not None:
    which = _far_pairs(near, window)
    for i, branch in enumerate(_far_list(far), 1):
      far_logits = _branch_logits(branch, bias_fn, scale, content,
                                  logit_scale, adapt, heads_major)
      logits = jnp.where(_picks(which, i), far_logits, logits)
  return logits


def _values(near: Branch, far: Optional[Branch], window: int,
            content: Optional[Content]):
  """The content term's share of the output (``ContentTerm.value``) as a
  function of these pairs' weights ``p [B, H, t, s]`` -> ``[B, H, t, K]``
  float32, or None without one. Under a far branch each branch's tile gets
  the weights of its own pairs (the near ones below ``window``, the far ones
  at or past it), as ``_scores`` picks their logits."""
  if content is None or content.term.value is None:
    return None
  term = content.term

  def tile(br: Branch) -> positions_base.Tile:
    return positions_base.Tile(br.q, br.k, br.q_pos, br.k_pos, term.q_side,
                               term.k_side, None, content.visible,
                               content.k_idx)

  near_tile = tile(near)
  if far is None:
    return lambda p: term.value(near_tile, p)
  far_tiles = [tile(f) for f in _far_list(far)]
  which = _far_pairs(near, window)
  near_pairs = (~which if which.dtype == jnp.bool_ else which == 0)
  return lambda p: sum(
      (term.value(t, jnp.where(_picks(which, i), p, 0.0))
       for i, t in enumerate(far_tiles, 1)),
      term.value(near_tile, jnp.where(near_pairs, p, 0.0)))


def _whole(call: Call, visible_TxS, k_idx_S=None) -> Optional[Content]:
  """The call's content term over all its queries and keys."""
  if call.content is None:
    return None
  s = call.near.k.shape[1]
  k_idx_S = jnp.arange(s, dtype=jnp.int32) if k_idx_S is None else k_idx_S
  return Content(call.content, visible_TxS, k_idx_S)


def scores(spec: Spec, call: Call, visible_TxS: Optional[jax.Array] = None,
           k_idx_S: Optional[jax.Array] = None) -> jax.Array:
  """Unmasked float32 logits ``[B, H, T, S]``: the near branch, and the far
  branch wherever the (near) distance reaches ``spec.far_from``; each with
  the content term at its own positions (which sees the mask
  ``visible_TxS`` and the keys' token indices ``k_idx_S``, by default every
  key and ``0 .. S - 1``), and each query's times ``call.logit_scale``."""
  if visible_TxS is None:
    t, s = call.near.q.shape[1], call.near.k.shape[1]
    visible_TxS = spec.mask(jnp.arange(t) + (s - t), jnp.arange(s))
  return _scores(call.near, call.far, spec.far_rule, call.bias_fn,
                 _whole(call, visible_TxS, k_idx_S), call.logit_scale,
                 call.adapt)


def masked_scores(spec: Spec, call: Call, visible_TxS: jax.Array,
                  k_idx_S: Optional[jax.Array] = None) -> jax.Array:
  """``scores`` with the keys ``visible_TxS`` hides at ``NEG_INF``."""
  return jnp.where(visible_TxS, scores(spec, call, visible_TxS, k_idx_S),
                   NEG_INF)


def content_values(spec: Spec, call: Call, visible_TxS: jax.Array,
                   k_idx_S: Optional[jax.Array] = None):
  """The content term's share of the output over exactly these queries and
  keys, as ``masked_scores`` takes them (the ``values`` argument of
  ``attend``), or None."""
  return _values(call.near, call.far, spec.far_rule,
                 _whole(call, visible_TxS, k_idx_S))


def attend(logits_BxHxTxS: jax.Array, v_BxSxHxK: jax.Array,
           prefix: Optional[Prefix] = None, values=None, normaliser=None,
           own_v_BxTxHxK: Optional[jax.Array] = None,
           k_idx_S: Optional[jax.Array] = None) -> jax.Array:
  """Softmax over keys (float32), then the weighted sum of values; with a
  ``prefix`` (sinks), over its slots and the keys together; ``values``
  (``content_values``): the content term's share, from the keys' weights
  (the sink slots have none). A ``normaliser`` (``Spec.normaliser``) takes
  the weights instead, given each query's own value and, for keys out of
  token order, their token indices ``k_idx_S``."""
  if normaliser is not None:
    if prefix is not None:
      raise ValueError(f'the {normaliser.name} normaliser takes no sink '
                       'slots (lmx.model.stickbreaking.check refuses them)')
    return normaliser.attend(logits_BxHxTxS, v_BxSxHxK, own_v_BxTxHxK,
                             values, k_idx_S)
  n_prefix = 0
  if prefix is not None:
    n_prefix = prefix.logits.shape[-1]
    logits_BxHxTxS = jnp.concatenate([prefix.logits, logits_BxHxTxS], -1)
    v_BxSxHxK = jnp.concatenate([prefix.v.astype(v_BxSxHxK.dtype),
                                 v_BxSxHxK], 1)
  probs_BxHxTxS = jax.nn.softmax(logits_BxHxTxS, axis=-1)
  # A float32 result on CPU, rounded once here (lmx.model.ops).
  out = ops.attention_values(probs_BxHxTxS.astype(v_BxSxHxK.dtype),
                             v_BxSxHxK)
  if values is not None:
    extra_BxHxTxK = values(probs_BxHxTxS[..., n_prefix:])
    out = (out.astype(jnp.float32)
           + jnp.transpose(extra_BxHxTxK, (0, 2, 1, 3)))
  return out.astype(v_BxSxHxK.dtype)


def explicit(spec: Spec, call: Call, q_idx_T: jax.Array,
             k_idx_S: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(out [B, T, H, K], masked logits [B, H, T, S])``: attention with the
  logits materialised whole, queries and keys at token indices ``q_idx_T``
  and ``k_idx_S`` (-1: an empty cache slot). What decoding and the
  diagnostics run."""
  visible = _visible(spec, q_idx_T, k_idx_S)
  logits = masked_scores(spec, call, visible, k_idx_S)
  own_v = None
  if spec.normaliser is not None:   # each query's own key among the keys
    own_v = jnp.einsum('ts,bshk->bthk',
                       (k_idx_S[None, :] == q_idx_T[:, None]).astype(
                           call.v.dtype), call.v)
  out = attend(logits, call.v, call.prefix,
               content_values(spec, call, visible, k_idx_S), spec.normaliser,
               own_v, k_idx_S)
  return out, logits


def _visible(spec: Spec, q_idx_T: jax.Array, k_idx_S: jax.Array) -> jax.Array:
  """``[T, S]``: the pairs the mask shows, as the normaliser restricts
  them (stick-breaking: no query's own key by default)."""
  visible = spec.mask(q_idx_T, k_idx_S)
  if spec.normaliser is not None:
    visible = spec.normaliser.restrict(visible, q_idx_T, k_idx_S)
  return visible


# ---------------------------------------------------------------- backends


_warned: set[str] = set()


def _warn_once(message: str) -> None:
  if message not in _warned:
    _warned.add(message)
    log.warning(message)


CONTENT_REFUSAL = ('the encoding adds a content-dependent score term '
                   '(content), which a fused kernel does not compute')
ADAPT_REFUSAL = ('a score adapter (config.model.score_adapter) transforms '
                 'the logits, which a fused kernel does not compute')


class Backend:
  """A way to compute attention: ``unavailable(spec, call)`` says why it
  cannot take a call (None if it can), and calling it computes
  ``[B, T, H, K]`` in ``call.v``'s dtype."""
  name = ''

  def unavailable(self, spec: Spec, call: Call) -> Optional[str]:
    del spec, call
    return None

  def __call__(self, spec: Spec, call: Call) -> jax.Array:
    raise NotImplementedError


# Query rows per block of the dense backend (at least), and at most this
# many blocks. See ``Dense``.
DENSE_BLOCK_ROWS = 128
DENSE_MAX_BLOCKS = 4


def dense_query_blocks(t: int) -> list[tuple[int, int]]:
  """``[lo, hi)`` query ranges of the dense backend: ``T // 128`` blocks
  (between 1 and 4) of near-equal size."""
  n = max(1, min(DENSE_MAX_BLOCKS, t // DENSE_BLOCK_ROWS))
  edges = [round(i * t / n) for i in range(n + 1)]
  return list(zip(edges[:-1], edges[1:]))


class Dense(Backend):
  """The logits materialized, one block of queries at a time, each against
  the keys up to its own last query. The reference.

  A causal query never sees a later key, so the block of queries
  ``[lo, hi)`` needs only keys ``[0, hi)`` (shifted by ``S - T`` when the
  queries are the last T of S keys): with 2 blocks the logits cover 3/4 of
  the ``T x S`` square, with 4 blocks 5/8. Each block is an exact softmax
  over all its visible keys, so the result is the unblocked one. Smaller
  arrays also stay in cache: on a 2-core CPU, 2 blocks at T = 256 made the
  attention's forward and backward 1.4x faster in float32 and bfloat16.
  """
  name = 'dense'

  def __call__(self, spec, call):
    near, far, v_BxSxHxK = call.near, call.far, call.v
    window, bias_fn = spec.far_rule, call.bias_fn
    content, prefix, logit_scale = call.content, call.prefix, call.logit_scale
    t, s = near.q.shape[1], near.k.shape[1]
    offset = s - t
    outs = []
    for lo, hi in dense_query_blocks(t):
      def part(br: Branch, lo=lo, hi=hi) -> Branch:
        return Branch(br.q[:, lo:hi], br.k[:, :offset + hi],
                      br.q_pos[:, lo:hi], br.k_pos[:, :offset + hi])
      visible = _visible(spec, jnp.arange(lo, hi) + offset,
                         jnp.arange(offset + hi))
      k_idx = jnp.arange(offset + hi, dtype=jnp.int32)
      ls = logit_scale[:, :, lo:hi] if logit_scale is not None else None
      near_part = part(near)
      far_part = _map_far(part, far)
      content_part = _content_slice(content, lo, hi - lo, 0, offset + hi,
                                    visible, k_idx)
      logits = jnp.where(visible, _scores(near_part, far_part, window, bias_fn,
                                         content_part, ls, call.adapt),
                         NEG_INF)
      part_prefix = None if prefix is None else Prefix(
          prefix.logits[:, :, lo:hi], prefix.v)
      outs.append(attend(logits, v_BxSxHxK[:, :offset + hi], part_prefix,
                         _values(near_part, far_part, window, content_part),
                         spec.normaliser, v_BxSxHxK[:, offset + lo:offset + hi]))
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


class Chunked(Backend):
  """Blockwise attention with an online softmax; equals the dense backend.

  Any length works: the arrays are padded to whole tiles, padded keys are
  masked and padded queries dropped. A content term is computed tile by
  tile from its per-token arrays sliced with the tile; sink slots start
  each query block's running softmax; SSMax's ``logit_scale`` multiplies
  each query's scores, a block of queries at a time.

  Each tile is one of three kinds, by ``Mask.tile_visible`` and
  ``Mask.tile_full``: hidden (skipped, not computed), full (every query
  sees every key: no mask is built and nothing is selected, which is every
  tile below the diagonal of a causal mask; on CPU) or partial (masked).
  Without a
  content term, queries, keys and values are laid out heads-major
  (``[B, H, T, K]``) once, before the loops, so the tiles' products take
  contiguous slices and no tile is transposed. On a 2-core Xeon the two
  made the attention of one 8,192-token layer (4 heads of 32) 1.3x faster.
  """
  name = 'chunked'

  def unavailable(self, spec, call):
    if call.content is not None and not call.content.tiled:
      return ('the content term does not decompose over key tiles (it '
              'couples the keys), so it runs dense')
    return None

  def __call__(self, spec, call):
    near, far, v_BxSxHxK = call.near, call.far, call.v
    mask, window, bias_fn = spec.mask, spec.far_rule, call.bias_fn
    content, prefix, logit_scale = call.content, call.prefix, call.logit_scale
    block_q = block_k = spec.block
    b, t, h, kd = near.q.shape
    s = near.k.shape[1]
    bq, bk = min(block_q, t), min(block_k, s)
    nq, nk = _cdiv(t, bq), _cdiv(s, bk)
    offset = s - t
    scale = kd ** -0.5
    # A content term takes its tiles token-major (``positions_base.Tile``);
    # otherwise q, k and v are laid out heads-major once, here.
    heads_major = content is None
    lay = ((lambda x: jnp.transpose(x, (0, 2, 1, 3))) if heads_major
           else (lambda x: x))
    t_axis = 2 if heads_major else 1

    def pad_branch(br: Branch) -> Branch:
      return Branch(lay(_pad(br.q, 1, nq * bq)), lay(_pad(br.k, 1, nk * bk)),
                    _pad(br.q_pos, 1, nq * bq), _pad(br.k_pos, 1, nk * bk))

    near_p = pad_branch(near)
    far_p = _map_far(pad_branch, far)
    v_p = lay(_pad(v_BxSxHxK, 1, nk * bk))
    pv = 'bhts,bhsk->bhtk' if heads_major else 'bhts,bshk->bhtk'
    ls_p = (_pad(logit_scale, 2, nq * bq) if logit_scale is not None else None)
    if content is not None:
      content = dataclasses.replace(
          content,
          q_side=jax.tree.map(lambda x: _pad(x, 1, nq * bq), content.q_side),
          k_side=jax.tree.map(lambda x: _pad(x, 1, nk * bk), content.k_side))
    k_idx_all = jnp.where(jnp.arange(nk * bk) < s, jnp.arange(nk * bk), -1)
    prefix_p = None if prefix is None else Prefix(
        _pad(prefix.logits, 2, nq * bq), prefix.v)
    # A normaliser (stick-breaking) walks the key tiles from the nearest
    # backwards, carrying in place of ``l`` each query's running sum over
    # the keys passed (no running max), and needs each query's own value.
    sb = spec.normaliser
    own_p = _pad(v_BxSxHxK[:, offset:], 1, nq * bq) if sb is not None else None
    # Full tiles take a branch of their own on CPU, where the mask's passes
    # cost time. Not under stick-breaking (its restriction drops the
    # query's own key), nor on a GPU or TPU, where the select is cheap and
    # a third branch's buffers cost memory (a TPU step's temporaries grew).
    split_full = sb is None and ops.platform() == 'cpu'

    # The key tiles a query block visits. Causal: every tile, those wholly in
    # the future skipped. Lambda-shaped: the tiles holding the global tokens,
    # then the few covering the local window, a number independent of S.
    # Chunked local: the few tiles from the start of the first query's chunk.
    span = mask.n_local or mask.chunk    # the keys before a query it may see
    n_glob = _cdiv(mask.n_global, bk) if mask.n_local else 0
    n_loc = _cdiv(bq + span - 1, bk) + 1 if span else 0
    lam = bool(span) and n_glob + n_loc < nk
    n_iter = n_glob + n_loc if lam else nk

    def tile_of(i, slot):
      if not lam:
        return slot
      q_lo = i * bq + offset
      if mask.chunk:
        first_local = (q_lo // mask.chunk) * mask.chunk // bk
      else:
        first_local = jnp.maximum(q_lo - mask.n_local + 1, 0) // bk
      return jnp.where(slot < n_glob, slot, first_local + slot - n_glob)

    def tile_visible(i, slot, j):
      q_lo = i * bq + offset
      q_hi = q_lo + bq - 1
      k_lo = j * bk
      k_hi = k_lo + bk - 1
      vis = (j < nk) & mask.tile_visible(q_lo, q_hi, k_lo, k_hi)
      if lam:  # a global tile is not visited again as a local one
        vis &= (slot < n_glob) | (j >= n_glob)
      return vis

    def tile_full(i, j):
      """Every (real or padded) query of block i sees every key of tile j,
      all of them real keys: the tile needs no mask."""
      q_lo = i * bq + offset
      k_lo = j * bk
      k_hi = k_lo + bk - 1
      return (k_hi < s) & mask.tile_full(q_lo, q_lo + bq - 1, k_lo, k_hi)

    def sl(x, start, size):   # token-major arrays, positions
      return jax.lax.dynamic_slice_in_dim(x, start, size, axis=1)

    def slt(x, start, size):  # queries, keys and values in the loop's layout
      return jax.lax.dynamic_slice_in_dim(x, start, size, axis=t_axis)

    def q_block(i):
      q0 = i * bq
      q_idx = q0 + offset + jnp.arange(bq)
      nq_t = Branch(slt(near_p.q, q0, bq), None, sl(near_p.q_pos, q0, bq),
                    None)
      fq_t = _map_far(lambda f: Branch(slt(f.q, q0, bq), f.k,
                                       sl(f.q_pos, q0, bq), f.k_pos), far_p)
      ls_t = (jax.lax.dynamic_slice_in_dim(ls_p, q0, bq, axis=2)
              if ls_p is not None else None)

      def compute(carry, j, masked=True):
        m, l, acc = carry
        k0 = j * bk
        tile = Branch(nq_t.q, slt(near_p.k, k0, bk), nq_t.q_pos,
                      sl(near_p.k_pos, k0, bk))
        far_tile = _map_far(lambda f: Branch(f.q, slt(f.k, k0, bk), f.q_pos,
                                             sl(f.k_pos, k0, bk)), fq_t)
        k_idx = jax.lax.dynamic_slice_in_dim(k_idx_all, k0, bk)
        if masked:
          visible = mask(q_idx, k_idx)
          if sb is not None:
            visible = sb.restrict(visible, q_idx, k_idx)
        else:   # a full tile: every pair, so nothing to mask or select
          visible = jnp.ones((bq, bk), jnp.bool_)
        part = _content_slice(content, q0, bq, k0, bk, visible, k_idx)
        logits = (_scores(tile, far_tile, window, bias_fn, part, ls_t,
                          call.adapt, heads_major)
                  if far_tile is not None
                  else _branch_logits(tile, bias_fn, scale, part, ls_t,
                                      call.adapt, heads_major))
        if masked:
          logits = jnp.where(visible, logits, NEG_INF)
        v_t = slt(v_p, k0, bk)
        if sb is not None:
          p, l = sb.tile(logits, l)
          acc = acc + jnp.einsum(pv, p, v_t.astype(jnp.float32))
          values = _values(tile, far_tile, window, part)
          return m, l, (acc if values is None else acc + values(p))
        m_new = jnp.maximum(m, logits.max(axis=-1))
        p = jnp.exp(logits - m_new[..., None])
        if masked:   # a row with no visible key yet has m_new = NEG_INF
          p = jnp.where(visible, p, 0.0)
        correction = jnp.exp(m - m_new)
        l = l * correction + p.sum(axis=-1)
        acc = acc * correction[..., None] + jnp.einsum(
            pv, p.astype(v_t.dtype), v_t, preferred_element_type=jnp.float32)
        values = _values(tile, far_tile, window, part)
        if values is not None:   # linear in p: divided by l with the rest
          acc = acc + values(p)
        return m_new, l, acc

      def body(carry, slot):
        if sb is not None:   # the nearest tile first
          slot = n_iter - 1 - slot
        j = tile_of(i, slot)
        visible = tile_visible(i, slot, j)
        if not split_full:
          carry = jax.lax.cond(visible, lambda c: compute(c, j),
                               lambda c: c, carry)
        else:   # 0: hidden, 1: full, 2: partial
          kind = jnp.where(visible, jnp.where(tile_full(i, j), 1, 2), 0)
          carry = jax.lax.switch(kind, [
              lambda c: c, lambda c: compute(c, j, masked=False),
              lambda c: compute(c, j)], carry)
        return carry, None

      if prefix_p is None:
        init = (jnp.full((b, h, bq), NEG_INF, jnp.float32),
                jnp.zeros((b, h, bq), jnp.float32),
                jnp.zeros((b, h, bq, kd), jnp.float32))
      else:   # the sink slots, as a first tile every query sees
        pl = jax.lax.dynamic_slice_in_dim(prefix_p.logits, q0, bq, axis=2)
        m0 = pl.max(axis=-1)
        p0 = jnp.exp(pl - m0[..., None])
        init = (m0, p0.sum(axis=-1), jnp.einsum(
            'bhtp,bphk->bhtk', p0, prefix_p.v.astype(jnp.float32)))
      (_, l, acc), _ = jax.lax.scan(body, init, jnp.arange(n_iter))
      if sb is not None:
        return sb.finish(acc, l, sl(own_p, q0, bq)).astype(v_BxSxHxK.dtype)
      out = acc / jnp.where(l > 0, l, 1.0)[..., None]
      return jnp.transpose(out, (0, 2, 1, 3)).astype(v_BxSxHxK.dtype)

    out_NxBxQxHxK = jax.lax.map(jax.checkpoint(q_block), jnp.arange(nq))
    out = jnp.transpose(out_NxBxQxHxK, (1, 0, 2, 3, 4)).reshape(b, nq * bq, h, kd)
    return out[:, :t]


def _cdiv(a: int, b: int) -> int:
  return -(-a // b)


def _pad(x: jax.Array, axis: int, size: int, value=0) -> jax.Array:
  extra = size - x.shape[axis]
  if extra == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths, constant_values=value)


SINK_REFUSAL = ('attention sinks (config.model.sinks) add slots the fused '
                'kernel does not compute')


def _scaled_queries(call: Call):
  """The queries times ``logit_scale`` (a fused kernel scales the whole
  score through them; no bias then)."""
  q = call.near.q
  if call.logit_scale is None:
    return q
  return (q.astype(jnp.float32) * jnp.transpose(call.logit_scale, (0, 2, 1))[
      ..., None]).astype(q.dtype)


class Cudnn(Backend):
  """``jax.nn.dot_product_attention(implementation='cudnn')`` on a GPU in
  bfloat16/float16."""
  name = 'cudnn'

  def unavailable(self, spec, call):
    if spec.normaliser is not None:
      return spec.normaliser.kernel_refusal()
    if jax.default_backend() != 'gpu':  # the kernel needs a GPU attached
      return f'the platform is {jax.default_backend()}, not gpu'
    if call.content is not None:
      return CONTENT_REFUSAL
    if call.adapt is not None:
      return ADAPT_REFUSAL
    if call.prefix is not None:
      return SINK_REFUSAL
    q_dtype, head_dim = call.near.q.dtype, call.near.q.shape[-1]
    if q_dtype not in (jnp.bfloat16, jnp.float16):
      return (f'it needs bfloat16 or float16, and config.model.dtype gives '
              f'{jnp.dtype(q_dtype).name}')
    if head_dim % 8 or head_dim > 128:
      return (f'it needs a head dimension <= 128 divisible by 8, not '
              f'{head_dim}')
    if call.far is not None:
      return 'a distance clamp (ReRoPE / LM-Infinite) needs two logit branches'
    return None

  def __call__(self, spec, call):
    near, mask = call.near, spec.mask
    t, s = near.q.shape[1], near.k.shape[1]
    bias = (call.bias_fn(near.q_pos, near.k_pos)
            if call.bias_fn is not None else None)
    q = _scaled_queries(call)
    if call.logit_scale is not None and bias is not None:
      bias = bias.astype(jnp.float32) * call.logit_scale[..., None]
    if bias is not None:
      bias = bias.astype(near.q.dtype)
    kw = {}
    if mask.n_local or mask.chunk or t != s:
      kw['mask'] = mask(jnp.arange(t) + (s - t), jnp.arange(s))[None, None]
    else:
      kw['is_causal'] = True
    return jax.nn.dot_product_attention(q, near.k, call.v, bias=bias,
                                        implementation='cudnn', **kw)


# The widest head the GPU kernel takes (its tiles live in registers).
GPU_MAX_HEAD_DIM = 256
# The most transcendental terms per pair a bias form may sum on the GPU
# (``KernelBias.terms``): Triton unrolls them, and deviceless compiles took
# 60 s at Sandwich's 4 cosines and did not finish in 10 minutes at its
# default 64 (docs/backends.md).
GPU_MAX_BIAS_TERMS = 8


class Flash(Backend):
  """A fused Pallas kernel with the encoding's bias computed in the kernel
  from its ``kernel_bias()``: ``lmx.kernels.flash`` (Mosaic) on a TPU,
  ``lmx.kernels.flash_gpu`` (Triton) on a GPU, the TPU one in Pallas's
  interpreter elsewhere. Under a mesh of several devices it runs per shard
  (``jax.shard_map``): rows over the data axes and heads over the tensor
  axis where they divide, each head's bias parameters with its head, so the
  compiler never has to partition the kernel itself."""
  name = 'flash'

  def unavailable(self, spec, call):
    platform = ops.platform()
    if spec.normaliser is not None:
      return spec.normaliser.kernel_refusal()
    if call.content is not None:
      return CONTENT_REFUSAL
    if call.adapt is not None:
      return ADAPT_REFUSAL
    if call.prefix is not None:
      return SINK_REFUSAL
    if call.far is not None:
      return ('a distance clamp or Self-Extend needs a second (far) logit '
              'branch, which the kernel does not compute')
    enc = call.encoding
    if call.bias_fn is not None and enc is None:
      return 'the bias is a plain function, not an encoding with kernel_bias'
    if enc is not None:
      if enc.has_bias() and enc.kernel_bias() is None:
        return (f'the {type(enc).__name__} bias has no kernel form '
                '(kernel_bias)')
      terms = enc.kernel_bias().terms if enc.has_bias() else 1
      if platform == 'gpu' and terms > GPU_MAX_BIAS_TERMS:
        return (f'the {type(enc).__name__} bias sums {terms} terms per pair, '
                f'more than the {GPU_MAX_BIAS_TERMS} the GPU kernel compiles '
                'in reasonable time (Triton unrolls them)')
      if call.logit_scale is not None and enc.has_bias():
        return ('SSMax scales the bias with the scores, and the kernel adds '
                'the bias unscaled')
    head_dim = call.near.q.shape[-1]
    if platform == 'gpu' and head_dim > GPU_MAX_HEAD_DIM:
      return (f'on GPU it holds a head of at most {GPU_MAX_HEAD_DIM} channels '
              f'in registers, not {head_dim}')
    longest = max(call.near.q.shape[1], call.near.k.shape[1])
    if platform == 'tpu' and spec.block % 128 and longest > spec.block:
      return (f'on TPU its tiles must be multiples of 128 tokens, and '
              f'config.model.attention_block is {spec.block}')
    return None

  def __call__(self, spec, call):
    from lmx.positions.base import KernelBias  # pylint: disable=g-import-not-at-top
    near, v, mask, block = call.near, call.v, spec.mask, spec.block
    enc = call.encoding
    kb = enc.kernel_bias() if enc is not None and enc.has_bias() else None
    params = dict(kb.params) if kb is not None else {}
    if ops.platform() == 'gpu':
      from lmx.kernels import flash_gpu as kernel  # pylint: disable=g-import-not-at-top
      block = kernel.gpu_block(block)
    else:
      from lmx.kernels import flash as kernel  # pylint: disable=g-import-not-at-top

    def run(q, k, v, q_pos, k_pos, params):
      bias = KernelBias(params, kb.fn) if kb is not None else None
      return kernel.flash_attention(
          q, k, v, q_pos, k_pos, bias, n_global=mask.n_global,
          n_local=mask.n_local, chunk=mask.chunk, block_q=block,
          block_k=block)

    q = _scaled_queries(call)   # no bias then (unavailable)
    args = (q, near.k, v, near.q_pos, near.k_pos, params)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
      return run(*args)
    from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
    b, _, h, _ = near.q.shape
    data = tuple(a for a in ('data', 'fsdp') if mesh.shape.get(a, 1) > 1)
    rows = data if data and b % math.prod(mesh.shape[a] for a in data) == 0 \
        else None
    tensor = mesh.shape.get('tensor', 1)
    heads = 'tensor' if tensor > 1 and h % tensor == 0 else None
    qkv, pos = P(rows, None, heads, None), P(rows, None)
    specs = (qkv, qkv, qkv, pos, pos,
             {n: P(heads, None) for n in params})
    # Pallas outputs carry no varying-axes type, hence check_vma=False.
    return jax.shard_map(run, mesh=mesh, in_specs=specs, out_specs=qkv,
                         check_vma=False)(*args)


DENSE, CHUNKED, CUDNN, FLASH = Dense(), Chunked(), Cudnn(), Flash()
# config.model.attention: 'auto' or a backend's name.
BY_NAME = {b.name: b for b in (DENSE, CHUNKED, CUDNN, FLASH)}
BACKENDS = ('auto',) + tuple(BY_NAME)


# ----------------------------------------------------------------- dispatch


def dense_key_limit(spec: Spec) -> int:
  """The most keys ``auto`` (and every fallback) computes densely on this
  platform: ``threshold`` on a CPU, where XLA runs the dense products
  fastest and memory is plentiful; at most ``accelerator_threshold`` on a
  GPU or TPU, whose memory would otherwise hold ``B x H x T x T`` logits
  for the backward pass."""
  if ops.platform() == 'cpu':
    return spec.threshold
  return min(spec.threshold, spec.accelerator_threshold)


def _blockwise(spec: Spec, call: Call) -> Backend:
  """Dense up to ``dense_key_limit`` keys, chunked beyond (dense for a
  content term the chunked backend cannot tile)."""
  if (call.near.k.shape[1] <= dense_key_limit(spec)
      or CHUNKED.unavailable(spec, call)):
    return DENSE
  return CHUNKED


def gpu_flash_applies(call: Call) -> bool:
  """Whether ``auto`` wants the flash kernel here: traced for a GPU, and
  the encoding scores with a bias (which the kernel computes in place) or
  a content term (which it cannot: ``auto`` then says so); a mask-only
  call goes to cudnn. Whether the kernel can take the call is
  ``Flash.unavailable``'s to say."""
  if ops.platform() != 'gpu':
    return False
  if call.content is not None:
    return True
  return call.encoding is not None and call.encoding.has_bias()


def candidates(spec: Spec, call: Call) -> list[Backend]:
  """The backends to try, in order; the last always runs. ``auto``: the
  flash kernel on a GPU for a bias (``gpu_flash_applies``), then cudnn,
  then dense or chunked by the number of keys; ``flash`` and ``cudnn``:
  themselves, then dense or chunked; ``dense``: itself; ``chunked``:
  itself, then dense."""
  asked = spec.backend
  if asked == 'dense':
    return [DENSE]
  if asked == 'chunked':
    return [CHUNKED, DENSE]
  order = []
  if asked == 'flash' or (asked == 'auto' and gpu_flash_applies(call)):
    order.append(FLASH)
  if asked in ('auto', 'cudnn'):
    order.append(CUDNN)
  return order + [_blockwise(spec, call)]


_recorders: list[list] = []


@contextlib.contextmanager
def recording():
  """Records, while a step is traced, the backend each attention call
  takes: a list of ``(backend name, why the ones before it could not run,
  or '')``."""
  calls: list = []
  _recorders.append(calls)
  try:
    yield calls
  finally:
    _recorders.remove(calls)


def choose(spec: Spec, call: Call) -> Backend:
  """The one fallback walk: the first of ``candidates`` that can take the
  call. A backend asked for by name (or the GPU flash kernel under
  ``auto``) that cannot says why, once, in the log."""
  order = candidates(spec, call)
  reasons = []
  for backend in order[:-1]:
    why = backend.unavailable(spec, call)
    if why is None:
      chosen = backend
      break
    reasons.append((backend, why))
  else:
    chosen = order[-1]
  for backend, why in reasons:
    if backend.name == spec.backend:
      _warn_once(f'{backend.name} attention cannot run here ({why}); using '
                 f'the {chosen.name} backend instead.')
    elif backend is FLASH:
      _warn_once(f'the GPU flash kernel cannot take this attention ({why}); '
                 f'auto uses the {chosen.name} backend instead.')
  for calls in _recorders:
    calls.append((chosen.name, '; '.join(f'{b.name}: {w}'
                                         for b, w in reasons)))
  return chosen


def attention(spec: Spec, call: Call) -> jax.Array:
  """Softmax attention of ``call`` as ``spec`` says, through the backend
  ``choose`` picks. ``[B, T, H, K]``."""
  return choose(spec, call)(spec, call)


def attention_stats(logits_BxHxTxS: jax.Array, mask_TxS: jax.Array,
                    normaliser=None) -> dict[str, jax.Array]:
  """Per query, two of LM-Infinite's out-of-distribution signals (Han et al.
  2023, section 3):

  - ``entropy`` ``[B, T]``: entropy of the attention distribution over the
    visible keys in nats, mean over heads. It grows with the number of
    tokens attended to (log of the count for uniform attention). With a
    ``normaliser`` (stick-breaking), the distribution is its weights, the
    remainder it gives the query's own value included, not a softmax of
    the logits.
  - ``max_logit`` ``[B, T]``: the largest logit over visible keys and
    heads. Unseen distances can make it explode.
  """
  visible = jnp.where(mask_TxS, logits_BxHxTxS, NEG_INF)
  if normaliser is None:
    logp_BxHxTxS = jax.nn.log_softmax(visible, axis=-1)
    plogp = jnp.where(mask_TxS, jnp.exp(logp_BxHxTxS) * logp_BxHxTxS, 0.0)
    plogp_BxHxT = plogp.sum(axis=-1)
  else:
    a, rem = normaliser.weights(visible)
    xlogx = lambda x: jnp.where(x > 0, x * jnp.log(jnp.where(x > 0, x, 1.0)),
                                0.0)
    plogp_BxHxT = xlogx(a).sum(axis=-1) + xlogx(rem)
  entropy_BxT = -plogp_BxHxT.mean(axis=1)
  max_logit_BxT = visible.max(axis=(1, 3))
  return {'entropy': entropy_BxT, 'max_logit': max_logit_BxT}

