"""The KV cache of decoding: its layout and its slot bookkeeping.

A cache is a dict of arrays (a pytree, donated to each jitted step):
``k``/``v`` (one ``[B, C, H, K]`` array per layer), ``aux`` (per layer, the
key side of the encoding's content term, each leaf ``[B, C, ...]``, or None
for a layer without one: ``lmx.positions.base.ContentTerm``), ``pos``
(``[B, C]`` the positions of the cached tokens), ``idx`` (``[C]`` their
token indices, -1 for an empty slot) and ``next`` (the index of the next
token).

An unbounded cache has a slot per token. Under LM-Infinite's Lambda-shaped
mask (``n_local > 0``) a query sees only the first ``n_global`` tokens and
the last ``n_local``, so the cache is bounded: the global tokens keep the
first ``n_global`` slots and the local window turns in a ring after them,
and each new token costs the same however long the context grows.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lmx.model import attention


def capacity(mask: attention.Mask, max_len: int) -> int:
  """Slots a cache needs for ``max_len`` tokens: all of them, or under the
  Lambda-shaped mask only the global and local tokens."""
  if mask.n_local:
    return min(max_len, mask.n_global + mask.n_local)
  return max_len


def init(num_layers: int, batch: int, slots_: int, num_heads: int,
         head_dim: int, dtype, aux=None) -> dict:
  """An empty cache of ``slots_`` slots. ``aux``: per layer, the shapes of
  one token's content key side (a pytree of ``[B, 1, ...]`` shape-dtype
  structs, or None)."""
  zeros = lambda: jnp.zeros((batch, slots_, num_heads, head_dim), dtype)
  aux = aux if aux is not None else [None] * num_layers
  empty = lambda a: jnp.zeros((a.shape[0], slots_, *a.shape[2:]), a.dtype)
  return {'k': [zeros() for _ in range(num_layers)],
          'v': [zeros() for _ in range(num_layers)],
          'aux': [jax.tree.map(empty, a) for a in aux],
          'pos': jnp.zeros((batch, slots_), jnp.int32),
          'idx': jnp.full((slots_,), -1, jnp.int32),
          'next': jnp.zeros((), jnp.int32)}


def slots(mask: attention.Mask, new_idx: jax.Array, last,
          capacity_: int) -> jax.Array:
  """Cache slot of each new token (token indices ``new_idx``, the last of
  this call ``last``), ``capacity_`` (dropped) for a token that will not be
  needed."""
  if not mask.n_local or capacity_ < mask.n_global + mask.n_local:
    return jnp.where(new_idx < capacity_, new_idx, capacity_)
  g, n = mask.n_global, mask.n_local
  slot = jnp.where(new_idx < g, new_idx, g + (new_idx - g) % n)
  keep = (new_idx < g) | (new_idx > last - n)
  return jnp.where(keep, slot, capacity_)


class LayerCache(NamedTuple):
  """One attention layer's KV cache in a decoding call, and how to use it.

  ``mode``: ``'prefill'`` (the cache is empty: attend over the new tokens
  alone, through the configured backend, then store them), ``'write'``
  (store the new keys first, then attend over the cache alone: no copy of
  it is made) or ``'concat'`` (attend over the cache and the new keys side
  by side, then store: for several new tokens in a ring, where storing
  first would overwrite keys the earlier of them still see).
  """
  k: jax.Array         # [B, C, H, K] cached keys
  v: jax.Array         # [B, C, H, K]
  pos: jax.Array       # [B, C] their positions ('write': after this call's)
  idx: jax.Array       # [C] their token indices, -1 for an empty slot (idem)
  new_idx: jax.Array   # [T] token indices of this call's tokens
  slots: jax.Array     # [T] their slots; C for a token not kept
  mode: str
  aux: object = None   # the content term's cached key side, or None
  prev_slot: jax.Array = None  # [] slot of the token before this call's

  def store(self, k_BxTxHxK: jax.Array, v_BxTxHxK: jax.Array):
    """``(k, v)`` of the cache with this call's keys and values stored."""
    return (self.k.at[:, self.slots].set(k_BxTxHxK.astype(self.k.dtype),
                                         mode='drop'),
            self.v.at[:, self.slots].set(v_BxTxHxK.astype(self.v.dtype),
                                         mode='drop'))

  def store_aux(self, aux_new):
    """The cached content key side with this call's ``[B, T, ...]`` stored
    (None without one)."""
    if self.aux is None:
      return None
    return jax.tree.map(
        lambda c, x: c.at[:, self.slots].set(x.astype(c.dtype), mode='drop'),
        self.aux, aux_new)

  def visible_aux(self, stored_aux, aux_new):
    """The content key side of the keys ``visible`` returns."""
    if self.mode == 'write':
      return stored_aux
    return jax.tree.map(lambda c, x: jnp.concatenate([c, x.astype(c.dtype)],
                                                     axis=1),
                        self.aux, aux_new)

  def previous_aux(self):
    """The cached content key side of the token just before this call's
    first (each leaf ``[B, ...]``), zeros if there is none; None without a
    cached key side."""
    if self.aux is None:
      return None
    has = self.new_idx[0] > 0
    return jax.tree.map(
        lambda c: jnp.where(has, jnp.take(c, self.prev_slot, axis=1), 0
                            ).astype(c.dtype), self.aux)

  def visible(self, stored, k_BxTxHxK, v_BxTxHxK, positions_BxT):
    """``(k, v, positions, token indices)`` the new queries attend over:
    the cache after storing (``'write'``), or the cache and the new keys
    side by side (``'concat'``)."""
    if self.mode == 'write':
      return (*stored, self.pos, self.idx)
    return (jnp.concatenate([self.k, k_BxTxHxK], axis=1),
            jnp.concatenate([self.v, v_BxTxHxK], axis=1),
            jnp.concatenate([self.pos, positions_BxT], axis=1),
            jnp.concatenate([self.idx, self.new_idx]))


class Call(NamedTuple):
  """The bookkeeping of one decoding call: each layer's ``LayerCache`` is
  ``layer(k, v)``, and ``finish`` gives the cache after the call."""
  pos: jax.Array       # [B, C] positions after this call
  idx: jax.Array       # [C] token indices after this call
  seen_pos: jax.Array  # what the layers read as cached positions
  seen_idx: jax.Array
  new_idx: jax.Array
  slots: jax.Array
  mode: str
  next: jax.Array
  prev_slot: jax.Array

  def layer(self, k: jax.Array, v: jax.Array, aux=None) -> LayerCache:
    return LayerCache(k, v, self.seen_pos, self.seen_idx, self.new_idx,
                      self.slots, self.mode, aux, self.prev_slot)

  def finish(self, new_k: list, new_v: list, new_aux=None) -> dict:
    new_aux = new_aux if new_aux is not None else [None] * len(new_k)
    return {'k': new_k, 'v': new_v, 'aux': new_aux, 'pos': self.pos,
            'idx': self.idx, 'next': self.next}


def begin(cache: dict, mask: attention.Mask, positions_BxT: jax.Array,
          prefill: bool) -> Call:
  """Where the ``T`` new tokens of a call go, and how layers attend.

  ``prefill=True`` (only on an empty cache) attends over the new tokens
  alone; otherwise the new tokens attend densely over the cache and
  themselves. Token indices continue from ``cache['next']``.
  """
  t = positions_BxT.shape[1]
  c = cache['idx'].shape[0]
  start = cache['next']
  new_idx = start + jnp.arange(t, dtype=jnp.int32)
  where = slots(mask, new_idx, start + t - 1, c)
  pos = cache['pos'].at[:, where].set(positions_BxT.astype(jnp.int32),
                                      mode='drop')
  idx = cache['idx'].at[where].set(new_idx, mode='drop')
  ring = bool(mask.n_local)
  mode = 'prefill' if prefill else ('concat' if ring and t > 1 else 'write')
  seen_pos, seen_idx = ((pos, idx) if mode == 'write'
                        else (cache['pos'], cache['idx']))
  # The token before this call's first is always kept (the last of the
  # previous call), so its slot holds its content key side.
  prev_slot = jnp.clip(slots(mask, start[None] - 1, start - 1, c)[0], 0,
                       c - 1)
  return Call(pos, idx, seen_pos, seen_idx, new_idx, where, mode, start + t,
              prev_slot)
