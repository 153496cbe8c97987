"""The fused attention kernel of ``lmx.kernels.flash`` for GPUs: Pallas
lowered through Triton, with the position bias computed inside the kernel
from the encoding's ``kernel_bias()`` (``lmx.positions.base.KernelBias``),
the same forms the TPU kernel computes.

Forward: one program per (query block, batch, head). It keeps its query
block, and loops over the key blocks its block sees: the runs of
consecutive key blocks of the visited tiles (``tiles.block_runs`` of
``tiles.visited_tiles``: one run under the causal and chunked masks, two
under the Lambda-shaped one, the global blocks and the window's), read
from a small ``[query blocks, 4]`` table. A tile the mask hides entirely
is neither loaded nor computed. Each tile is scored, masked and folded into
the running max, normaliser and output by the functions the TPU kernel
uses (``tiles.tile_scores``, ``tiles.softmax_step``); the log-sum-exp of
each row is saved for the backward.

Backward (``jax.custom_vjp``): one kernel per (key block, batch, head)
loops over the runs of query blocks that see its key block and
accumulates dk and dv; one per (query block, batch, head) loops over its
key blocks and accumulates dq and the gradient of its head's bias
parameters (``tiles.bias_grad_row``: ``jax.vjp`` of the bias function
pulls the tile's logit gradient back), one row per (batch, head, query
block), summed outside; it runs first, and then also computes each row's
``delta`` from the float32 probabilities for both kernels (a delta from
the rounded output spoils the bias gradient in bfloat16). Without a bias
gradient to pull back (constant parameters: ``custom_vjp`` with symbolic
zeros), delta is ``rowsum(dO * O)``, as on TPU. No ``[T, S]`` array is
written to memory.

Triton wants power-of-two tensors of at least 16 rows for its products:
the blocks are powers of two (at least 16), the head dimension is padded
with zeros to one, and lengths that are no multiple of the blocks are
padded as in the TPU kernel (padded keys masked, padded queries dropped).
Off a GPU the kernel runs in Pallas's interpreter (``interpret=True``:
exact, slow, for tests). Not covered, as on TPU: a distance clamp's far
branch and content terms (``lmx.model.attention`` falls back for those).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from lmx.model import ops
from lmx.kernels import tiles

NEG_INF = tiles.NEG_INF
# Parameters per head the kernel takes (FIRE's 3 * width + 3 at most).
MAX_PARAMS = 128
# Entries of a row of the block-run tables (two runs).
RUN_WIDTH = 4
TN_DIMS = (((0,), (0,)), ((), ()))   # a.T @ b
DEFAULT_BLOCK = 64


@dataclasses.dataclass(frozen=True)
class _Launch:
  """Triton launch settings and the padded widths."""
  head_dim: int      # padded to a power of two (>= 16)
  lanes: int         # bias parameters per head, padded likewise
  num_warps: int
  num_stages: int
  scale: float       # 1 / sqrt(the real head dimension)


def _head(st: tiles.Static, params_ref):
  """This program's head's bias parameters (its row of the table)."""
  return tiles.head_params(st.leaf_sizes, lambda c: params_ref[c])


def _over_runs(runs_ref, body, carry):
  """``body(block, carry)`` over every block of the row's runs."""
  for r in range(RUN_WIDTH // 2):
    carry = jax.lax.fori_loop(runs_ref[2 * r], runs_ref[2 * r + 1], body,
                              carry)
  return carry


# ----------------------------------------------------------------- forward


def _fwd_kernel(st: tiles.Static, scale, runs_ref, params_ref, qpos_ref,
                kpos_ref, q_ref, k_ref, v_ref, o_ref, lse_ref):
  i = pl.program_id(0)
  bq, bk = st.block_q, st.block_k
  head = _head(st, params_ref)
  q, qpos = q_ref[...], qpos_ref[...]

  def body(j, carry):
    ks = pl.ds(j * bk, bk)
    s, visible = tiles.tile_scores(st, head, i, j, q, k_ref[ks, :],
                                   qpos, kpos_ref[:, ks], scale)
    return tiles.softmax_step(*carry, s, visible, v_ref[ks, :])

  init = (jnp.full((bq, 1), NEG_INF, jnp.float32),
          jnp.zeros((bq, 1), jnp.float32),
          jnp.zeros((bq, q.shape[-1]), jnp.float32))
  m, l, acc = _over_runs(runs_ref, body, init)
  o_ref[...], lse_ref[...] = tiles.softmax_finish(m, l, acc, o_ref.dtype)


def _specs(st: tiles.Static, lc: _Launch, tp: int, sp: int):
  """Block specs, by what the program's grid axis 0 walks: ``own`` are the
  blocks of that axis, ``all`` the whole sequence of the other side."""
  bq, bk, kd = st.block_q, st.block_k, lc.head_dim
  return dict(
      runs=pl.BlockSpec((None, RUN_WIDTH), lambda g, b, h: (g, 0)),
      params=pl.BlockSpec((None, lc.lanes), lambda g, b, h: (h, 0)),
      qpos_own=pl.BlockSpec((None, bq, 1), lambda g, b, h: (b, g, 0)),
      qpos_all=pl.BlockSpec((None, tp, 1), lambda g, b, h: (b, 0, 0)),
      kpos_own=pl.BlockSpec((None, 1, bk), lambda g, b, h: (b, 0, g)),
      kpos_all=pl.BlockSpec((None, 1, sp), lambda g, b, h: (b, 0, 0)),
      q_own=pl.BlockSpec((None, None, bq, kd), lambda g, b, h: (b, h, g, 0)),
      q_all=pl.BlockSpec((None, None, tp, kd), lambda g, b, h: (b, h, 0, 0)),
      k_own=pl.BlockSpec((None, None, bk, kd), lambda g, b, h: (b, h, g, 0)),
      k_all=pl.BlockSpec((None, None, sp, kd), lambda g, b, h: (b, h, 0, 0)),
      row_own=pl.BlockSpec((None, None, bq, 1), lambda g, b, h: (b, h, g, 0)),
      row_all=pl.BlockSpec((None, None, tp, 1), lambda g, b, h: (b, h, 0, 0)),
  )


def _params(lc: _Launch):
  return plgpu.CompilerParams(num_warps=lc.num_warps,
                              num_stages=lc.num_stages)


def _forward(st: tiles.Static, lc: _Launch, q, k, v, qpos, kpos, params):
  """q ``[B, H, Tp, Kp]``, k/v ``[B, H, Sp, Kp]``, qpos ``[B, Tp, 1]``,
  kpos ``[B, 1, Sp]``, params ``[H, lanes]``: out ``[B, H, Tp, Kp]``,
  lse ``[B, H, Tp, 1]``."""
  b, h, tp, _ = q.shape
  sp = k.shape[2]
  runs = tiles.block_runs(st.tiles(), st.nq, 0, RUN_WIDTH)
  spec = _specs(st, lc, tp, sp)
  return pl.pallas_call(
      functools.partial(_fwd_kernel, st, lc.scale),
      grid=(st.nq, b, h),
      in_specs=[spec['runs'], spec['params'], spec['qpos_own'],
                spec['kpos_all'], spec['q_own'], spec['k_all'],
                spec['k_all']],
      out_specs=[spec['q_own'], spec['row_own']],
      out_shape=[jax.ShapeDtypeStruct(q.shape, v.dtype),
                 jax.ShapeDtypeStruct((b, h, tp, 1), jnp.float32)],
      compiler_params=_params(lc), interpret=st.interpret,
      name='lmx_flash_gpu_fwd',
  )(jnp.asarray(runs), params, qpos, kpos, q, k, v)


# ---------------------------------------------------------------- backward


def _dkv_kernel(st: tiles.Static, scale, runs_ref, params_ref, qpos_ref,
                kpos_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref,
                dk_ref, dv_ref):
  j = pl.program_id(0)
  bq = st.block_q
  head = _head(st, params_ref)
  k, v, kpos = k_ref[...], v_ref[...], kpos_ref[...]

  def body(i, carry):
    dk, dv = carry
    qs = pl.ds(i * bq, bq)
    q, do = q_ref[qs, :], do_ref[qs, :]
    prob, ds = tiles.probs_and_ds(st, head, scale, i, j, q, k, v,
                                  qpos_ref[qs, :], kpos, do, lse_ref[qs, :],
                                  delta_ref[qs, :])
    dv = dv + jax.lax.dot_general(prob.astype(do.dtype), do, TN_DIMS,
                                  preferred_element_type=jnp.float32)
    dk = dk + jax.lax.dot_general(ds.astype(q.dtype), q, TN_DIMS,
                                  preferred_element_type=jnp.float32) * scale
    return dk, dv

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = _over_runs(runs_ref, body, (zeros, zeros))
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(st: tiles.Static, lanes: int, scale, runs_ref, params_ref,
               qpos_ref, kpos_ref, q_ref, k_ref, v_ref, do_ref, lse_ref,
               delta_ref, dq_ref, *dprm_ref):
  i = pl.program_id(0)
  bk = st.block_k
  head = _head(st, params_ref)
  q, do, qpos = q_ref[...], do_ref[...], qpos_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]
  if st.pull_bias:
    # The bias gradient sums ds over every pair of a row, where the error
    # of a delta from the rounded output (bfloat16) does not cancel: a
    # first pass computes delta from the float32 probabilities, and the
    # dk/dv kernel takes it from here.
    def delta_body(j, acc):
      ks = pl.ds(j * bk, bk)
      return acc + tiles.tile_delta(st, head, scale, i, j, q, k_ref[ks, :],
                                    v_ref[ks, :], qpos, kpos_ref[:, ks], do,
                                    lse)
    delta = _over_runs(runs_ref, delta_body, jnp.zeros(lse.shape,
                                                       jnp.float32))
    dprm_ref[1][...] = delta

  def body(j, carry):
    ks = pl.ds(j * bk, bk)
    k, kpos = k_ref[ks, :], kpos_ref[:, ks]
    _, ds = tiles.probs_and_ds(st, head, scale, i, j, q, k, v_ref[ks, :],
                               qpos, kpos, do, lse, delta)
    dq = carry[0] + jax.lax.dot(ds.astype(k.dtype), k,
                                preferred_element_type=jnp.float32) * scale
    if not st.pull_bias:
      return (dq,)
    return dq, carry[1] + tiles.bias_grad_row(st, head, qpos, kpos, ds, lanes)

  init = (jnp.zeros(q.shape, jnp.float32),)
  if st.pull_bias:
    init += (jnp.zeros((1, lanes), jnp.float32),)
  res = _over_runs(runs_ref, body, init)
  dq_ref[...] = res[0].astype(dq_ref.dtype)
  if st.pull_bias:
    dprm_ref[0][...] = res[1]


def _backward(st: tiles.Static, lc: _Launch, q, k, v, qpos, kpos, params,
              out, lse, do):
  b, h, tp, _ = q.shape
  sp = k.shape[2]
  pairs = st.tiles()
  spec = _specs(st, lc, tp, sp)
  scale = lc.scale
  delta = jnp.sum(do.astype(jnp.float32) * out.astype(jnp.float32), axis=-1,
                  keepdims=True)
  args = (params, qpos, kpos, q, k, v, do, lse, delta)

  out_specs = [spec['q_own']]
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype)]
  if st.pull_bias:   # the bias gradient rows, and delta (_dq_kernel)
    out_specs += [pl.BlockSpec((None, None, None, 1, lc.lanes),
                               lambda g, b_, h_: (b_, h_, g, 0, 0)),
                  spec['row_own']]
    out_shape += [jax.ShapeDtypeStruct((b, h, st.nq, 1, lc.lanes),
                                       jnp.float32),
                  jax.ShapeDtypeStruct(lse.shape, jnp.float32)]
  res = pl.pallas_call(
      functools.partial(_dq_kernel, st, lc.lanes, scale),
      grid=(st.nq, b, h),
      in_specs=[spec['runs'], spec['params'], spec['qpos_own'],
                spec['kpos_all'], spec['q_own'], spec['k_all'],
                spec['k_all'], spec['q_own'], spec['row_own'],
                spec['row_own']],
      out_specs=out_specs, out_shape=out_shape,
      compiler_params=_params(lc), interpret=st.interpret,
      name='lmx_flash_gpu_dq',
  )(jnp.asarray(tiles.block_runs(pairs, st.nq, 0, RUN_WIDTH)), *args)
  if st.pull_bias:
    args = args[:-1] + (res[2],)

  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, st, scale),
      grid=(st.nk, b, h),
      in_specs=[spec['runs'], spec['params'], spec['qpos_all'],
                spec['kpos_own'], spec['q_all'], spec['k_own'],
                spec['k_own'], spec['q_all'], spec['row_all'],
                spec['row_all']],
      out_specs=[spec['k_own'], spec['k_own']],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype),
                 jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=_params(lc), interpret=st.interpret,
      name='lmx_flash_gpu_dkv',
  )(jnp.asarray(tiles.block_runs(pairs, st.nk, 1, RUN_WIDTH)), *args)
  dparams = (res[1].sum(axis=(0, 2))[:, 0] if st.pull_bias
             else jnp.zeros_like(params))
  return res[0], dk, dv, dparams


# --------------------------------------------------------------- custom vjp


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _flash(st, lc, q, k, v, qpos, kpos, params):
  return _forward(st, lc, q, k, v, qpos, kpos, params)[0]


def _flash_fwd(st, lc, q, k, v, qpos, kpos, params):
  # symbolic_zeros: each argument comes with whether it is differentiated.
  # Constant bias parameters (ALiBi's slopes, Sandwich's scales) need no
  # gradient, and the dq kernel then leaves the pullback out. The flag
  # rides in the residuals as a leafless pytree: () wanted, None not.
  want = () if params.perturbed else None
  args = [x.value for x in (q, k, v, qpos, kpos, params)]
  out, lse = _forward(st, lc, *args)
  return out, (*args, out, lse, want)


def _flash_bwd(st, lc, res, do):
  q, k, v, qpos, kpos, params, out, lse, want = res
  if want is None:   # no bias gradient wanted
    st = dataclasses.replace(st, bias_grads=False)
  if isinstance(do, jax.custom_derivatives.SymbolicZero):
    do = jnp.zeros(do.shape, do.dtype)
  dq, dk, dv, dparams = _backward(st, lc, q, k, v, qpos, kpos, params, out,
                                  lse, do)
  return dq, dk, dv, None, None, dparams


_flash.defvjp(_flash_fwd, _flash_bwd, symbolic_zeros=True)


def gpu_block(block: int) -> int:
  """The GPU kernel's block for a configured one (``config.model.
  attention_block``, sized for the chunked backend and the TPU): the
  largest power of two up to ``min(block, DEFAULT_BLOCK)``, at least 16."""
  b = 16
  while b * 2 <= min(block, DEFAULT_BLOCK):
    b *= 2
  return b


def _block(block: int, n: int, what: str) -> int:
  """A Triton block: ``block`` (a power of two, at least 16), no longer
  than the power of two that covers ``n`` tokens."""
  if block < 16 or block & (block - 1):
    raise ValueError(f'{what} must be a power of two >= 16 on GPU (Triton), '
                     f'not {block}.')
  return max(16, min(block, tiles.next_power_of_2(n)))


def flash_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, q_pos_BxT, k_pos_BxS,
                    kernel_bias=None, *, n_global: int = 0, n_local: int = 0,
                    chunk: int = 0, block_q: int = DEFAULT_BLOCK,
                    block_k: int = DEFAULT_BLOCK,
                    num_warps: Optional[int] = None, num_stages: int = 2,
                    interpret: Optional[bool] = None) -> jax.Array:
  """``lmx.kernels.flash.flash_attention`` on a GPU: softmax attention with
  the bias of ``kernel_bias`` (a ``KernelBias``, or None) computed in the
  kernel, under the causal, Lambda-shaped or chunked mask; queries are the
  last ``T`` of the ``S`` keys. ``[B, T, H, K]`` in v's dtype.
  Differentiable in q, k, v and the bias parameters. ``block_q``,
  ``block_k``: powers of two (at least 16), cut to the lengths.

  ``interpret`` defaults to True off GPU (Pallas's interpreter).
  """
  b, t, h, kd = q_BxTxHxK.shape
  s = k_BxSxHxK.shape[1]
  if interpret is None:  # the platform traced for (lmx.model.ops.on_platform)
    interpret = ops.platform() != 'gpu'
  leaf_sizes, params, bias_fn = tiles.kernel_bias_params(kernel_bias, h,
                                                         MAX_PARAMS)
  bq = _block(block_q, t, 'block_q')
  bk = _block(block_k, s, 'block_k')
  st = tiles.Static(t=t, s=s, block_q=bq, block_k=bk, n_global=int(n_global),
                    n_local=int(n_local), chunk=int(chunk), bias_fn=bias_fn,
                    leaf_sizes=leaf_sizes, interpret=bool(interpret))
  kp = max(16, tiles.next_power_of_2(kd))
  lanes = max(16, tiles.next_power_of_2(st.n_params))
  lc = _Launch(head_dim=kp, lanes=lanes,
               num_warps=num_warps or (4 if kp <= 64 else 8),
               num_stages=num_stages, scale=kd ** -0.5)
  tp, sp = st.nq * bq, st.nk * bk
  heads_first = lambda x, n: tiles.pad(tiles.pad(
      jnp.transpose(x, (0, 2, 1, 3)), 2, n), 3, kp)
  q = heads_first(q_BxTxHxK, tp)
  k = heads_first(k_BxSxHxK, sp)
  v = heads_first(v_BxSxHxK, sp)
  qpos = tiles.pad(q_pos_BxT.astype(jnp.int32), 1, tp)[:, :, None]
  kpos = tiles.pad(k_pos_BxS.astype(jnp.int32), 1, sp)[:, None, :]
  out = _flash(st, lc, q, k, v, qpos, kpos, tiles.pad(params, 1, lanes))
  return jnp.transpose(out[:, :, :t, :kd], (0, 2, 1, 3))
