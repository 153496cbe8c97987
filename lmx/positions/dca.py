"""Dual Chunk Attention (An et al., ICML 2024, "Training-Free Long-Context
Scaling of Large Language Models", Sec. 3; released code: HKUNLP/ChunkLlama,
``chunkllama_attn_replace.py``): a far member of ``lmx.positions.far`` with
two far branches.

The sequence is cut into chunks of ``s`` positions (``chunk``); keys sit at
``k mod s`` whatever the chunk. A query at ``q`` scores a key at ``k``
(chunks ``q // s`` and ``k // s``) by the relation of their chunks:

* same chunk (intra): at ``q mod s - k mod s = q - k``, the true distance:
  the near branch (exact for a relative encoding, where only the distance
  counts);
* successive chunks (the key's chunk just before): the query at
  ``min(s + q mod s, s + w)`` (``w``: ``local``), so the first ``w``
  queries of a chunk keep their exact distance to the chunk before;
* farther chunks (inter): the query at the constant ``s + w``.

Every distance is then at most ``s + w``; the largest trained distance
must be at least that (``s + w < L``). At ``n <= s`` positions every pair
is intra: plain attention. The branch of each pair is a function of the
two positions (``DualChunk.select``), which the dense and chunked backends
evaluate tile by tile.

Paper and code: the paper writes the constant query position as ``c - 1``
(``c`` the pretraining length) and the successive one as
``s, s+1, ..., s+w-1, c-1, ...``; the code uses ``s + w`` for ``c - 1``
(its ``chunk_size``) with the chunk length ``s = chunk_size - local``, which
is the paper's rule with ``c - 1 = s + w``. Followed here: the code's rule
in ``s`` and ``w``, and its defaults, ``chunk_size = 3L/4`` and
``local = L/8`` (so ``s = 3L/4 - L/8``). The code's rotary tables also
multiply q and k by YaRN's ``0.05 ln(n/L) + 1`` past ``L`` (its comment says
the paper's results did not use it); not applied here.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lmx.config.fields import Field, require


@dataclasses.dataclass(frozen=True)
class DualChunk:
  """Dual Chunk Attention's positions: chunk length ``chunk`` (``s``) and
  local window ``local`` (``w``)."""

  chunk: int
  local: int

  def select(self, q_pos_BxT: jax.Array, k_pos_BxS: jax.Array) -> jax.Array:
    """``[B, T, S]`` int32: 0 for the pairs in one chunk (the near branch),
    1 for the key's chunk just before the query's (successive), 2 for
    farther ones (inter)."""
    gap = (jnp.floor_divide(q_pos_BxT, self.chunk)[:, :, None]
           - jnp.floor_divide(k_pos_BxS, self.chunk)[:, None, :])
    return jnp.where(gap <= 0, 0, jnp.where(gap == 1, 1, 2)).astype(
        jnp.int32)

  def branch_positions(self, q_pos_BxT: jax.Array, k_pos_BxS: jax.Array):
    """The far branches' ``(q, k)`` positions: successive, then inter."""
    s, top = self.chunk, self.chunk + self.local
    k = jnp.remainder(k_pos_BxS, s)
    successive = jnp.minimum(s + jnp.remainder(q_pos_BxT, s), top)
    inter = jnp.full_like(q_pos_BxT, top)
    return ((successive.astype(q_pos_BxT.dtype), k), (inter, k))


def dca_positions(q: int, k: int, chunk: int, local: int) -> tuple[int, int]:
  """The ``(query, key)`` positions DCA scores one causal pair at, from
  the paper's three cases (plain integers: a reference for plots and
  tests)."""
  gap = q // chunk - k // chunk
  if gap == 0:
    return q % chunk, k % chunk
  if gap == 1:
    return min(chunk + q % chunk, chunk + local), k % chunk
  return chunk + local, k % chunk


def dca_params(train_len: int) -> tuple[int, int]:
  """``(s, w)`` of the released code for a model trained at ``L``: its
  ``chunk_size = 3L // 4`` and ``local_window = L // 8``, the chunk length
  ``s = chunk_size - local_window``."""
  local = max(train_len // 8, 1)
  return max(train_len * 3 // 4 - local, 1), local


class DualChunkAttention:
  """Dual Chunk Attention, ``config.model.dca``: ``DualChunk(chunk,
  local)``. Its settings and rules; ``lmx.positions.far.REGISTRY`` sets
  them on ``far.Member`` (``far.on_base``), as this module cannot import
  the registry that imports it."""
  name = 'dca'
  FIELDS = {
      'chunk': Field(0, 'the chunk length s: keys at k mod s (0: off)',
                     lo=0),
      'local': Field(0, 'the local window w: successive-chunk queries at '
                     'min(s + q mod s, s + w), farther ones at s + w',
                     lo=0),
  }
  switch = 'chunk'
  summary = 'Dual Chunk Attention'
  far_switch = 'chunk'
  EXTENSIONS = {'dca': ('Dual Chunk Attention: chunks of 3L/4 - L/8, local '
                        'window L/8', {})}

  @classmethod
  def check(cls, model_cfg, used):
    s = model_cfg.dca
    chunk, local = int(s.chunk), int(s.local)
    require(local <= chunk,
            f'config.model.dca.local={local} is larger than '
            f'config.model.dca.chunk={chunk}; the local window lies within '
            f'a chunk. Lower local to at most {chunk}.')
    plain = [n for n, e in used.items() if not e.relative()]
    require(not plain,
            f'config.model.dca.chunk={chunk} re-positions the queries and '
            'keys that the rotation or the bias sees, but the '
            f'{", ".join(map(repr, plain))} encoding has neither (it adds '
            'its positions to the embeddings, or has none). Use a relative '
            'encoding, or set config.model.dca.chunk=0.')

  @classmethod
  def far(cls, model_cfg):
    s = model_cfg.dca
    return DualChunk(int(s.chunk), int(s.local))

  @classmethod
  def kernel_refusal(cls, model_cfg):
    return ('Dual Chunk Attention scores the pairs of earlier chunks by two '
            'more logit branches, which the kernel does not compute')

  @classmethod
  def configure(cls, model_cfg, train_len, length):
    """``dca_params``: on at every length, as the code applies it (plain
    attention at ``n <= s``)."""
    del length
    model_cfg.dca.chunk, model_cfg.dca.local = dca_params(train_len)

