"""The dense products (lmx.model.ops): the XLA:CPU path (lmx.model.xla_cpu) and the
plain one give the same logits and gradients, and the platform picks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from lmx.model import transformer as model_lib
from lmx.model import ops
from lmx.training import run_state
from lmx.model import xla_cpu


def _loss_and_grads(config, platform):
  """Logits and parameter gradients of one batch, with the products traced
  for ``platform``."""
  graphdef, params = run_state.init_model(config)
  apply = run_state.apply_fn(graphdef)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, 257, (2, 24)), jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(24, dtype=jnp.int32), (2, 24))

  def loss(p):
    logits = apply(p, tokens, pos)
    return model_lib.cross_entropy(logits[:, :-1], tokens[:, 1:]).mean(), logits

  with ops.on_platform(platform):
    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
        params)
  return value, logits, grads


@pytest.mark.parametrize('dtype,tol', [('float32', 1e-5), ('bfloat16', 2e-2)])
@pytest.mark.parametrize('position', ['alibi', 'rope'])
def test_cpu_and_plain_products_agree(position, dtype, tol):
  c = base.get_config('size=tiny')
  c.model.position = position
  c.model.dtype = dtype
  c.model.mlp_dim = 48   # with biases: the MLP's products have them
  # Products are the subject: traced for a GPU, auto would take the GPU
  # kernel, which runs only on a GPU (or in the interpreter).
  c.model.attention = 'dense'
  cpu = _loss_and_grads(c, 'cpu')
  plain = _loss_and_grads(c, 'gpu')
  np.testing.assert_allclose(cpu[0], plain[0], rtol=tol)
  scale = float(jnp.abs(plain[1]).max())
  np.testing.assert_allclose(cpu[1], plain[1], atol=tol * scale, rtol=0)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(cpu[2]),
                          jax.tree.leaves(plain[2])):
    assert a.dtype == b.dtype == jnp.float32, path
    g = float(jnp.abs(b).max())
    np.testing.assert_allclose(a, b, atol=tol * max(g, 1e-6), rtol=0,
                               err_msg=jax.tree_util.keystr(path))


def test_the_platform_picks_the_path():
  c = base.get_config('size=tiny')
  c.model.dtype = 'bfloat16'
  graphdef, params = run_state.init_model(c)
  apply = run_state.apply_fn(graphdef)
  tokens = jnp.zeros((1, 8), jnp.int32)
  pos = jnp.arange(8, dtype=jnp.int32)[None]

  def jaxpr(platform):
    # A new function each time: a trace is cached per function.
    with ops.on_platform(platform):
      return str(jax.make_jaxpr(lambda *a: apply(*a))(params, tokens, pos))

  assert ops.platform() == jax.default_backend() == 'cpu'
  # The XLA:CPU path: custom-VJP products behind optimization barriers.
  assert 'optimization_barrier' in jaxpr('cpu')
  for other in ('gpu', 'tpu'):
    assert 'optimization_barrier' not in jaxpr(other)
    assert 'custom_vjp' not in jaxpr(other)
  assert ops.platform() == 'cpu'   # the override ends with its block


def test_bfloat16_bias_gradient_is_the_row_sum_in_float32():
  rng = np.random.default_rng(0)
  y = jnp.asarray(rng.normal(size=(300, 24)), jnp.bfloat16)
  b = jnp.asarray(rng.normal(size=(24,)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(300, 24)), jnp.bfloat16)
  out, vjp = jax.vjp(xla_cpu.add_bias_low, y, b)
  dy, db = vjp(g)
  assert out.dtype == jnp.bfloat16 and db.dtype == jnp.float32
  np.testing.assert_array_equal(out, y + b.astype(jnp.bfloat16))
  np.testing.assert_array_equal(dy, g)
  want = np.asarray(g, np.float64).sum(axis=0)
  np.testing.assert_allclose(db, want, rtol=1e-5, atol=1e-5)




# ------------------------------------------- bf16 attention products

def _attention_reference(q, k, p, v, g_s, g_o):
  """float32 einsums of the same bf16 operands, and their gradients for the
  cotangents rounded to bf16 (as the products take them)."""
  f = lambda x: x.astype(jnp.float32)
  s, vjp_s = jax.vjp(lambda q, k: jnp.einsum('bthk,bshk->bhts', q, k),
                     f(q), f(k))
  o, vjp_o = jax.vjp(lambda p, v: jnp.einsum('bhts,bshk->bthk', p, v),
                     f(p), f(v))
  return (s, vjp_s(f(g_s.astype(jnp.bfloat16))), o,
          vjp_o(f(g_o.astype(jnp.bfloat16))))


def test_bf16_attention_products_and_their_gradients():
  # Shapes with every axis distinct, so a transposed layout cannot pass.
  b, t, s, h, k = 2, 24, 20, 3, 8
  keys = jax.random.split(jax.random.key(0), 6)
  q = jax.random.normal(keys[0], (b, t, h, k)).astype(jnp.bfloat16)
  kk = jax.random.normal(keys[1], (b, s, h, k)).astype(jnp.bfloat16)
  p = jax.random.uniform(keys[2], (b, h, t, s)).astype(jnp.bfloat16)
  v = jax.random.normal(keys[3], (b, s, h, k)).astype(jnp.bfloat16)
  g_s = jax.random.normal(keys[4], (b, h, t, s))
  g_o = jax.random.normal(keys[5], (b, t, h, k))
  s_ref, (dq_ref, dk_ref), o_ref, (dp_ref, dv_ref) = _attention_reference(
      q, kk, p, v, g_s, g_o)
  with ops.on_platform('cpu'):
    scores, vjp_s = jax.vjp(ops.attention_scores, q, kk)
    out, vjp_o = jax.vjp(ops.attention_values, p, v)
  assert scores.dtype == out.dtype == jnp.float32
  np.testing.assert_allclose(scores, s_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out, o_ref, rtol=1e-5, atol=1e-5)
  dq, dk = vjp_s(g_s)
  dp, dv = vjp_o(g_o)
  for got, want in ((dq, dq_ref), (dk, dk_ref), (dp, dp_ref), (dv, dv_ref)):
    assert got.dtype == jnp.bfloat16 and got.shape == want.shape
    # One bf16 rounding of the float32 result.
    np.testing.assert_allclose(np.asarray(got, np.float32), want,
                               rtol=2 ** -7, atol=2 ** -7 * float(
                                   jnp.abs(want).max()))


def test_attention_products_take_the_einsum_below_the_relayout_floor():
  # A decoding step (one query) keeps the einsum: no copy of the cache.
  q = jnp.ones((1, 1, 2, 4), jnp.bfloat16)
  kk = jnp.ones((1, 9, 2, 4), jnp.bfloat16)
  with ops.on_platform('cpu'):
    jaxpr = jax.make_jaxpr(ops.attention_scores)(q, kk)
  names = {e.primitive.name for e in jaxpr.jaxpr.eqns}
  assert 'custom_vjp_call' not in names and 'optimization_barrier' not in names
  q16 = jnp.ones((1, ops.MIN_QUERIES_RELAYOUT, 2, 4), jnp.bfloat16)
  with ops.on_platform('cpu'):
    jaxpr = jax.make_jaxpr(ops.attention_scores)(q16, kk)
  assert any('custom' in e.primitive.name for e in jaxpr.jaxpr.eqns)
