"""Attention normalisers: softmax (the default) and stick-breaking.

``config.model.normaliser`` picks how a query turns its logits ``z_ij``
into weights. ``'softmax'`` is every backend's softmax and builds no
object (``build`` gives None, and the attention code runs as before).

Stick-breaking (Tan, Yang, Courville, Panda & Shen, "Scaling Stick-Breaking
Attention: An Efficient Implementation and In-depth Study", ICLR 2025,
section 2; the authors' code github.com/shawntan/stickbreaking-attention,
``stickbreaking_attention/sb_ref.py`` (the naive reference) and
``sb_varlen/sb_varlen_fwd.py`` (the Triton kernel)): each key ``j`` breaks
off the share ``beta_ij = sigmoid(z_ij)`` of what the keys nearer to the
query left over, walking from the nearest key backwards::

    A_ij = beta_ij * prod_{j < k, k visible} (1 - beta_ik)
    log A_ij = log sigmoid(z_ij) - sum_{j < k, k visible} softplus(z_ik)

(``log(1 - sigmoid(z)) = -softplus(z)``). The weights of a query sum to
``1 - prod_k (1 - beta_ik) <= 1``; the remainder ``prod_k (1 - beta_ik) =
exp(-sum_k softplus(z_ik))`` goes to the query's own value ``v_i``: the
released code returns it as ``rem`` and its tests add ``rem *
v_i`` to the output (``o + rem[..., None] * v``), which we follow.

Which keys: the code's default (``attend_current=False``) lets query ``i``
see keys ``j < i`` only, its own value entering through the remainder;
``attend_current=True`` also scores ``j = i``. They are the members
``'stick_breaking'`` and ``'stick_breaking_current'``. A mask (sliding
window, chunk, LM-Infinite's) hides keys as usual: a hidden key breaks no
stick (its logit is ``NEG_INF``, so its softplus is exactly 0 and its
weight exactly 0).

Numerics: the sums are over softplus terms (all >= 0) in float32, taken as
a reverse cumulative sum without subtraction (the kernel instead adds
``z_ij`` to the inclusive sum, ``z - softplus(z) = log sigmoid(z)``, which
cancels for large ``z``; we take ``log sigmoid`` directly). No running
maximum is needed: every log-weight is ``<= 0``. The chunked backend walks
the key tiles from the nearest backwards, carrying each query's running
sum of softplus over the keys it has passed (the kernel's
``neg_log_acc``).

Position encodings: the paper's models use none (the order is in the
stick itself), configs/stickbreaking.py. An encoding only shapes
``z_ij`` (a bias adds to it, a rotation turns q and k, an absolute
encoding adds to the embeddings, a content term adds a score), so every
encoding combines with it. Refused (``check``): attention sinks (slots a
softmax normalises over, with no place in the order of the keys; the
remainder plays their part here) and length scalings (log-n, SSMax,
Llama 4's temperature: they keep a softmax over ``n`` keys from flattening
as ``n`` grows, which stick-breaking's weights do not do). The fused
kernels (flash, cudnn) compute a softmax and refuse it; ``auto`` falls
back to dense or chunked.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from lmx.config.fields import require
from lmx.positions import far
from lmx.positions import length_scaling

NEG_INF = -1e30   # the masked logit of lmx.model.attention

KERNEL_REFUSAL = ('config.model.normaliser={name!r} is not a softmax, which '
                  'is what the fused kernel computes')


def stick_weights(logits_BxHxTxS: jax.Array):
  """``(A [B, H, T, S], remainder [B, H, T])`` float32 from logits whose
  keys run in token order along the last axis (hidden keys at
  ``NEG_INF``): ``A_ij = sigmoid(z_ij) prod_{k > j} (1 - sigmoid(z_ik))``
  and the remainder ``prod_k (1 - sigmoid(z_ik))``."""
  z = logits_BxHxTxS.astype(jnp.float32)
  a, log_rem = _tile(z, jnp.zeros(z.shape[:-1], jnp.float32))
  return a, jnp.exp(-log_rem)


def _tile(z, passed):
  """One tile of keys (in token order) given ``passed`` ``[..., T]``, the
  sum of softplus over the later keys already walked: ``(A, passed plus
  this tile's sum)``."""
  sp = jax.nn.softplus(z)        # -log(1 - beta); 0 for a hidden key
  incl = jax.lax.cumsum(sp, axis=sp.ndim - 1, reverse=True)
  later = jnp.concatenate([incl[..., 1:], jnp.zeros_like(incl[..., :1])],
                          axis=-1)   # the keys after j in this tile
  log_a = jax.nn.log_sigmoid(z) - later - passed[..., None]
  return jnp.exp(log_a), passed + incl[..., 0]


@dataclasses.dataclass(frozen=True)
class StickBreaking:
  """The stick-breaking normaliser; ``current``: the query scores its own
  key too (the code's ``attend_current``)."""
  name: str = 'stick_breaking'
  current: bool = False

  def restrict(self, visible_TxS: jax.Array, q_idx_T: jax.Array,
               k_idx_S: jax.Array) -> jax.Array:
    """The mask's pairs, without the query's own key unless ``current``."""
    if self.current:
      return visible_TxS
    return visible_TxS & (k_idx_S[None, :] < q_idx_T[:, None])

  def kernel_refusal(self) -> str:
    return KERNEL_REFUSAL.format(name=self.name)

  def weights(self, logits_BxHxTxS: jax.Array):
    """``(A, remainder)`` of masked logits (``stick_weights``): what the
    attention diagnostics take the entropy of."""
    return stick_weights(logits_BxHxTxS)

  def tile(self, logits_BxHxTxS: jax.Array, passed_BxHxT: jax.Array):
    """The chunked backend's step, over one key tile (keys in token order,
    hidden at ``NEG_INF``): ``(weights, passed)``, the tiles walked from
    the nearest backwards."""
    return _tile(logits_BxHxTxS.astype(jnp.float32), passed_BxHxT)

  def finish(self, acc_BxHxTxK: jax.Array, passed_BxHxT: jax.Array,
             own_v_BxTxHxK: jax.Array) -> jax.Array:
    """``[B, T, H, K]`` float32: the weighted values plus the remainder
    times each query's own value."""
    rem = jnp.exp(-passed_BxHxT)
    out = acc_BxHxTxK + rem[..., None] * jnp.transpose(
        own_v_BxTxHxK.astype(jnp.float32), (0, 2, 1, 3))
    return jnp.transpose(out, (0, 2, 1, 3))

  def attend(self, logits_BxHxTxS: jax.Array, v_BxSxHxK: jax.Array,
             own_v_BxTxHxK: jax.Array, values=None,
             k_idx_S: Optional[jax.Array] = None) -> jax.Array:
    """Stick-breaking attention over masked logits ``[B, H, T, S]``
    (``[B, T, H, K]`` in ``v``'s dtype). ``k_idx_S``: the keys' token
    indices where they are not in token order (a KV cache's ring); the
    weights are taken in token order and returned to the keys' order.
    ``values``: a content term's share, from the weights."""
    z = logits_BxHxTxS.astype(jnp.float32)
    start = jnp.zeros(z.shape[:-1], jnp.float32)
    if k_idx_S is not None:
      order = jnp.argsort(k_idx_S)
      a, passed = _tile(jnp.take(z, order, axis=-1), start)
      a = jnp.take(a, jnp.argsort(order), axis=-1)
    else:
      a, passed = _tile(z, start)
    acc = jnp.einsum('bhts,bshk->bhtk', a, v_BxSxHxK.astype(jnp.float32))
    if values is not None:
      acc = acc + values(a)
    return self.finish(acc, passed, own_v_BxTxHxK).astype(
        v_BxSxHxK.dtype)


# config.model.normaliser -> the normaliser (None: softmax, the default).
REGISTRY: dict[str, Optional[StickBreaking]] = {
    'softmax': None,
    'stick_breaking': StickBreaking('stick_breaking', current=False),
    'stick_breaking_current': StickBreaking('stick_breaking_current',
                                            current=True),
}


def build(model_cfg) -> Optional[StickBreaking]:
  """The normaliser ``config.model.normaliser`` names (None: softmax)."""
  return REGISTRY[str(model_cfg.normaliser)]


def check(model_cfg, scalings) -> None:
  """ConfigError for what stick-breaking cannot combine with (see the
  module docstring): attention sinks, and a length scaling in any layer
  (``scalings``: each layer's length scaling name)."""
  name = model_cfg.normaliser
  require(name in REGISTRY,
          f'config.model.normaliser={name!r} is not one of: '
          f'{", ".join(map(repr, REGISTRY))}.')
  if REGISTRY[name] is None:
    return
  for member in far.active(model_cfg):
    require(not member.adds_slots,
            f'config.model.normaliser={name!r} gives the weight no key takes '
            f"to the query's own value; {member.summary} "
            f'(config.model.{member.name}) add slots a softmax normalises '
            'over, with no place in the nearest-first order of the keys. '
            f'Switch them off (config.model.{member.name} at its defaults), '
            "or set config.model.normaliser='softmax'.")
  scaled = sorted({s for s in scalings
                   if length_scaling.get(s).scales_queries
                   or length_scaling.get(s).scales_scores})
  require(not scaled,
          f'config.model.normaliser={name!r} with the length scaling(s) '
          f'{", ".join(map(repr, scaled))}: they keep a softmax over n keys '
          'from flattening as n grows, and stick-breaking weights do not '
          'spread over the keys (each takes a share of what the nearer ones '
          "left). Leave config.model.length_scaling.kind and "
          "config.model.layers.length_scaling at their defaults, or "
          "config.model.normaliser='softmax'.")
