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
chunks, exactly as ``lmx.model.attention.Mask``), and folds it into a running
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
the last ``T`` of the ``S`` keys, as in ``lmx.model.attention``. On a TPU the
kernel is compiled by Mosaic; elsewhere it runs in Pallas's interpreter
(``interpret=True``: exact, slow, for tests). For Mosaic, ``block_q`` must
be a multiple of 8 (16 in bfloat16) and ``block_k`` of 128.

Not covered: a distance clamp's second (far) branch (ReRoPE, LM-Infinite's
distance limit, Self-Extend); ``lmx.model.attention`` falls back for those.

The visited tiles, a tile's mask, bias and scores, the online-softmax step
and the bias pullback live in ``lmx.kernels.tiles``, shared with the GPU
kernel (``lmx.kernels.flash_gpu``); this module is the TPU grid around them.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from lmx.model import ops
from lmx.kernels import tiles
# The tile lists, the mask and the tile math are shared with the GPU kernel
# (lmx.kernels.tiles); these names stay importable from here.
from lmx.kernels.tiles import NEG_INF, tile_visible, visited_tiles  # noqa: F401

# The bias-gradient partials are one lane row per (batch, head, q block).
LANES = 128
_Static = tiles.Static


# ------------------------------------------------------------ visited tiles


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


def _head_params(st: _Static, params_ref, h):
  """The bias parameters of head ``h`` from SMEM: ``{name: [scalars]}``."""
  return tiles.head_params(st.leaf_sizes, lambda c: params_ref[h, c])


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
    s, visible = tiles.tile_scores(st, _head_params(st, params_ref, h),
                                   qi_ref[p], kj_ref[p], q_ref[...],
                                   k_ref[...], qpos_ref[...], kpos_ref[...],
                                   scale)
    m_sc[...], l_sc[...], acc_sc[...] = tiles.softmax_step(
        m_sc[...], l_sc[...], acc_sc[...], s, visible, v_ref[...])

  @pl.when(last_ref[p] == 1)
  def _finish():
    o_ref[...], lse_ref[...] = tiles.softmax_finish(
        m_sc[...], l_sc[...], acc_sc[...], o_ref.dtype)


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
  sched = _schedule(st.tiles(), st.nq, 0)
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
  return tiles.probs_and_ds(st, _head_params(st, params_ref, h), scale, i, j,
                            q, k, v, qpos, kpos, do, lse, delta)


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
  return tiles.bias_grad_row(st, _head_params(st, params_ref, h), qpos, kpos,
                             ds, LANES)


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
  pairs = st.tiles()
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


_pad = tiles.pad


def flash_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, q_pos_BxT, k_pos_BxS,
                    kernel_bias=None, *, n_global: int = 0, n_local: int = 0,
                    chunk: int = 0, block_q: int = 128, block_k: int = 128,
                    interpret: Optional[bool] = None) -> jax.Array:
  """Softmax attention with the bias of ``kernel_bias`` (a
  ``lmx.positions.base.KernelBias``, or None for none) computed in the
  kernel, under the causal mask (``n_local = 0``), the Lambda-shaped one, or
  Llama 4's chunked local one (``chunk > 0``; ``lmx.model.attention.Mask``).
  Queries are the last ``T`` of the ``S`` keys. ``[B, T, H, K]`` in v's
  dtype. Differentiable in q, k, v and the bias parameters.

  ``interpret`` defaults to True off TPU (Pallas's interpreter).
  """
  b, t, h, kd = q_BxTxHxK.shape
  s = k_BxSxHxK.shape[1]
  if interpret is None:  # the platform traced for (lmx.model.ops.on_platform)
    interpret = ops.platform() != 'tpu'
  leaf_sizes, params_HxP, bias_fn = tiles.kernel_bias_params(
      kernel_bias, h, LANES)
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
