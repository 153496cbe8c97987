"""A fused flash-attention kernel in Pallas whose position bias is computed
inside the kernel, from the query and key position tiles.

Forward: one grid step per (batch, head, visited tile). The tiles a query
block visits are listed ahead of time by ``visited_tiles`` (a pure function
of the lengths, the block sizes and the mask), handed to the kernel as
scalar-prefetch arrays that both the block index maps and the kernel read:
a tile the mask (causal, Lambda-shaped or chunked) hides entirely is not in
the list, so it is neither loaded nor computed. Each step scores its tile,

    s = q k^T / sqrt(K) + bias(q_pos, k_pos),

masks it by token index (causality, the Lambda window and Llama 4's
chunks, exactly as ``lmx.attention.Mask``), and folds it into a running
max, normaliser and output (the online softmax of Milakov & Gimelshein 2018, as in
FlashAttention). The log-sum-exp of each row is saved for the backward.

Backward (``jax.custom_vjp``): two kernels recompute each visited tile's
probabilities from the saved log-sum-exp. One walks the tiles key block by
key block and accumulates dk and dv; the other walks them query block by
query block and accumulates dq and the gradient of the bias parameters:
the bias is recomputed in the kernel and ``jax.vjp`` of its per-head
function pulls the tile's logit gradient back to the parameters (a few
scalars per head), summed over tiles in a small per-(batch, head, query
block) output that is reduced outside. No ``[T, S]`` array is ever written
to memory.

The bias comes from the encoding's ``kernel_bias()``
(``lmx.positions.base.KernelBias``): per-head parameters ``[H, n]`` that
the kernel reads as scalars from SMEM, and a pure function of them and of
the position tiles ``q_pos [bq, 1]``, ``k_pos [1, bk]`` (int32) returning
the ``[bq, bk]`` float32 bias of one head. It uses only elementwise math and
comparisons (no gathers), so Mosaic (TPU Pallas) lowers it.

Lengths need not be multiples of the blocks: queries, keys and positions
are padded, padded keys are masked and padded queries dropped. Queries are
the last ``T`` of the ``S`` keys, as in ``lmx.attention``. On a TPU the
kernel is compiled by Mosaic; elsewhere it runs in Pallas's interpreter
(``interpret=True``: exact, slow, for tests). For Mosaic, ``block_q`` must
be a multiple of 8 (16 in bfloat16) and ``block_k`` of 128.

Not covered: a distance clamp's second (far) branch (ReRoPE, LM-Infinite's
distance limit, Self-Extend); ``lmx.attention`` falls back for those.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from lmx import ops

NEG_INF = -1e30
NT_DIMS = (((1,), (1,)), ((), ()))   # a @ b.T
# The bias-gradient partials are one lane row per (batch, head, q block).
LANES = 128
# Tile entries per slice of the bias-parameter pullback (``_bias_grad_row``).
BIAS_GRAD_ELEMENTS = 128 * 128


def _cdiv(a: int, b: int) -> int:
  return -(-a // b)


# ------------------------------------------------------------ visited tiles


def tile_visible(i: int, j: int, *, t: int, s: int, block_q: int,
                 block_k: int, n_global: int = 0, n_local: int = 0,
                 chunk: int = 0) -> bool:
  """Whether query block ``i`` and key block ``j`` share a visible pair.

  Queries are token indices ``S - T .. S - 1`` (the last T of S keys);
  only real (unpadded) rows and columns count. Causal: some key ``k <= q``.
  Lambda-shaped (``n_local > 0``): besides ``k <= q``, ``q - k < n_local``
  or ``k < n_global``; over the tile, ``q - k`` spans
  ``[q_lo - k_hi, q_hi - k_lo]``. Chunked local (``chunk > 0``, Llama 4):
  besides ``k <= q``, some key in the chunk of some query, which holds
  exactly when ``k_hi`` reaches the start of ``q_lo``'s chunk.
  """
  q_lo = i * block_q + (s - t)
  q_hi = min((i + 1) * block_q, t) - 1 + (s - t)
  k_lo = j * block_k
  k_hi = min((j + 1) * block_k, s) - 1
  if k_lo > q_hi:
    return False
  if chunk and k_hi < (q_lo // chunk) * chunk:
    return False
  if not n_local:
    return True
  return k_lo < n_global or q_lo - k_hi <= n_local - 1


def visited_tiles(t: int, s: int, block_q: int, block_k: int,
                  n_global: int = 0, n_local: int = 0,
                  chunk: int = 0) -> list[tuple[int, int]]:
  """The ``(query block, key block)`` tiles the kernel computes, in its
  forward order (by query block, then key block): exactly the tiles with a
  visible pair (``tile_visible``)."""
  nq, nk = _cdiv(t, block_q), _cdiv(s, block_k)
  kw = dict(t=t, s=s, block_q=block_q, block_k=block_k, n_global=n_global,
            n_local=n_local, chunk=chunk)
  return [(i, j) for i in range(nq) for j in range(nk)
          if tile_visible(i, j, **kw)]


def _schedule(pairs: list[tuple[int, int]], n_outer: int, by: int):
  """Grid-step arrays for walking ``pairs`` grouped by element ``by`` (0:
  query block, 1: key block): the tile indices, whether to compute it,
  and whether it opens or closes its group. A group with no visible tile
  gets one step that computes nothing, so its output is still written
  (zeros)."""
  groups = {g: [] for g in range(n_outer)}
  for p in pairs:
    groups[p[by]].append(p)
  qi, kj, run, first, last = [], [], [], [], []
  for g in range(n_outer):
    steps = groups[g] or [(g, 0) if by == 0 else (0, g)]
    for n, (i, j) in enumerate(steps):
      qi.append(i)
      kj.append(j)
      run.append(int(bool(groups[g])))
      first.append(int(n == 0))
      last.append(int(n == len(steps) - 1))
  return tuple(np.asarray(a, np.int32) for a in (qi, kj, run, first, last))


# ------------------------------------------------------------------ config


@dataclasses.dataclass(frozen=True)
class _Static:
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

  @property
  def nq(self):
    return _cdiv(self.t, self.block_q)

  @property
  def nk(self):
    return _cdiv(self.s, self.block_k)

  @property
  def n_params(self):
    return sum(n for _, n in self.leaf_sizes)


def _head_params(st: _Static, params_ref, h):
  """The bias parameters of head ``h`` from SMEM: ``{name: [scalars]}``."""
  out, o = {}, 0
  for name, n in st.leaf_sizes:
    out[name] = [params_ref[h, o + c] for c in range(n)]
    o += n
  return out


def _tile_scores(st: _Static, params_ref, h, i, j, q, k, qpos, kpos, scale):
  """Masked float32 logits of one tile ``[bq, bk]`` and its visibility."""
  s = jax.lax.dot_general(q, k, NT_DIMS,
                          preferred_element_type=jnp.float32) * scale
  if st.bias_fn is not None:
    s = s + st.bias_fn(_head_params(st, params_ref, h), qpos, kpos)
  shape = (st.block_q, st.block_k)
  q_idx = (jax.lax.broadcasted_iota(jnp.int32, shape, 0)
           + (i * st.block_q + st.s - st.t))
  k_idx = jax.lax.broadcasted_iota(jnp.int32, shape, 1) + j * st.block_k
  visible = (k_idx <= q_idx) & (k_idx < st.s)
  if st.n_local:
    visible &= (q_idx - k_idx < st.n_local) | (k_idx < st.n_global)
  if st.chunk:
    visible &= (q_idx // st.chunk) == (k_idx // st.chunk)
  return jnp.where(visible, s, NEG_INF), visible


# ----------------------------------------------------------------- forward


def _fwd_kernel(st: _Static, scale, qi_ref, kj_ref, run_ref, first_ref,
                last_ref, params_ref, qpos_ref, kpos_ref, q_ref, k_ref, v_ref,
                o_ref, lse_ref, m_sc, l_sc, acc_sc):
  h, p = pl.program_id(1), pl.program_id(2)

  @pl.when(first_ref[p] == 1)
  def _init():
    m_sc[...] = jnp.full(m_sc.shape, NEG_INF, jnp.float32)
    l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
    acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

  @pl.when(run_ref[p] == 1)
  def _compute():
    s, visible = _tile_scores(st, params_ref, h, qi_ref[p], kj_ref[p],
                              q_ref[...], k_ref[...], qpos_ref[...],
                              kpos_ref[...], scale)
    m_prev = m_sc[...]
    m_new = jnp.maximum(m_prev, s.max(axis=1, keepdims=True))
    prob = jnp.where(visible, jnp.exp(s - m_new), 0.0)
    correction = jnp.exp(m_prev - m_new)
    l_sc[...] = l_sc[...] * correction + prob.sum(axis=1, keepdims=True)
    v = v_ref[...]
    acc_sc[...] = acc_sc[...] * correction + jax.lax.dot(
        prob.astype(v.dtype), v, preferred_element_type=jnp.float32)
    m_sc[...] = m_new

  @pl.when(last_ref[p] == 1)
  def _finish():
    l = l_sc[...]
    seen = l > 0
    o_ref[...] = (acc_sc[...] / jnp.where(seen, l, 1.0)).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(seen, m_sc[...] + jnp.log(jnp.where(seen, l, 1.0)),
                             0.0)


def _specs(st: _Static, kd: int):
  """Block specs of the per-tile inputs, indexed through the schedule."""
  bq, bk = st.block_q, st.block_k
  qmap = lambda b, h, p, qi, kj, *_: (b, h, qi[p], 0)
  kmap = lambda b, h, p, qi, kj, *_: (b, h, kj[p], 0)
  return dict(
      params=pl.BlockSpec(memory_space=pltpu.SMEM),
      qpos=pl.BlockSpec((None, bq, 1), lambda b, h, p, qi, kj, *_:
                        (b, qi[p], 0)),
      kpos=pl.BlockSpec((None, 1, bk), lambda b, h, p, qi, kj, *_:
                        (b, 0, kj[p])),
      q=pl.BlockSpec((None, None, bq, kd), qmap),
      k=pl.BlockSpec((None, None, bk, kd), kmap),
      row=pl.BlockSpec((None, None, bq, 1), qmap),
  )


def _cost(st: _Static, b: int, h: int, kd: int, itemsize: int, n_tiles: int,
          matmuls: int, block_reads: tuple[int, int]):
  """What the kernel tells XLA it costs (XLA cannot see inside it): per
  visited tile ``matmuls`` products of ``bq x bk x K`` and ``bq * bk``
  exponentials; bytes: ``block_reads = (q-side blocks, k-side blocks)``
  read or written once per query block / key block, and the other side's
  blocks once per visited tile (``2`` k-side blocks per tile forward)."""
  bq, bk = st.block_q, st.block_k
  q_side, k_side = block_reads
  if q_side >= k_side:   # walks by query block: loads k, v per tile
    bytes_ = st.nq * bq * q_side + n_tiles * bk * 2
  else:                  # walks by key block: loads q, dO per tile
    bytes_ = st.nk * bk * k_side + n_tiles * bq * 2
  return pl.CostEstimate(
      flops=b * h * n_tiles * matmuls * 2 * bq * bk * kd,
      transcendentals=b * h * n_tiles * bq * bk,
      bytes_accessed=b * h * bytes_ * kd * itemsize)


def _params_2d(st: _Static, params_HxP, h: int):
  # SMEM wants at least one column; a bias-free call carries a dummy one.
  return params_HxP if st.n_params else jnp.zeros((h, 1), jnp.float32)


def _forward(st: _Static, q, k, v, qpos, kpos, params_HxP):
  """q ``[B, H, Tp, K]``, k/v ``[B, H, Sp, K]``, qpos ``[B, Tp, 1]``,
  kpos ``[B, 1, Sp]``: out ``[B, H, Tp, K]``, lse ``[B, H, Tp, 1]``."""
  b, h, tp, kd = q.shape
  sched = _schedule(visited_tiles(st.t, st.s, st.block_q, st.block_k,
                                  st.n_global, st.n_local, st.chunk), st.nq,
                      0)
  sp = _specs(st, kd)
  bq = st.block_q
  kernel = functools.partial(_fwd_kernel, st, kd ** -0.5)
  out, lse = pl.pallas_call(
      kernel,
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=5, grid=(b, h, len(sched[0])),
          in_specs=[sp['params'], sp['qpos'], sp['kpos'], sp['q'], sp['k'],
                    sp['k']],
          out_specs=[sp['q'], sp['row']],
          scratch_shapes=[pltpu.VMEM((bq, 1), jnp.float32),
                          pltpu.VMEM((bq, 1), jnp.float32),
                          pltpu.VMEM((bq, kd), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct(q.shape, v.dtype),
                 jax.ShapeDtypeStruct((b, h, tp, 1), jnp.float32)],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=('parallel', 'parallel', 'arbitrary')),
      interpret=st.interpret,
      cost_estimate=_cost(st, b, h, kd, q.dtype.itemsize,
                          int(sched[2].sum()), 2, (2, 0)),
      name='lmx_flash_fwd',
  )(*(jnp.asarray(a) for a in sched), _params_2d(st, params_HxP, h), qpos,
    kpos, q, k, v)
  return out, lse


# ---------------------------------------------------------------- backward


def _probs_and_ds(st, scale, params_ref, h, i, j, q, k, v, qpos, kpos, do,
                  lse, delta):
  s, visible = _tile_scores(st, params_ref, h, i, j, q, k, qpos, kpos, scale)
  prob = jnp.where(visible, jnp.exp(s - lse), 0.0)
  dp = jax.lax.dot_general(do, v, NT_DIMS, preferred_element_type=jnp.float32)
  return prob, prob * (dp - delta)


def _dkv_kernel(st: _Static, scale, qi_ref, kj_ref, run_ref, first_ref,
                last_ref, params_ref, qpos_ref, kpos_ref, q_ref, k_ref, v_ref,
                do_ref, lse_ref, delta_ref, dk_ref, dv_ref, dk_sc, dv_sc):
  h, p = pl.program_id(1), pl.program_id(2)

  @pl.when(first_ref[p] == 1)
  def _init():
    dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
    dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

  @pl.when(run_ref[p] == 1)
  def _compute():
    q, do = q_ref[...], do_ref[...]
    prob, ds = _probs_and_ds(st, scale, params_ref, h, qi_ref[p], kj_ref[p],
                             q, k_ref[...], v_ref[...], qpos_ref[...],
                             kpos_ref[...], do, lse_ref[...], delta_ref[...])
    dv_sc[...] += jax.lax.dot(prob.T.astype(do.dtype), do,
                              preferred_element_type=jnp.float32)
    dk_sc[...] += jax.lax.dot(ds.T.astype(q.dtype), q,
                              preferred_element_type=jnp.float32) * scale

  @pl.when(last_ref[p] == 1)
  def _finish():
    dk_ref[...] = dk_sc[...].astype(dk_ref.dtype)
    dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _bias_grad_row(st: _Static, params_ref, h, qpos, kpos, ds):
  """The tile's contribution to head ``h``'s bias-parameter gradient, as a
  ``[1, LANES]`` row (parameter ``c`` in lane ``c``)."""
  head = _head_params(st, params_ref, h)
  lane = jax.lax.broadcasted_iota(jnp.int32, (1, LANES), 1)
  row = jnp.zeros((1, LANES), jnp.float32)
  # The pullback keeps the bias function's intermediates alive (FIRE's:
  # one tile per hidden unit), so it runs on slices of at most
  # BIAS_GRAD_ELEMENTS entries, which bounds the VMEM it needs.
  rows = max(8, BIAS_GRAD_ELEMENTS // st.block_k)
  for r in range(0, st.block_q, rows):
    sl = slice(r, min(r + rows, st.block_q))
    _, pull = jax.vjp(lambda prm, sl=sl: st.bias_fn(prm, qpos[sl], kpos),
                      head)
    (grads,) = pull(ds[sl])
    c = 0
    for name, _ in st.leaf_sizes:
      for g in grads[name]:
        row = row + jnp.where(lane == c, g, 0.0)
        c += 1
  return row


def _dq_kernel(st: _Static, scale, qi_ref, kj_ref, run_ref, first_ref,
               last_ref, params_ref, qpos_ref, kpos_ref, q_ref, k_ref, v_ref,
               do_ref, lse_ref, delta_ref, dq_ref, *rest):
  if st.n_params:
    dprm_ref, dq_sc, dprm_sc = rest
  else:
    (dq_sc,) = rest
  h, p = pl.program_id(1), pl.program_id(2)

  @pl.when(first_ref[p] == 1)
  def _init():
    dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)
    if st.n_params:
      dprm_sc[...] = jnp.zeros(dprm_sc.shape, jnp.float32)

  @pl.when(run_ref[p] == 1)
  def _compute():
    k = k_ref[...]
    qpos, kpos = qpos_ref[...], kpos_ref[...]
    _, ds = _probs_and_ds(st, scale, params_ref, h, qi_ref[p], kj_ref[p],
                          q_ref[...], k, v_ref[...], qpos, kpos, do_ref[...],
                          lse_ref[...], delta_ref[...])
    dq_sc[...] += jax.lax.dot(ds.astype(k.dtype), k,
                              preferred_element_type=jnp.float32) * scale
    if st.n_params:
      dprm_sc[...] += _bias_grad_row(st, params_ref, h, qpos, kpos, ds)

  @pl.when(last_ref[p] == 1)
  def _finish():
    dq_ref[...] = dq_sc[...].astype(dq_ref.dtype)
    if st.n_params:
      dprm_ref[...] = dprm_sc[...]


def _backward(st: _Static, q, k, v, qpos, kpos, params_HxP, out, lse, do):
  b, h, tp, kd = q.shape
  bq, bk = st.block_q, st.block_k
  pairs = visited_tiles(st.t, st.s, bq, bk, st.n_global, st.n_local,
                        st.chunk)
  sp = _specs(st, kd)
  delta = jnp.sum(do.astype(jnp.float32) * out.astype(jnp.float32), axis=-1,
                  keepdims=True)
  prm = _params_2d(st, params_HxP, h)
  in_specs = [sp['params'], sp['qpos'], sp['kpos'], sp['q'], sp['k'], sp['k'],
              sp['q'], sp['row'], sp['row']]
  sem = pltpu.CompilerParams(
      dimension_semantics=('parallel', 'parallel', 'arbitrary'))
  args = (prm, qpos, kpos, q, k, v, do, lse, delta)

  sched_k = _schedule(pairs, st.nk, 1)
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, st, kd ** -0.5),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=5, grid=(b, h, len(sched_k[0])),
          in_specs=in_specs, out_specs=[sp['k'], sp['k']],
          scratch_shapes=[pltpu.VMEM((bk, kd), jnp.float32),
                          pltpu.VMEM((bk, kd), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype),
                 jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=sem, interpret=st.interpret, name='lmx_flash_dkv',
      cost_estimate=_cost(st, b, h, kd, q.dtype.itemsize, len(pairs), 4,
                          (0, 4)),
  )(*(jnp.asarray(a) for a in sched_k), *args)

  sched_q = _schedule(pairs, st.nq, 0)
  out_specs = [sp['q']]
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype)]
  scratch = [pltpu.VMEM((bq, kd), jnp.float32)]
  if st.n_params:
    out_specs.append(pl.BlockSpec(
        (None, None, None, 1, LANES),
        lambda b_, h_, p, qi, *_: (b_, h_, qi[p], 0, 0)))
    out_shape.append(jax.ShapeDtypeStruct((b, h, st.nq, 1, LANES),
                                          jnp.float32))
    scratch.append(pltpu.VMEM((1, LANES), jnp.float32))
  res = pl.pallas_call(
      functools.partial(_dq_kernel, st, kd ** -0.5),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=5, grid=(b, h, len(sched_q[0])),
          in_specs=in_specs, out_specs=out_specs, scratch_shapes=scratch),
      out_shape=out_shape, compiler_params=sem, interpret=st.interpret,
      cost_estimate=_cost(st, b, h, kd, q.dtype.itemsize, len(pairs), 3,
                          (3, 0)),
      name='lmx_flash_dq',
  )(*(jnp.asarray(a) for a in sched_q), *args)
  dq = res[0]
  dparams = (res[1].sum(axis=(0, 2))[:, 0, :st.n_params] if st.n_params
             else jnp.zeros_like(params_HxP))
  return dq, dk, dv, dparams


# --------------------------------------------------------------- custom vjp


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(st, q, k, v, qpos, kpos, params_HxP):
  return _forward(st, q, k, v, qpos, kpos, params_HxP)[0]


def _flash_fwd(st, q, k, v, qpos, kpos, params_HxP):
  out, lse = _forward(st, q, k, v, qpos, kpos, params_HxP)
  return out, (q, k, v, qpos, kpos, params_HxP, out, lse)


def _flash_bwd(st, res, do):
  q, k, v, qpos, kpos, params_HxP, out, lse = res
  dq, dk, dv, dparams = _backward(st, q, k, v, qpos, kpos, params_HxP, out,
                                  lse, do)
  return dq, dk, dv, None, None, dparams


_flash.defvjp(_flash_fwd, _flash_bwd)


def _pad(x, axis: int, size: int):
  extra = size - x.shape[axis]
  if not extra:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths)


def flash_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, q_pos_BxT, k_pos_BxS,
                    kernel_bias=None, *, n_global: int = 0, n_local: int = 0,
                    chunk: int = 0, block_q: int = 128, block_k: int = 128,
                    interpret: Optional[bool] = None) -> jax.Array:
  """Softmax attention with the bias of ``kernel_bias`` (a
  ``lmx.positions.base.KernelBias``, or None for none) computed in the
  kernel, under the causal mask (``n_local = 0``), the Lambda-shaped one, or
  Llama 4's chunked local one (``chunk > 0``; ``lmx.attention.Mask``).
  Queries are the last ``T`` of the ``S`` keys. ``[B, T, H, K]`` in v's
  dtype. Differentiable in q, k, v and the bias parameters.

  ``interpret`` defaults to True off TPU (Pallas's interpreter).
  """
  b, t, h, kd = q_BxTxHxK.shape
  s = k_BxSxHxK.shape[1]
  if interpret is None:  # the platform traced for (lmx.ops.on_platform)
    interpret = ops.platform() != 'tpu'
  if kernel_bias is not None:
    names = sorted(kernel_bias.params)
    leaves = [jnp.asarray(kernel_bias.params[n], jnp.float32) for n in names]
    for n, leaf in zip(names, leaves):
      if leaf.ndim != 2 or leaf.shape[0] != h:
        raise ValueError(f'kernel bias parameter {n!r} must be [heads={h}, '
                         f'n], got {leaf.shape}.')
    leaf_sizes = tuple((n, leaf.shape[1]) for n, leaf in zip(names, leaves))
    if sum(n for _, n in leaf_sizes) > LANES:
      raise ValueError(f'the kernel bias has more than {LANES} parameters '
                       'per head.')
    params_HxP = jnp.concatenate(leaves, axis=1)
    bias_fn = kernel_bias.fn
  else:
    leaf_sizes, params_HxP, bias_fn = (), jnp.zeros((h, 0), jnp.float32), None
  bq, bk = min(block_q, t), min(block_k, s)
  st = _Static(t=t, s=s, block_q=bq, block_k=bk, n_global=int(n_global),
               n_local=int(n_local), chunk=int(chunk), bias_fn=bias_fn,
               leaf_sizes=leaf_sizes,
               interpret=bool(interpret))
  tp, sp = st.nq * bq, st.nk * bk
  heads_first = lambda x, n: _pad(jnp.transpose(x, (0, 2, 1, 3)), 2, n)
  q = heads_first(q_BxTxHxK, tp)
  k = heads_first(k_BxSxHxK, sp)
  v = heads_first(v_BxSxHxK, sp)
  qpos = _pad(q_pos_BxT.astype(jnp.int32), 1, tp)[:, :, None]
  kpos = _pad(k_pos_BxS.astype(jnp.int32), 1, sp)[:, None, :]
  out = _flash(st, q, k, v, qpos, kpos, params_HxP)
  return jnp.transpose(out[:, :, :t], (0, 2, 1, 3))
