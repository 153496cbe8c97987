"""lmx.kernels.flash: the fused Pallas kernel against the dense backend (in
Pallas's interpreter on CPU), its visited tiles against a brute-force mask,
its dispatch and config checks, and (with libtpu) its TPU compilation.

Small shapes (two heads of 16 channels, blocks of 16 queries and 32 keys,
lengths that are no multiple of either) keep the interpreter fast.
"""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import base
from lmx.model import attention as A
from lmx.config import validate as config_lib
from lmx import positions as P
from lmx.errors import ConfigError
from lmx.kernels import flash
import attention_calls as AC

H, KD = 2, 16
TOL = 1e-5
# bfloat16 keeps 8 significant bits: each rounding is off by at most
# 2^-9 relative. The kernel rounds the inputs, the probabilities before the
# value product, the output and the gradients, a handful of roundings of
# quantities bounded by the output's (or gradient's) scale, so its error
# against float32 math on the same rounded inputs stays within a few units
# of 2^-8 of that scale. The bound 2^-6 (4 units) is met by the dense
# backend in bfloat16 too (checked below), so it is bfloat16's, not a
# slack of the kernel.
BF16_TOL = 2.0 ** -6


def _encoding(name, **fields):
  c = base.get_config('size=tiny')
  c.model.position = name
  c.model.num_heads, c.model.d_model = H, H * KD
  c.model.update_from_flattened_dict(fields)
  return P.REGISTRY[name](c.model, rngs=nnx.Rngs(0))


def _data(t, s, dtype, b=2, seed=0):
  """Inputs, with sorted positions that have gaps (not token indices)."""
  r = np.random.default_rng(seed + t + s)
  x = lambda n: jnp.asarray(r.normal(size=(b, n, H, KD)), dtype)
  q, k, v = x(t), x(s), x(s)
  kpos = np.stack([np.sort(r.choice(3 * s + 5, s, replace=False))
                   for _ in range(b)])
  cot = jnp.asarray(r.normal(size=(b, t, H, KD)), jnp.float32)
  return (q, k, v, jnp.asarray(kpos[:, s - t:], jnp.int32),
          jnp.asarray(kpos, jnp.int32), cot)


def _grads(backend, enc, mask, data, bq=16, bk=32):
  """Output and the gradients of ``sum(out * cot)`` w.r.t. the encoding's
  parameters, q, k and v, through ``backend`` ('dense' or 'flash')."""
  graphdef, params, rest = nnx.split(enc, nnx.Param, ...)
  _, _, _, qpos, kpos, cot = data

  def loss(params, q, k, v):
    e = nnx.merge(graphdef, params, rest)
    if backend == 'flash':
      out = flash.flash_attention(q, k, v, qpos, kpos, e.kernel_bias(),
                                  n_global=mask.n_global,
                                  n_local=mask.n_local,
                                  chunk=mask.chunk, block_q=bq,
                                  block_k=bk, interpret=True)
    else:
      out = AC.run('dense', A.Branch(q, k, qpos, kpos), v, bias_fn=e.bias,
                   mask=mask)
    return jnp.sum(out.astype(jnp.float32) * cot), out

  (_, out), grads = jax.jit(jax.value_and_grad(
      loss, argnums=(0, 1, 2, 3), has_aux=True))(params, *data[:3])
  return out, grads


def _leaves(tree):
  return [(jax.tree_util.keystr(p), np.asarray(x, np.float32))
          for p, x in jax.tree_util.tree_leaves_with_path(tree)]


LAMBDA = A.Mask(n_global=2, n_local=5)
CASES = {
    # encoding, its settings, (T, S), mask
    'alibi_causal': ('alibi', {}, (37, 37), A.Mask()),
    'kerple_log_lambda': ('kerple', {}, (100, 100), LAMBDA),
    'kerple_power_causal': ('kerple', {'kerple.kernel': 'power'}, (37, 37),
                            A.Mask()),
    't5_lambda': ('t5', {}, (37, 37), LAMBDA),
    # FIRE's MLP narrowed to 4 units: the kernel unrolls it per unit, and
    # the interpreter's cost grows with it.
    'fire_causal': ('fire', {'fire.mlp_width': 4}, (37, 37), A.Mask()),
    # Sandwich with d' = 8: four cosines per logit in the kernel.
    'sandwich_lambda': ('sandwich', {'sandwich.dim': 8}, (37, 37), LAMBDA),
    # no bias, and fewer queries than keys (the last T of S)
    'none_fewer_queries': ('none', {}, (20, 37), A.Mask()),
    # Llama 4's chunked local mask, chunks across the tile edges
    'alibi_chunk': ('alibi', {}, (37, 37), A.Mask(chunk=10)),
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_flash_equals_dense_forward_and_gradients(case):
  name, fields, (t, s), mask = CASES[case]
  enc = _encoding(name, **fields)
  data = _data(t, s, jnp.float32)
  out_d, g_d = _grads('dense', enc, mask, data)
  out_f, g_f = _grads('flash', enc, mask, data)
  np.testing.assert_allclose(out_f, out_d, atol=TOL, rtol=0)
  flat_d, flat_f = _leaves(g_d), _leaves(g_f)
  assert [p for p, _ in flat_d] == [p for p, _ in flat_f]
  # Every gradient within 1e-5 of its own scale, plus 1e-6 of the largest
  # (the rule of tests/test_attention.py: a tiny leaf may carry rounding
  # from the large ones it is summed beside).
  grad_scale = max(np.abs(g).max() for _, g in flat_d)
  for (path, gd), (_, gf) in zip(flat_d, flat_f):
    if "['b2']" in path:
      # FIRE's output bias adds one constant per head to every logit, and
      # softmax ignores constants: its gradient is 0 up to the rounding of
      # summing every logit gradient, in both backends.
      assert max(np.abs(gd).max(), np.abs(gf).max()) <= 1e-5 * grad_scale
      continue
    scale = max(np.abs(gd).max(), 1e-3 * grad_scale)
    err = np.abs(gf - gd).max()
    assert err <= TOL * scale + 1e-6 * grad_scale, (case, path, err, scale)
  if jax.tree.leaves(nnx.state(enc, nnx.Param)):  # learned: a real gradient
    assert any(np.abs(g).max() > 0 for p, g in flat_d if p.startswith('[0]'))


def test_flash_bfloat16_within_bfloat16_rounding():
  """bfloat16 inputs: the kernel and the dense backend against float32
  math on the same (rounded) inputs, both within ``BF16_TOL`` of scale."""
  enc = _encoding('kerple')
  data16 = _data(37, 37, jnp.bfloat16)
  data32 = tuple(x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x
                 for x in data16)
  out_ref, g_ref = _grads('dense', enc, LAMBDA, data32)
  for backend in ('flash', 'dense'):
    out, g = _grads(backend, enc, LAMBDA, data16)
    assert out.dtype == jnp.bfloat16
    err = np.abs(np.asarray(out, np.float32) - np.asarray(out_ref)).max()
    assert err <= BF16_TOL * np.abs(np.asarray(out_ref)).max(), (backend, err)
    for (path, gr), (_, gx) in zip(_leaves(g_ref), _leaves(g)):
      err = np.abs(gx - gr).max()
      assert err <= BF16_TOL * np.abs(gr).max(), (backend, path, err)


# ------------------------------------------------------------ visited tiles


def _brute_force_tiles(t, s, bq, bk, mask):
  """Tiles holding a pair the mask shows, from the ``[T, S]`` mask."""
  vis = np.asarray(mask(jnp.arange(t) + (s - t), jnp.arange(s)))
  return [(i, j) for i in range(-(-t // bq)) for j in range(-(-s // bk))
          if vis[i * bq:(i + 1) * bq, j * bk:(j + 1) * bk].any()]


@pytest.mark.parametrize('t,s,bq,bk,n_global,n_local,chunk', [
    (37, 37, 16, 32, 0, 0, 0), (100, 100, 16, 32, 0, 0, 0),
    (1, 37, 16, 8, 0, 0, 0), (100, 100, 16, 32, 2, 5, 0),
    (100, 100, 8, 16, 0, 20, 0), (20, 100, 8, 16, 3, 7, 0),
    (130, 130, 16, 16, 40, 10, 0), (1, 100, 8, 8, 2, 5, 0),
    (100, 100, 8, 16, 0, 0, 12), (130, 130, 16, 16, 0, 0, 16),
    (20, 100, 8, 8, 0, 0, 30)])
def test_visited_tiles_are_the_tiles_the_mask_shows(t, s, bq, bk, n_global,
                                                     n_local, chunk):
  mask = A.Mask(n_global, n_local, chunk)
  assert flash.visited_tiles(t, s, bq, bk, n_global, n_local, chunk) == (
      _brute_force_tiles(t, s, bq, bk, mask))


def test_visited_tile_counts_causal_and_lambda():
  # Causal with equal blocks: the lower triangle, n (n + 1) / 2 tiles.
  assert len(flash.visited_tiles(128, 128, 16, 16)) == 8 * 9 // 2
  # Lambda with n_global = n_local = one block: each query block sees the
  # first key block, its own and the one before it: 3 tiles from the
  # third block on, so the count grows linearly in the length.
  for n in (8, 16, 32):
    assert len(flash.visited_tiles(16 * n, 16 * n, 16, 16, 16, 16)) == (
        1 + 2 + 3 * (n - 2))


def test_kernel_steps_are_the_visited_tiles(monkeypatch):
  """The grids the kernels run have one step per visited tile (and one
  idle step per key block no query sees), and no other."""
  grids = []
  real = flash.pl.pallas_call

  def spy(kernel, **kw):
    grids.append((kw['name'], kw['grid_spec'].grid))
    return real(kernel, **kw)

  monkeypatch.setattr(flash.pl, 'pallas_call', spy)
  t, s, mask = 4, 100, LAMBDA   # keys 9..94 are seen by no query
  tiles = flash.visited_tiles(t, s, 16, 16, mask.n_global, mask.n_local)
  assert tiles == [(0, 0), (0, 5), (0, 6)]
  data = _data(t, s, jnp.float32, b=1)
  out_d, g_d = _grads('dense', _encoding('alibi'), mask, data, bq=16,
                      bk=16)
  out_f, g_f = _grads('flash', _encoding('alibi'), mask, data, bq=16,
                      bk=16)
  steps = {name: grid[2] for name, grid in grids}
  assert steps == {'lmx_flash_fwd': 3, 'lmx_flash_dq': 3,
                   'lmx_flash_dkv': 3 + 4}   # key blocks 1-4 idle
  np.testing.assert_allclose(out_f, out_d, atol=TOL)
  for (_, gd), (_, gf) in zip(_leaves(g_d), _leaves(g_f)):
    np.testing.assert_allclose(gf, gd, atol=TOL)   # unseen keys: zero


# ---------------------------------------------------------------- dispatch


def test_dispatch_runs_the_kernel_or_falls_back_with_the_reason(caplog):
  enc = _encoding('kerple')
  q, k, v, qpos, kpos, _ = _data(37, 37, jnp.float32)
  near = A.Branch(q, k, qpos, kpos)
  dense = AC.run('dense', near, v, bias_fn=enc.bias, mask=LAMBDA)
  got = AC.run('flash', near, v, encoding=enc, mask=LAMBDA, block=16)
  np.testing.assert_allclose(got, dense, atol=TOL)
  assert AC.why_not(A.FLASH, encoding=enc) is None
  assert AC.why_not(A.FLASH) is None
  assert 'far' in AC.why_not(A.FLASH, far=True, encoding=enc)
  plain = lambda qp, kp: enc.bias(qp, kp)
  assert 'plain function' in AC.why_not(A.FLASH, bias_fn=plain)
  wide = _encoding('fire', **{'fire.mlp_width': 64})
  assert 'no kernel form' in AC.why_not(A.FLASH, encoding=wide)
  with caplog.at_level(logging.WARNING, logger='lmx'):
    got = AC.run('flash', near, v, bias_fn=plain, mask=LAMBDA)
  np.testing.assert_allclose(got, dense, atol=TOL)
  assert 'flash attention cannot run here' in caplog.text


def _config(position='alibi', **model_fields):
  c = base.get_config('size=tiny')
  c.model.position = position
  c.model.attention = 'flash'
  for path, value in model_fields.items():
    *parents, leaf = path.split('.')
    node = c.model
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


@pytest.mark.parametrize('position,fields,needle', [
    ('rope', {'rerope.window': 8}, 'rerope.window'),
    ('alibi', {'lm_infinite.n_local': 8, 'lm_infinite.distance_limit': 16},
     'distance_limit'),
    ('rope', {'self_extend.window': 8, 'self_extend.group': 2},
     'self_extend.window'),
    ('fire', {'fire.mlp_width': 64}, 'config.model.fire.mlp_width'),
])
def test_flash_config_refuses_what_the_kernel_cannot_compute(position,
                                                              fields, needle):
  with pytest.raises(ConfigError, match='flash') as e:
    config_lib.validate(_config(position, **fields))
  assert needle in str(e.value)


@pytest.mark.parametrize('position', ['alibi', 'kerple', 't5', 'fire', 'rope',
                                      'none', 'sandwich', 'keynorm'])
def test_flash_config_accepts_the_kernel_encodings(position):
  config_lib.validate(_config(position, **{'lm_infinite.n_local': 8}))


def test_every_bias_encoding_has_a_kernel_form():
  for name, cls in P.REGISTRY.items():
    if cls.has_bias():
      assert cls.kernel_refusal() is None, name
    # A content term (Transformer-XL, Shaw, FoX, CoPE) never has one.
    if cls.has_content():
      assert 'content' in cls.kernel_refusal(), name


# --------------------------------------------------------------------- TPU


def test_compiles_for_tpu_v5e():
  """Forward and backward lower through Mosaic and compile for a v5e chip
  (ahead of time; no TPU needed, only libtpu)."""
  pytest.importorskip('libtpu')
  from bench import flash_tpu
  try:
    device = flash_tpu.tpu_device('v5e:2x2')
  except Exception as e:  # noqa: BLE001 - libtpu present, topology not
    pytest.skip(f'no TPU topology: {e}')
  # The Lambda mask, and Llama 4's chunks (integer division in the kernel).
  for position, dtype, head_dim, block, mask in (
      ('t5', jnp.bfloat16, 64, 128, A.Mask(4, 300)),
      ('kerple', jnp.float32, 128, 512, A.Mask(4, 300)),
      ('alibi', jnp.bfloat16, 64, 128, A.Mask(chunk=200))):
    enc = flash_tpu.encoding(position, 2, head_dim)
    compiled = flash_tpu.compile_step(
        'flash', enc, device, batch=1, seq=1024, heads=2, head_dim=head_dim,
        dtype=dtype, block=block, mask=mask)
    text = compiled.as_text()
    assert 'lmx_flash_dq' in text and 'lmx_flash_dkv' in text
    assert compiled.memory_analysis() is not None


def test_model_with_flash_equals_dense(monkeypatch):
  """Through the model (one layer, ALiBi, Lambda mask): the per-token
  logits of config.model.attention='flash' equal dense's, and the kernel
  ran (no fallback)."""
  from lmx.model import transformer as model_lib
  calls = []
  real = flash.pl.pallas_call
  monkeypatch.setattr(flash.pl, 'pallas_call',
                      lambda kernel, **kw: calls.append(kw['name'])
                      or real(kernel, **kw))
  t = 37
  r = np.random.default_rng(1)
  tokens = jnp.asarray(r.integers(0, 257, (2, t)), jnp.int32)
  pos = jnp.asarray(np.sort(r.choice(3 * t, (2, t)), axis=1), jnp.int32)
  logits = {}
  for backend in ('dense', 'flash'):
    c = _config('alibi', **{'lm_infinite.n_local': 5,
                            'lm_infinite.n_global': 2})
    c.model.attention, c.model.attention_block = backend, 16
    c.model.num_layers = 1
    config_lib.validate(c)
    model = model_lib.build(c.model, seed=0)
    logits[backend] = np.asarray(jax.jit(lambda x, p, m=model: m(x, p))(
        tokens, pos))
  assert calls == ['lmx_flash_fwd']
  np.testing.assert_allclose(logits['flash'], logits['dense'], atol=TOL,
                             rtol=0)


def test_model_with_flash_takes_a_window_and_ssmax_without_a_bias(
    monkeypatch):
  """RoPE with a sliding window (config.model.layers.window) and SSMax:
  the kernel runs (the window is its local mask, SSMax's factor is folded
  into q, there being no bias to scale) and equals dense."""
  from lmx.model import transformer as model_lib
  calls = []
  real = flash.pl.pallas_call
  monkeypatch.setattr(flash.pl, 'pallas_call',
                      lambda kernel, **kw: calls.append(kw['name'])
                      or real(kernel, **kw))
  t = 37
  r = np.random.default_rng(2)
  tokens = jnp.asarray(r.integers(0, 257, (2, t)), jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(t), (2, t))
  logits = {}
  for backend in ('dense', 'flash'):
    c = _config('rope', **{'layers.window': (6,),
                           'length_scaling.kind': 'ssmax',
                           'length_scaling.base_len': 16})
    c.model.attention, c.model.attention_block = backend, 16
    c.model.num_layers = 1
    config_lib.validate(c)
    model = model_lib.build(c.model, seed=0)
    logits[backend] = np.asarray(jax.jit(lambda x, p, m=model: m(x, p))(
        tokens, pos))
  assert calls == ['lmx_flash_fwd']
  np.testing.assert_allclose(logits['flash'], logits['dense'], atol=TOL,
                             rtol=0)


def test_the_kernel_runs_per_shard_under_a_mesh_with_every_gradient():
  """On 8 CPU devices (data 2 x fsdp 2 x tensor 2) the model with the fused
  kernel, run per shard through jax.shard_map (rows and heads split, each
  head's bias parameters with its head), gives the dense backend's
  gradient of every parameter, the encodings' own included."""
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  worker = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        'flash_mesh_worker.py')
  r = subprocess.run([sys.executable, worker, 'alibi', 'kerple', 't5'],
                     capture_output=True, text=True, timeout=600,
                     env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert r.returncode == 0, r.stderr[-3000:]
  result = json.loads(r.stdout.strip().splitlines()[-1])
  for position, (diff, scale, pos_diff, pos_scale) in result.items():
    assert diff <= 1e-5 * scale, position
    if position != 'alibi':  # learned bias parameters
      assert pos_scale > 0 and pos_diff <= 1e-5 * pos_scale, position
