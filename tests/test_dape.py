"""DAPE (config.model.score_adapter.kind='dape'; lmx/positions/dape.py):
the MLP by hand and against a naive per-pair loop, the zeroed MLP equal to
the base encoding, the backends and decoding against each other,
causality, the gradient reaching the MLP, the fused kernels' refusal and
bad config."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmx.config import validate as config_lib
from lmx.errors import ConfigError
from lmx.model import attention as A
from lmx.model import layer_plan
from lmx.model import transformer as model_lib
from lmx.positions import alibi
from lmx.positions import dape
from helpers import FAST_COMPILE, decode_steps, tiny_model_config

V = 257


def _config(position='alibi', num_layers=1, **fields):
  return tiny_model_config(**{'position': position, 'num_layers': num_layers,
                              'score_adapter.kind': 'dape', **fields})


def _tokens(b, t, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, V, (b, t)),
                     jnp.int32)


def _pure(m):
  return nnx.state(m, nnx.Param).to_pure_dict()


def _copy_shared(src, dst):
  """``dst``'s parameters that ``src`` also has, set to ``src``'s."""
  have = _pure(src)
  state = nnx.state(dst, nnx.Param)

  def fill(a, b):
    return {k: (fill(a[k], v) if isinstance(v, dict) else a[k])
            if k in a else v for k, v in b.items()}

  nnx.replace_by_pure_dict(state, fill(have, state.to_pure_dict()))
  nnx.update(dst, state)


def test_mlp_by_hand():
  # H = 1, D = 2: z = [A; B] = [1, -2]; W1 = [[1, 0.5], [1, 1]],
  # b1 = [0.5, 0]: W1^T z + b1 = [1 - 2 + 0.5, 0.5 - 2] = [-0.5, -1.5];
  # LeakyReLU(0.01): [-0.005, -0.015]; W2 = [[2], [-1]], b2 = [0.25]:
  # 2 (-0.005) - (-0.015) + 0.25 = 0.255.
  params = {'w1': jnp.array([[1.0, 0.5], [1.0, 1.0]]),
            'b1': jnp.array([0.5, 0.0]), 'w2': jnp.array([[2.0], [-1.0]]),
            'b2': jnp.array([0.25])}
  a = jnp.full((1, 1, 1, 1), 1.0)
  b = jnp.full((1, 1, 1, 1), -2.0)
  np.testing.assert_allclose(dape.dape_mlp(a, b, params)[0, 0, 0, 0], 0.255,
                             rtol=1e-6)
  # The adapted logit keeps the bias: A + B + f = 1 - 2 + 0.255.
  got = dape.DAPE().adapt(params)(a, b)
  np.testing.assert_allclose(got[0, 0, 0, 0], -0.745, rtol=1e-6)


def test_mlp_against_a_loop_over_pairs():
  h, d, t, s = 3, 5, 4, 6
  params = dape.dape_init(h, d, jax.random.key(1))
  rng = np.random.default_rng(0)
  a = rng.normal(size=(2, h, t, s)).astype(np.float32)
  b = rng.normal(size=(1, h, t, s)).astype(np.float32)
  got = np.asarray(dape.dape_mlp(jnp.asarray(a), jnp.asarray(b), params))
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  want = np.zeros((2, h, t, s))
  for n in range(2):
    for i in range(t):
      for j in range(s):
        z = np.concatenate([a[n, :, i, j], b[0, :, i, j]])
        hid = z @ p['w1'] + p['b1']
        hid = np.where(hid > 0, hid, 0.01 * hid)
        want[n, :, i, j] = hid @ p['w2'] + p['b2']
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_init_is_torch_linear_default():
  params = dape.dape_init(4, 32, jax.random.key(0))
  assert params['w1'].shape == (8, 32) and params['w2'].shape == (32, 4)
  for name, fan_in in (('w1', 8), ('b1', 8), ('w2', 32), ('b2', 32)):
    bound = 1 / np.sqrt(fan_in)
    x = np.asarray(params[name])
    assert np.all(np.abs(x) <= bound) and np.abs(x).max() > bound / 2, name


def test_layer_logits_against_a_naive_recomputation():
  c = _config('alibi')
  m = model_lib.build(c.model, 0)
  attn = m.blocks[0].attn
  b, t, h, k = 1, 7, attn.num_heads, attn.head_dim
  rng = np.random.default_rng(3)
  q, kk, v = (rng.normal(size=(b, t, h, k)).astype(np.float32)
              for _ in range(3))
  pos = jnp.arange(t)[None]
  call = attn._call(A.Branch(jnp.asarray(q), jnp.asarray(kk), pos, pos), None,
                    jnp.asarray(v), None, None)
  got = np.asarray(A.scores(attn.spec, call))
  logits = np.einsum('bthk,bshk->bhts', q, kk) / np.sqrt(k)
  slopes = np.asarray(alibi.alibi_slopes(h))
  dist = np.abs(np.arange(t)[:, None] - np.arange(t)[None, :])
  bias = -slopes[:, None, None] * dist[None]
  p = {n: np.asarray(getattr(attn, f'dape_{n}')[...], np.float64)
       for n in ('w1', 'b1', 'w2', 'b2')}
  z = np.concatenate([logits[0], bias], 0).transpose(1, 2, 0)   # [t, t, 2H]
  hid = z @ p['w1'] + p['b1']
  hid = np.where(hid > 0, hid, 0.01 * hid)
  want = logits[0] + bias + (hid @ p['w2'] + p['b2']).transpose(2, 0, 1)
  np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('position', ['alibi', 'kerple'])
def test_zeroed_mlp_equals_the_base_encoding_exactly(position):
  base = model_lib.build(
      _config(position, **{'score_adapter.kind': 'off'}).model, 0)
  m = model_lib.build(_config(position).model, 0)
  _copy_shared(base, m)
  attn = m.blocks[0].attn
  attn.dape_w2[...] = jnp.zeros_like(attn.dape_w2[...])
  attn.dape_b2[...] = jnp.zeros_like(attn.dape_b2[...])
  tokens = _tokens(2, 12)
  pos = jnp.broadcast_to(jnp.arange(12), (2, 12))
  np.testing.assert_array_equal(m(tokens, pos), base(tokens, pos))
  # And with its MLP as initialised, it is not the base encoding.
  fresh = model_lib.build(_config(position).model, 0)
  _copy_shared(base, fresh)
  assert np.abs(np.asarray(fresh(tokens, pos) - base(tokens, pos))).max() > 1e-4


@pytest.mark.parametrize('position', ['alibi', 'kerple', 'fire'])
def test_chunked_equals_dense_and_decoding_equals_forward(position):
  t = 13
  cfgs = {be: _config(position, num_layers=2, attention=be, attention_block=4)
          for be in ('dense', 'chunked')}
  for c in cfgs.values():
    config_lib.validate(c)
  models = {be: model_lib.build(c.model, 0) for be, c in cfgs.items()}
  tokens = _tokens(2, t)
  pos = jnp.broadcast_to(jnp.arange(t), (2, t))

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def both(x, p):
    return tuple(nnx.merge(*nnx.split(models[be]))(x, p)
                 for be in ('dense', 'chunked'))

  with A.recording() as calls:
    dense, chunked = both(tokens, pos)
  assert {name for name, _ in calls} == {'dense', 'chunked'}
  np.testing.assert_allclose(chunked, dense, rtol=1e-5, atol=1e-5)
  decoded, _ = decode_steps(models['dense'], tokens[:1], 5)
  np.testing.assert_allclose(decoded, dense[:1], rtol=1e-4, atol=1e-4)


def test_causal():
  m = model_lib.build(_config('kerple', attention='chunked',
                              attention_block=4).model, 0)
  tokens = _tokens(1, 12)
  pos = jnp.arange(12)[None]
  changed = tokens.at[0, 8].set((tokens[0, 8] + 1) % V)
  a, b = np.asarray(m(tokens, pos)), np.asarray(m(changed, pos))
  np.testing.assert_array_equal(a[:, :8], b[:, :8])
  assert np.abs(a[:, 8:] - b[:, 8:]).max() > 0


def test_a_training_step_reaches_the_mlp_of_every_layer():
  c = _config('fire', num_layers=2)
  m = model_lib.build(c.model, 0)
  graphdef, params, rest = nnx.split(m, nnx.Param, ...)
  tokens = _tokens(2, 10)
  pos = jnp.broadcast_to(jnp.arange(10), (2, 10))

  def loss(p):
    logits = nnx.merge(graphdef, p, rest)(tokens[:, :-1], pos[:, :-1])
    return model_lib.cross_entropy(logits, tokens[:, 1:]).mean()

  value_and_grad = jax.jit(jax.value_and_grad(loss),
                           compiler_options=FAST_COMPILE)
  before, grads = value_and_grad(params)
  for i in range(2):
    g = {n: np.asarray(grads['blocks'][i]['attn'][f'dape_{n}'])
         for n in ('w1', 'b1', 'w2', 'b2')}
    for name in ('w1', 'b1', 'w2'):
      assert np.all(np.isfinite(g[name])) and np.abs(g[name]).max() > 1e-5, (
          i, name)
    # b2 adds one constant per head to every logit of a query, which the
    # softmax ignores: its gradient vanishes up to rounding.
    assert np.abs(g['b2']).max() < 1e-3 * np.abs(g['w2']).max(), i
  stepped = jax.tree.map(lambda p, g: p - 1e-2 * g, params, grads)
  after, _ = value_and_grad(stepped)
  assert after < before


def test_fused_kernels_refuse_and_auto_falls_back():
  c = _config('alibi', attention='auto')
  attn = model_lib.build(c.model, 0).blocks[0].attn
  x = jnp.ones((1, 4, attn.num_heads, attn.head_dim))
  pos = jnp.arange(4)[None]
  call = attn._call(A.Branch(x, x, pos, pos), None, x, None, None)
  assert A.FLASH.unavailable(attn.spec, call) == A.ADAPT_REFUSAL
  assert A.CUDNN.unavailable(attn.spec, call) is not None
  flash_spec = layer_plan.attention_spec(
      _config('alibi', attention='flash').model, layer_plan.plan(c.model)[0])
  assert A.choose(flash_spec, call) is A.DENSE


def test_bad_config():
  with pytest.raises(ConfigError, match=r'score_adapter.kind.*rope'):
    config_lib.validate(_config('rope'))
  with pytest.raises(ConfigError, match=r"attention='flash'"):
    config_lib.validate(_config('alibi', attention='flash'))
  with pytest.raises(ConfigError, match=r'score_adapter.dape_width'):
    config_lib.validate(_config('alibi', **{'score_adapter.dape_width': 0}))
  with pytest.raises(ConfigError, match=r'score_adapter.kind'):
    config_lib.validate(_config('alibi', **{'score_adapter.kind': 'dapev2'}))
  config_lib.validate(_config('t5'))   # any encoding with a bias


def test_off_adds_no_parameters():
  m = model_lib.build(tiny_model_config(position='alibi').model, 0)
  assert not any('dape' in str(k) for k in _pure(m)['blocks'][0]['attn'])
