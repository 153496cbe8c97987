"""lmx.kernels.flash_gpu: the Triton-lowered Pallas kernel against the dense
backend in Pallas's interpreter on CPU (every encoding with a kernel form,
odd lengths, float32 and bfloat16, every gradient), its causality, its tile
skipping, the block runs it loops over, the dispatch on a GPU platform, and
(with jax[cuda12] installed) its compilation for an H100 without a GPU.

Tiny shapes (two heads of 16 channels, blocks of 16, lengths that are no
multiple of 16) keep the interpreter fast.
"""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import base
from lmx.model import attention as A
from lmx.model import ops
from lmx import positions as P
from lmx.kernels import flash_gpu, tiles
import attention_calls as AC

# bfloat16's bound (met by the dense backend too), the encodings and the
# inputs of the TPU kernel's tests.
from test_flash import BF16_TOL, _encoding
from test_flash import _data as flash_data
from helpers import FAST_COMPILE

TOL = 1e-5
LAMBDA = A.Mask(n_global=2, n_local=5)
jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)


def _data(t, s, dtype, b=1, seed=0):
  """``tests/test_flash.py``'s inputs, one row by default."""
  return flash_data(t, s, dtype, b=b, seed=seed)


def _gpu(q, k, v, qpos, kpos, kb, mask):
  return flash_gpu.flash_attention(
      q, k, v, qpos, kpos, kb, n_global=mask.n_global, n_local=mask.n_local,
      chunk=mask.chunk, block_q=16, block_k=16, interpret=True)


def _grads(backend, enc, mask, data):
  """Output and the gradients of ``sum(out * cot)`` w.r.t. the encoding's
  parameters, q, k and v."""
  graphdef, params, rest = nnx.split(enc, nnx.Param, ...)
  _, _, _, qpos, kpos, cot = data

  def loss(params, q, k, v):
    e = nnx.merge(graphdef, params, rest)
    if backend == 'gpu':
      out = _gpu(q, k, v, qpos, kpos, e.kernel_bias(), mask)
    else:
      out = AC.run('dense', A.Branch(q, k, qpos, kpos), v, bias_fn=e.bias,
                   mask=mask)
    return jnp.sum(out.astype(jnp.float32) * cot), out

  (_, out), grads = jit(jax.value_and_grad(
      loss, argnums=(0, 1, 2, 3), has_aux=True))(params, *data[:3])
  return out, grads


def _leaves(tree):
  return [(jax.tree_util.keystr(p), np.asarray(x, np.float32))
          for p, x in jax.tree_util.tree_leaves_with_path(tree)]


CASES = {
    # encoding, its settings, (T, S), mask: every encoding with a kernel
    # form, odd lengths, every mask (Llama 4's chunks in the bfloat16 test
    # below). The unrolled forms are narrowed (8 T5 buckets, 2 FIRE units,
    # 4 Sandwich frequencies): the interpreter's cost grows with them.
    'alibi_causal': ('alibi', {}, (21, 21), A.Mask()),
    'kerple_log_lambda': ('kerple', {}, (37, 37), LAMBDA),
    't5_window': ('t5', {'t5.num_buckets': 8, 't5.max_distance': 16},
                  (21, 37), A.Mask(n_local=6)),
    'fire_causal': ('fire', {'fire.mlp_width': 2}, (21, 21), A.Mask()),
    'sandwich_lambda': ('sandwich', {'sandwich.dim': 8}, (21, 21), LAMBDA),
}


def test_every_kernel_form_is_covered():
  """The cases above hold every encoding whose bias has a kernel form."""
  forms = {n for n, cls in P.REGISTRY.items()
           if cls.has_bias() and cls.kernel_refusal() is None}
  assert forms == {c[0] for c in CASES.values()}
  # T5's gradient reaches a bucket past the exact ones (distance >= 4).
  assert CASES['t5_window'][3].n_local > 4


@pytest.mark.parametrize('case', sorted(CASES))
def test_gpu_kernel_equals_dense_forward_and_gradients(case):
  name, fields, (t, s), mask = CASES[case]
  enc = _encoding(name, **fields)
  data = _data(t, s, jnp.float32)
  out_d, g_d = _grads('dense', enc, mask, data)
  out_f, g_f = _grads('gpu', enc, mask, data)
  np.testing.assert_allclose(out_f, out_d, atol=TOL, rtol=0)
  flat_d, flat_f = _leaves(g_d), _leaves(g_f)
  assert [p for p, _ in flat_d] == [p for p, _ in flat_f]
  grad_scale = max(np.abs(g).max() for _, g in flat_d)
  for (path, gd), (_, gf) in zip(flat_d, flat_f):
    if "['b2']" in path:   # FIRE's constant per head: softmax ignores it
      assert max(np.abs(gd).max(), np.abs(gf).max()) <= 1e-5 * grad_scale
      continue
    scale = max(np.abs(gd).max(), 1e-3 * grad_scale)
    err = np.abs(gf - gd).max()
    assert err <= TOL * scale + 1e-6 * grad_scale, (case, path, err, scale)
  if jax.tree.leaves(nnx.state(enc, nnx.Param)):  # learned: a real gradient
    assert any(np.abs(g).max() > 0 for p, g in flat_d if p.startswith('[0]'))


def test_gpu_kernel_bfloat16_within_bfloat16_rounding():
  """bfloat16 inputs (KERPLE's power kernel, Llama 4's chunks across the
  block edges): the kernel against float32 math on the same rounded
  inputs, within bfloat16's rounding."""
  enc = _encoding('kerple', **{'kerple.kernel': 'power'})
  mask = A.Mask(chunk=10)
  data16 = _data(21, 21, jnp.bfloat16)
  data32 = tuple(x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x
                 for x in data16)
  out_ref, g_ref = _grads('dense', enc, mask, data32)
  out, g = _grads('gpu', enc, mask, data16)
  assert out.dtype == jnp.bfloat16
  err = np.abs(np.asarray(out, np.float32) - np.asarray(out_ref)).max()
  assert err <= BF16_TOL * np.abs(np.asarray(out_ref)).max(), err
  for (path, gr), (_, gx) in zip(_leaves(g_ref), _leaves(g)):
    assert np.abs(gx - gr).max() <= BF16_TOL * np.abs(gr).max(), path


def test_changing_future_keys_changes_no_earlier_output():
  """Causality as a property: keys and values from token ``c`` on replaced
  by others leave every output before ``c`` exactly as it was, and change
  the ones from ``c`` on."""
  enc = _encoding('alibi')
  q, k, v, qpos, kpos, _ = _data(37, 37, jnp.float32)
  r = np.random.default_rng(7)
  run = jit(lambda k, v: _gpu(q, k, v, qpos, kpos, enc.kernel_bias(),
                                  A.Mask()))
  base_out = np.asarray(run(k, v))
  for c in (5, 16, 30):   # inside a block, on a block edge, the last block
    k2 = k.at[:, c:].set(r.normal(size=k[:, c:].shape))
    v2 = v.at[:, c:].set(r.normal(size=v[:, c:].shape))
    out = np.asarray(run(k2, v2))
    np.testing.assert_array_equal(out[:, :c], base_out[:, :c])
    assert np.abs(out[:, c:] - base_out[:, c:]).min(axis=(0, 2, 3)).max() > 0


def test_hidden_key_blocks_are_never_read():
  """Tile skipping: NaN keys and values in blocks a query block never sees
  (the Lambda window has passed them) leave its output finite and equal to
  the dense backend's on clean inputs."""
  enc = _encoding('alibi')
  t = 80   # five blocks of 16
  q, k, v, qpos, kpos, _ = _data(t, t, jnp.float32)
  mask = A.Mask(n_global=2, n_local=5)
  runs = tiles.block_runs(tiles.visited_tiles(t, t, 16, 16, 2, 5), 5, 0)
  assert runs[4].tolist() == [0, 1, 3, 5]   # global block; window 3-4
  dense = AC.run('dense', A.Branch(q, k, qpos, kpos), v, bias_fn=enc.bias,
                 mask=mask)
  k_nan = k.at[:, 16:48].set(jnp.nan)   # key blocks 1 and 2
  v_nan = v.at[:, 16:48].set(jnp.nan)
  out = np.asarray(jit(lambda k, v: _gpu(q, k, v, qpos, kpos,
                                             enc.kernel_bias(), mask))(
                                                 k_nan, v_nan))
  assert np.isfinite(out[:, 64:]).all()
  np.testing.assert_allclose(out[:, 64:], dense[:, 64:], atol=TOL)


@pytest.mark.parametrize('t,s,bq,bk,n_global,n_local,chunk', [
    (37, 37, 16, 16, 0, 0, 0), (20, 100, 16, 32, 3, 7, 0),
    (130, 130, 16, 16, 40, 10, 0), (100, 100, 16, 16, 0, 0, 12),
    (1, 100, 16, 16, 2, 5, 0)])
def test_block_runs_visit_exactly_the_visited_tiles(t, s, bq, bk, n_global,
                                                     n_local, chunk):
  pairs = tiles.visited_tiles(t, s, bq, bk, n_global, n_local, chunk)
  nq, nk = tiles.cdiv(t, bq), tiles.cdiv(s, bk)
  for by, n_outer in ((0, nq), (1, nk)):
    runs = tiles.block_runs(pairs, n_outer, by)
    walked = sorted((g, x) if by == 0 else (x, g)
                    for g in range(n_outer)
                    for lo, hi in runs[g].reshape(-1, 2)
                    for x in range(lo, hi))
    assert walked == sorted(pairs)


def test_blocks_must_be_powers_of_two():
  # config.model.attention_block, as the GPU kernel takes it
  assert [flash_gpu.gpu_block(b) for b in (512, 100, 48, 16, 8)] == [
      64, 64, 32, 16, 16]
  q, k, v, qpos, kpos, _ = _data(21, 21, jnp.float32)
  with pytest.raises(ValueError, match='power of two'):
    flash_gpu.flash_attention(q, k, v, qpos, kpos, block_q=24,
                              interpret=True)


# ---------------------------------------------------------------- dispatch


def test_auto_on_gpu_takes_the_kernel_or_says_why_not(monkeypatch, caplog):
  """Traced for a GPU (``ops.on_platform``), ``auto`` runs the GPU kernel
  for a bias with a kernel form (here in the interpreter), and falls back,
  saying why, for a far branch; CPU still never picks it."""
  calls = []
  real = flash_gpu.flash_attention

  def spy(*a, **kw):
    calls.append(kw.get('block_q'))
    return real(*a, **{**kw, 'interpret': True})

  monkeypatch.setattr(flash_gpu, 'flash_attention', spy)
  enc = _encoding('kerple')
  q, k, v, qpos, kpos, _ = _data(21, 21, jnp.float32)
  near = A.Branch(q, k, qpos, kpos)
  dense = AC.run('dense', near, v, bias_fn=enc.bias, mask=LAMBDA)
  # A new function each time, so that each is traced for its platform.
  run = lambda: jit(functools.partial(
      AC.run, 'auto', near, v, encoding=enc, mask=LAMBDA, block=16))()
  np.testing.assert_allclose(run(), dense, atol=TOL)
  assert calls == []   # CPU: never the kernel
  with ops.on_platform('gpu'):
    np.testing.assert_allclose(run(), dense, atol=TOL)
    assert calls == [16]
    assert AC.why_not(A.FLASH, encoding=enc) is None
    # A content term: auto looks at the kernel, which says why not.
    assert AC.flash_applies(content=True)
    assert 'content' in AC.why_not(A.FLASH, content=True)
    assert not AC.flash_applies()   # mask only: cudnn's
    with caplog.at_level(logging.WARNING, logger='lmx'):
      far = AC.run('auto', near, v, encoding=enc, mask=LAMBDA, far=near,
                   window=1000, block=16)
  assert calls == [16]
  assert not AC.flash_applies(encoding=enc)   # traced for the CPU again
  np.testing.assert_allclose(far, dense, atol=TOL)
  assert 'far' in caplog.text and 'auto uses the dense backend' in caplog.text


def test_gpu_refuses_bias_forms_too_long_to_compile():
  """Sandwich at its default 64 frequencies sums 64 cosines per pair, which
  Triton unrolls: on a GPU the kernel refuses it (auto falls back, saying
  why); a narrow Sandwich and the TPU kernel take it."""
  wide = _encoding('sandwich')
  narrow = _encoding('sandwich', **{'sandwich.dim': 8})
  assert wide.kernel_bias().terms > A.GPU_MAX_BIAS_TERMS
  assert narrow.kernel_bias().terms <= A.GPU_MAX_BIAS_TERMS
  with ops.on_platform('gpu'):
    why = AC.why_not(A.FLASH, encoding=wide)
    assert why and 'Sandwich' in why and 'terms per pair' in why
    assert AC.why_not(A.FLASH, encoding=narrow) is None
  assert AC.why_not(A.FLASH, encoding=wide) is None  # CPU


# ------------------------------------------------------------ H100 compile


def test_compiles_for_h100_without_a_gpu():
  """Forward and backward lower through Triton and compile for an H100
  ahead of time (no GPU: a target config, lmx.kernels.gpu_targets), in
  bfloat16 and float32, under the Lambda mask, a sliding window and Llama
  4's chunks, for every kernel form: the compiled HLO holds the three
  kernels as Triton custom calls."""
  pytest.importorskip('jax_cuda12_plugin',
                      reason='needs jax[cuda12] (the CUDA compiler); no GPU')
  from lmx.kernels import gpu_targets  # pylint: disable=g-import-not-at-top
  try:
    device = gpu_targets.devices('h100')[0]
  except Exception as e:  # noqa: BLE001 - plugin present, target refused
    pytest.skip(f'no H100 compile target: {e}')
  sharding = jax.sharding.SingleDeviceSharding(device)
  b, t, h, kd = 1, 200, 2, 64
  pos = jax.ShapeDtypeStruct((b, t), jnp.int32, sharding=sharding)
  # FIRE and Sandwich narrowed (4 units, 2 frequencies): Triton's compile
  # time grows with every unrolled unit, and fastest with Sandwich's
  # cosines (docs/backends.md).
  cases = [('alibi', {}, jnp.bfloat16, A.Mask(4, 100)),
           ('kerple', {}, jnp.float32, A.Mask(chunk=48)),
           ('t5', {}, jnp.bfloat16, A.Mask(n_local=64)),
           ('fire', {'fire.mlp_width': 4}, jnp.bfloat16, A.Mask()),
           ('sandwich', {'sandwich.dim': 4}, jnp.bfloat16, A.Mask(4, 100))]
  assert {c[0] for c in cases} == {c[0] for c in CASES.values()}
  for name, fields, dtype, mask in cases:
    c = base.get_config('size=tiny')
    c.model.position, c.model.num_heads, c.model.d_model = name, h, h * kd
    c.model.update_from_flattened_dict(fields)
    enc = P.REGISTRY[name](c.model, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(enc, nnx.Param, ...)
    params = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
        params)
    x = jax.ShapeDtypeStruct((b, t, h, kd), dtype, sharding=sharding)

    def loss(params, q, k, v, qpos, kpos, graphdef=graphdef, rest=rest,
             mask=mask):
      e = nnx.merge(graphdef, params, rest)
      out = AC.run('auto', A.Branch(q, k, qpos, kpos), v, encoding=e,
                   mask=mask, block=512)
      return out.astype(jnp.float32).sum()

    # With the encoding's parameters: the dq kernel pulls the bias back.
    with ops.on_platform('gpu'):
      lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).lower(
          params, x, x, x, pos, pos)
    text = lowered.compile().as_text()
    assert text.count('__gpu$xla.gpu.triton') == 3, name
    for kernel in ('lmx_flash_gpu_fwd', 'lmx_flash_gpu_dkv',
                   'lmx_flash_gpu_dq'):
      assert kernel in text, (name, kernel)


def test_constant_bias_parameters_get_no_pullback():
  """The dq kernel pulls the bias gradient back only for parameters that
  are differentiated: ALiBi's slopes are constants, KERPLE's are learned."""
  q, k, v, qpos, kpos, _ = _data(21, 21, jnp.float32)

  def dq_outputs(name, wrt_params):
    enc = _encoding(name)
    graphdef, params, rest = nnx.split(enc, nnx.Param, ...)

    def loss(params, q):
      kb = nnx.merge(graphdef, params, rest).kernel_bias()
      return _gpu(q, k, v, qpos, kpos, kb, A.Mask()).sum()

    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1) if wrt_params
                                    else 1))(params, q)
    eqns = [e for e in _all_eqns(jaxpr.jaxpr)
            if e.primitive.name == 'pallas_call'
            and 'lmx_flash_gpu_dq' in str(e.params.get('name'))]
    assert len(eqns) == 1
    return len(eqns[0].outvars)

  assert dq_outputs('alibi', False) == 1
  assert dq_outputs('kerple', False) == 1   # not asked for
  assert dq_outputs('kerple', True) == 3   # dq, the rows, delta


def _all_eqns(jaxpr):
  """Every equation of ``jaxpr`` and of the jaxprs inside it."""
  for e in jaxpr.eqns:
    yield e
    for p in e.params.values():
      inner = getattr(p, 'jaxpr', None)
      if inner is not None and hasattr(inner, 'eqns'):
        yield from _all_eqns(inner)
