"""Which keys a query sees: attention masks as functions of token indices.

One definition serves every backend: the dense and chunked ones of
``lmx.model.attention``, the KV cache, and the fused kernels of
``lmx.kernels`` (which import this module and nothing else of the model), so
a mask and the tiles it hides are the same everywhere by construction.
Causality is a property of token order (index ``j <= i``), never of position
values, so it holds for randomized and shifted positions alike.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Mask:
  """Which keys a query sees, by token index (not by position value).

  Causal: query ``i`` sees key ``j`` iff ``0 <= j <= i`` (a negative index
  marks an empty cache slot or padding). With ``n_local > 0`` this is
  LM-Infinite's Lambda-shaped mask (Han et al. 2023, Sec. 4): only the first
  ``n_global`` tokens and the last ``n_local`` (``i - j < n_local``, the
  query itself included) stay visible.

  With ``chunk > 0`` this is Llama 4's chunked local attention (its
  ``attention_chunk_size``; ``create_chunked_causal_mask`` in its released
  code): the sequence is cut into chunks of ``chunk`` tokens and a query
  sees the earlier keys of its own chunk alone, ``j // chunk == i // chunk``.
  Unlike a sliding window, the first query of a chunk sees only itself. A
  chunk and the Lambda window are never set together (the config check).
  """

  n_global: int = 0
  n_local: int = 0
  chunk: int = 0

  def __call__(self, q_idx_T: jax.Array, k_idx_S: jax.Array) -> jax.Array:
    """``[T, S]`` bool: which of the keys ``k_idx_S`` each query of
    ``q_idx_T`` sees."""
    return self.pairs(q_idx_T[:, None], k_idx_S[None, :])

  def pairs(self, q_idx, k_idx):
    """Whether query ``q_idx`` sees key ``k_idx``, elementwise over
    broadcasting int32 arrays (the kernels pass iotas of one tile)."""
    visible = (k_idx <= q_idx) & (k_idx >= 0)
    if self.n_local:
      visible &= (q_idx - k_idx < self.n_local) | (k_idx < self.n_global)
    if self.chunk:
      visible &= (q_idx // self.chunk) == (k_idx // self.chunk)
    return visible

  def visible_count(self, q_idx_T: jax.Array) -> jax.Array:
    """How many keys query ``i`` sees when every earlier token is there:
    ``i + 1`` (causal), ``min(i + 1, n_local)`` plus the global tokens
    before the local window, or ``i mod chunk + 1``. ``[T]`` int32."""
    if self.chunk:
      return q_idx_T.astype(jnp.int32) % self.chunk + 1
    n = q_idx_T.astype(jnp.int32) + 1
    if not self.n_local:
      return n
    far = jnp.clip(n - self.n_local, 0, self.n_global)
    return jnp.minimum(n, self.n_local) + far

  def tile_visible(self, q_lo, q_hi, k_lo, k_hi):
    """Whether queries ``q_lo..q_hi`` and keys ``k_lo..k_hi`` (token
    indices, inclusive) share a visible pair; Python ints or traced int32
    alike. Exact: some key ``k <= q`` (``k_lo <= q_hi``), within the
    Lambda window or global, and, with a chunk, in a chunk some query of
    the block is in (``k_hi`` reaches the chunk of ``q_lo``; then the key
    ``max(k_lo, chunk start of q_lo)`` pairs with ``max(q_lo, that key)``).
    """
    vis = k_lo <= q_hi
    if self.n_local:
      vis &= (k_lo < self.n_global) | (k_hi > q_lo - self.n_local)
    if self.chunk:
      vis &= k_hi >= (q_lo // self.chunk) * self.chunk
    return vis

  def tile_full(self, q_lo, q_hi, k_lo, k_hi):
    """Whether every query of ``q_lo..q_hi`` sees every key of
    ``k_lo..k_hi`` (token indices of real keys, inclusive; Python ints or
    traced int32 alike), so the tile needs no mask. Exact: the last key
    precedes the first query (``k_hi <= q_lo``), and, with the Lambda
    window, the last query's farthest non-global key is inside it; with a
    chunk, the first key and the last query share a chunk (then all do).
    """
    full = (k_hi <= q_lo) & (k_lo >= 0)
    if self.n_local:   # the keys past the global ones all in the window
      first_local = jnp.maximum(k_lo, self.n_global)
      full &= (k_hi < self.n_global) | (q_hi - first_local < self.n_local)
    if self.chunk:
      full &= (k_lo // self.chunk) == (q_hi // self.chunk)
    return full


def causal_mask(q_len: int, k_len: int) -> jax.Array:
  """``[T, S]`` bool: query ``i`` sees key ``j`` iff ``j <= i + (S - T)``.

  With ``S > T`` the queries are the last ``T`` of the ``S`` keys.
  """
  return Mask()(jnp.arange(q_len) + (k_len - q_len), jnp.arange(k_len))


# Plain causal attention: every earlier key and the query's own.
CAUSAL = Mask()
