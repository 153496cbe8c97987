"""What the fused attention kernels share, whatever they are compiled by:
the tiles a mask shows, the mask and the bias of one tile, the online
softmax step, the backward's tile gradients and the bias-parameter
pullback, and the preparation of the inputs.

``lmx.kernels.flash`` (TPU, Mosaic) walks the visited tiles as a grid of
its own (scalar-prefetched tile lists); ``lmx.kernels.flash_gpu`` (GPU,
Triton) loops, in each program, over the runs of visible key (or query)
blocks of its block (``block_runs``). Both list them from the same
``visited_tiles``, score a tile with ``tile_scores`` and pull the bias
gradient back with ``bias_grad_row``, so the two kernels compute the same
function by construction.

The mask is ``lmx.model.masks.Mask``, the one the other backends use;
nothing here imports ``lmx.model.attention`` (it imports the kernels).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lmx.model.masks import Mask

NEG_INF = -1e30
NT_DIMS = (((1,), (1,)), ((), ()))   # a @ b.T
# Tile entries per slice of the bias-parameter pullback (``bias_grad_row``).
BIAS_GRAD_ELEMENTS = 128 * 128


def cdiv(a: int, b: int) -> int:
  return -(-a // b)


def next_power_of_2(n: int) -> int:
  return 1 << max(0, int(n) - 1).bit_length()


# ------------------------------------------------------------ visited tiles


def tile_visible(i: int, j: int, *, t: int, s: int, block_q: int,
                 block_k: int, n_global: int = 0, n_local: int = 0,
                 chunk: int = 0) -> bool:
  """Whether query block ``i`` and key block ``j`` share a visible pair:
  ``Mask.tile_visible`` over the block's real (unpadded) token indices,
  queries being the last T of S keys."""
  q_lo = i * block_q + (s - t)
  q_hi = min((i + 1) * block_q, t) - 1 + (s - t)
  k_lo = j * block_k
  k_hi = min((j + 1) * block_k, s) - 1
  return bool(Mask(n_global, n_local, chunk).tile_visible(q_lo, q_hi, k_lo,
                                                         k_hi))


def visited_tiles(t: int, s: int, block_q: int, block_k: int,
                  n_global: int = 0, n_local: int = 0,
                  chunk: int = 0) -> list[tuple[int, int]]:
  """The ``(query block, key block)`` tiles the kernels compute, by query
  block, then key block: exactly the tiles with a visible pair
  (``tile_visible``)."""
  nq, nk = cdiv(t, block_q), cdiv(s, block_k)
  kw = dict(t=t, s=s, block_q=block_q, block_k=block_k, n_global=n_global,
            n_local=n_local, chunk=chunk)
  return [(i, j) for i in range(nq) for j in range(nk)
          if tile_visible(i, j, **kw)]


def block_runs(pairs: list[tuple[int, int]], n_outer: int, by: int,
               width: int = 4) -> np.ndarray:
  """The visited tiles ``pairs`` as runs of consecutive inner blocks per
  outer block (``by`` 0: per query block, runs of key blocks; 1: per key
  block, runs of query blocks): ``[n_outer, width]`` int32, each row the
  ``lo, hi`` (exclusive) of its runs, then empty ``0, 0`` runs. A loop over
  ``range(lo, hi)`` of every run visits exactly the row's tiles. Under the
  causal and chunked masks a row is one run; under the Lambda one, the
  global blocks and the window's (two). Raises if a row needs more than
  ``width // 2`` runs."""
  inner = {g: [] for g in range(n_outer)}
  for p in pairs:
    inner[p[by]].append(p[1 - by])
  out = np.zeros((n_outer, width), np.int32)
  for g, blocks in inner.items():
    runs = []
    for x in sorted(blocks):
      if runs and runs[-1][1] == x:
        runs[-1][1] = x + 1
      else:
        runs.append([x, x + 1])
    if 2 * len(runs) > width:
      raise ValueError(f'block {g} visits {len(runs)} runs of tiles, more '
                       f'than {width // 2}.')
    out[g, :2 * len(runs)] = np.asarray(runs, np.int32).reshape(-1)
  return out


# ------------------------------------------------------------------ config


@dataclasses.dataclass(frozen=True)
class Static:
  """Everything the kernels need that is not an array."""
  t: int
  s: int
  block_q: int
  block_k: int
  n_global: int
  n_local: int
  chunk: int
  bias_fn: Optional[Callable]
  leaf_sizes: tuple[tuple[str, int], ...]
  interpret: bool
  # Whether the backward computes the bias parameters' gradient (the GPU
  # kernel leaves it out for constant parameters).
  bias_grads: bool = True

  @property
  def nq(self):
    return cdiv(self.t, self.block_q)

  @property
  def nk(self):
    return cdiv(self.s, self.block_k)

  @property
  def n_params(self):
    return sum(n for _, n in self.leaf_sizes)

  @property
  def pull_bias(self) -> bool:
    """Whether the dq kernel pulls the bias gradient back."""
    return bool(self.n_params) and self.bias_grads

  def tiles(self) -> list[tuple[int, int]]:
    return visited_tiles(self.t, self.s, self.block_q, self.block_k,
                         self.n_global, self.n_local, self.chunk)


def kernel_bias_params(kernel_bias, h: int, max_params: int):
  """``(leaf_sizes, params [H, P] float32, fn)`` of a ``KernelBias`` (or
  of None: no bias), the parameters concatenated per head in name order.
  Raises for a parameter that is not ``[H, n]`` or more than
  ``max_params`` per head."""
  if kernel_bias is None:
    return (), jnp.zeros((h, 0), jnp.float32), None
  names = sorted(kernel_bias.params)
  leaves = [jnp.asarray(kernel_bias.params[n], jnp.float32) for n in names]
  for n, leaf in zip(names, leaves):
    if leaf.ndim != 2 or leaf.shape[0] != h:
      raise ValueError(f'kernel bias parameter {n!r} must be [heads={h}, '
                       f'n], got {leaf.shape}.')
  leaf_sizes = tuple((n, leaf.shape[1]) for n, leaf in zip(names, leaves))
  if sum(n for _, n in leaf_sizes) > max_params:
    raise ValueError(f'the kernel bias has more than {max_params} '
                     'parameters per head.')
  return leaf_sizes, jnp.concatenate(leaves, axis=1), kernel_bias.fn


def head_params(leaf_sizes, read: Callable[[int], jax.Array]) -> dict:
  """One head's bias parameters ``{name: [scalars]}`` (the form
  ``KernelBias.fn`` takes), ``read(c)`` giving its ``c``-th scalar."""
  out, o = {}, 0
  for name, n in leaf_sizes:
    out[name] = [read(o + c) for c in range(n)]
    o += n
  return out


def pad(x, axis: int, size: int):
  """``x`` zero-padded at the end of ``axis`` to ``size``."""
  extra = size - x.shape[axis]
  if not extra:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths)


# -------------------------------------------------------------- one tile


def visible_pairs(q_idx, k_idx, *, s: int, n_global: int = 0,
                  n_local: int = 0, chunk: int = 0):
  """Which pairs of token indices ``q_idx``, ``k_idx`` (broadcasting int32
  arrays) the mask shows (``Mask.pairs``), with the padded keys
  (``k >= s``) hidden."""
  return Mask(n_global, n_local, chunk).pairs(q_idx, k_idx) & (k_idx < s)


def tile_scores(st: Static, head, i, j, q, k, qpos, kpos, scale):
  """Masked float32 logits of tile ``(i, j)`` ``[bq, bk]`` and its
  visibility: ``q k^T * scale + bias(q_pos, k_pos)``, ``head`` the head's
  bias parameters (``head_params``), ``qpos [bq, 1]``, ``kpos [1, bk]``."""
  s = jax.lax.dot_general(q, k, NT_DIMS,
                          preferred_element_type=jnp.float32) * scale
  if st.bias_fn is not None:
    s = s + st.bias_fn(head, qpos, kpos)
  shape = (st.block_q, st.block_k)
  q_idx = (jax.lax.broadcasted_iota(jnp.int32, shape, 0)
           + (i * st.block_q + st.s - st.t))
  k_idx = jax.lax.broadcasted_iota(jnp.int32, shape, 1) + j * st.block_k
  visible = visible_pairs(q_idx, k_idx, s=st.s, n_global=st.n_global,
                          n_local=st.n_local, chunk=st.chunk)
  return jnp.where(visible, s, NEG_INF), visible


def softmax_step(m_prev, l_prev, acc_prev, s, visible, v):
  """One tile folded into the running max ``m [bq, 1]``, normaliser ``l``
  and output ``acc [bq, K]`` (the online softmax)."""
  m_new = jnp.maximum(m_prev, s.max(axis=1, keepdims=True))
  prob = jnp.where(visible, jnp.exp(s - m_new), 0.0)
  correction = jnp.exp(m_prev - m_new)
  l_new = l_prev * correction + prob.sum(axis=1, keepdims=True)
  acc = acc_prev * correction + jax.lax.dot(
      prob.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return m_new, l_new, acc


def softmax_finish(m, l, acc, dtype):
  """The output and the log-sum-exp ``[bq, 1]`` of the running sums (0 for
  a row that saw no key)."""
  seen = l > 0
  safe = jnp.where(seen, l, 1.0)
  return (acc / safe).astype(dtype), jnp.where(seen, m + jnp.log(safe), 0.0)


def probs_and_ds(st: Static, head, scale, i, j, q, k, v, qpos, kpos, do,
                 lse, delta):
  """The tile's probabilities, recomputed from the saved log-sum-exp, and
  its logit gradient ``ds = p * (dO v^T - delta)``."""
  s, visible = tile_scores(st, head, i, j, q, k, qpos, kpos, scale)
  prob = jnp.where(visible, jnp.exp(s - lse), 0.0)
  dp = jax.lax.dot_general(do, v, NT_DIMS, preferred_element_type=jnp.float32)
  return prob, prob * (dp - delta)


def tile_delta(st: Static, head, scale, i, j, q, k, v, qpos, kpos, do, lse):
  """The tile's share of ``delta = sum_j p_ij (dO v^T)_ij = rowsum(dO * O)``
  ``[bq, 1]``, from the float32 probabilities rather than the rounded
  output."""
  s, visible = tile_scores(st, head, i, j, q, k, qpos, kpos, scale)
  prob = jnp.where(visible, jnp.exp(s - lse), 0.0)
  dp = jax.lax.dot_general(do, v, NT_DIMS, preferred_element_type=jnp.float32)
  return (prob * dp).sum(axis=1, keepdims=True)


def bias_grad_row(st: Static, head, qpos, kpos, ds, lanes: int):
  """The tile's contribution to its head's bias-parameter gradient, as a
  ``[1, lanes]`` row (parameter ``c`` in lane ``c``): ``jax.vjp`` of the
  bias function pulls the logit gradient ``ds`` back to ``head``."""
  lane = jax.lax.broadcasted_iota(jnp.int32, (1, lanes), 1)
  row = jnp.zeros((1, lanes), jnp.float32)
  # The pullback keeps the bias function's intermediates alive (FIRE's:
  # one tile per hidden unit), so it runs on slices of at most
  # BIAS_GRAD_ELEMENTS entries, which bounds the memory it needs.
  rows = max(8, BIAS_GRAD_ELEMENTS // st.block_k)
  for r in range(0, st.block_q, rows):
    if rows >= st.block_q:   # one slice: the whole tile, unsliced
      qp, dsl = qpos, ds
    else:
      sl = slice(r, min(r + rows, st.block_q))
      qp, dsl = qpos[sl], ds[sl]
    _, pull = jax.vjp(lambda prm, qp=qp: st.bias_fn(prm, qp, kpos), head)
    (grads,) = pull(dsl)
    c = 0
    for name, _ in st.leaf_sizes:
      for g in grads[name]:
        row = row + jnp.where(lane == c, g, 0.0)
        c += 1
  return row
