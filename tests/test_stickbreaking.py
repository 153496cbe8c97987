"""lmx.model.stickbreaking: stick-breaking attention against a float64
product-form recomputation, the chunked backend against the dense one,
float32 at long range, decoding against the forward pass, causality, a
jitted training step, the refusals, and softmax left as it was.

Run as a script, it prints the worst relative error of the float32 backends
against float64 at long range (the numbers of docs/backends.md):
``PYTHONPATH=. python tests/test_stickbreaking.py``.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmx.config import validate as config_lib
from lmx.errors import ConfigError
from lmx.model import attention as A
from lmx.model import stickbreaking as SB
from lmx.model import transformer as model_lib
from helpers import FAST_COMPILE, tiny_model_config

STICK = SB.REGISTRY['stick_breaking']
CURRENT = SB.REGISTRY['stick_breaking_current']


def naive(z, visible, current=False):
  """``(A, remainder)`` in float64 by the product form, one pair at a time:
  ``A_ij = sigmoid(z_ij) prod_{k > j visible} (1 - sigmoid(z_ik))``, over
  the keys ``j`` the mask shows (``j < i`` unless ``current``); ``z`` and
  ``visible`` are ``[T, S]`` with the queries the last T of the S keys."""
  z = np.asarray(z, np.float64)
  t, s = z.shape
  beta = 1.0 / (1.0 + np.exp(-z))
  a = np.zeros((t, s))
  rem = np.ones(t)
  for r in range(t):
    i = s - t + r
    keys = [j for j in range(s)
            if visible[r, j] and (j < i or (current and j == i))]
    for j in keys:
      a[r, j] = beta[r, j] * np.prod([1.0 - beta[r, k] for k in keys if k > j])
    rem[r] = np.prod([1.0 - beta[r, k] for k in keys])
  return a, rem


def test_weights_by_hand():
  # beta = sigmoid(z) = 1/2, 3/4, 1/4 for keys 0, 1, 2; the nearest key
  # takes 1/4, key 1 takes 3/4 of the 3/4 left, key 0 half of what remains.
  z = jnp.array([[0.0, math.log(3.0), -math.log(3.0)]])[None, None]
  a, rem = SB.stick_weights(z)
  np.testing.assert_allclose(a[0, 0, 0], [0.5 * 0.75 * 0.25, 0.75 * 0.75,
                                          0.25], rtol=1e-6)
  np.testing.assert_allclose(rem[0, 0, 0], 0.5 * 0.25 * 0.75, rtol=1e-6)
  np.testing.assert_allclose(a.sum() + rem.sum(), 1.0, rtol=1e-6)


def test_weights_match_product_form_and_sum_to_at_most_one():
  rng = np.random.default_rng(0)
  t = s = 9
  z = rng.normal(0.0, 3.0, (t, s))
  z[2, 1] = 40.0     # a key that takes the whole stick
  visible = np.tril(np.ones((t, s), bool))
  visible[5, 2:4] = False   # masked keys break nothing
  for norm in (STICK, CURRENT):
    vis = np.asarray(norm.restrict(jnp.asarray(visible), jnp.arange(t),
                                   jnp.arange(s)))
    masked = jnp.where(vis, jnp.asarray(z, jnp.float32), A.NEG_INF)
    a, rem = SB.stick_weights(masked[None, None])
    want_a, want_rem = naive(z, visible, norm.current)
    np.testing.assert_allclose(a[0, 0], want_a, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(rem[0, 0], want_rem, rtol=1e-5, atol=1e-7)
    assert float(a.sum(-1).max()) <= 1.0 + 1e-6
    # Query 0 has no earlier key: all its stick is the remainder, unless it
    # scores its own key.
    assert (float(a[0, 0, 0, 0]) > 0) == norm.current


def _call(rng, b, t, s, h=2, k=8):
  q = rng.normal(size=(b, t, h, k)).astype(np.float32)
  kk = rng.normal(size=(b, s, h, k)).astype(np.float32)
  v = rng.normal(size=(b, s, h, k)).astype(np.float32)
  pos_q = np.broadcast_to(np.arange(s - t, s), (b, t)).astype(np.int32)
  pos_k = np.broadcast_to(np.arange(s), (b, s)).astype(np.int32)
  return A.Call(A.Branch(jnp.asarray(q), jnp.asarray(kk), jnp.asarray(pos_q),
                         jnp.asarray(pos_k)), jnp.asarray(v))


def _shifted(call, shift):
  """``call`` with ``shift`` added to every logit, as a bias."""
  return call._replace(bias_fn=lambda qp, kp: jnp.full(
      (1, 1, qp.shape[1], kp.shape[1]), shift, jnp.float32))


def naive_out(call, norm, mask=A.CAUSAL):
  """The attention output in float64 from ``naive`` weights: the weighted
  values plus the remainder times the query's own value."""
  q = np.asarray(call.near.q, np.float64)
  k = np.asarray(call.near.k, np.float64)
  v = np.asarray(call.v, np.float64)
  b, t, h, d = q.shape
  s = k.shape[1]
  z = np.einsum('bthk,bshk->bhts', q, k) / math.sqrt(d)
  visible = np.asarray(mask(jnp.arange(s - t, s), jnp.arange(s)))
  out = np.zeros((b, t, h, d))
  for bi in range(b):
    for hi in range(h):
      a, rem = naive(z[bi, hi], visible, norm.current)
      out[bi, :, hi] = a @ v[bi, :, hi] + rem[:, None] * v[bi, s - t:, hi]
  return out


@pytest.mark.parametrize('norm', [STICK, CURRENT], ids=lambda n: n.name)
def test_backends_match_float64(norm):
  """Dense and chunked (tiles of 4, 8 and 16; 21 keys, no multiple of any;
  queries the last 13 keys), causal and under a sliding window and a chunk,
  against the float64 product form."""
  rng = np.random.default_rng(1)
  call = _call(rng, 2, 13, 21)
  masks = (A.CAUSAL, A.Mask(n_local=5), A.Mask(chunk=6))
  specs = [A.Spec(mask=m, backend=backend, block=block, normaliser=norm)
           for m in masks for backend, block in
           (('dense', 8), ('chunked', 4), ('chunked', 8), ('chunked', 16))]
  outs = jax.jit(lambda c: [A.attention(s, c) for s in specs],
                 compiler_options=FAST_COMPILE)(call)
  wants = {m: naive_out(call, norm, m) for m in masks}
  for spec, out in zip(specs, outs):
    want = wants[spec.mask]
    np.testing.assert_allclose(out, want, rtol=2e-5, atol=2e-5,
                               err_msg=f'{spec.backend} {spec.block} '
                               f'{spec.mask}')


def test_chunked_gradients_equal_dense():
  """The gradients of a loss of the output with respect to q, k and v:
  chunked (tiles of 4, walked nearest first) as dense, under a window."""
  rng = np.random.default_rng(8)
  call = _call(rng, 1, 11, 11)
  w = jnp.asarray(rng.normal(size=call.near.q.shape), jnp.float32)

  def loss(spec, q, k, v):
    c = call._replace(near=call.near._replace(q=q, k=k), v=v)
    return (A.attention(spec, c) * w).sum()

  specs = [A.Spec(mask=A.Mask(n_local=6), backend=b, block=4,
                  normaliser=STICK) for b in ('dense', 'chunked')]
  dense, chunked = jax.jit(lambda *a: [
      jax.grad(functools.partial(loss, s), argnums=(0, 1, 2))(*a)
      for s in specs], compiler_options=FAST_COMPILE)(
          call.near.q, call.near.k, call.v)
  for gd, gc in zip(dense, chunked):
    assert bool(jnp.isfinite(gc).all()) and float(jnp.abs(gd).max()) > 0
    np.testing.assert_allclose(gc, gd, rtol=1e-5, atol=1e-5)


def long_range_errors(n_keys: int, shift: float, n_queries: int = 16,
                      block: int = 512):
  """The worst relative error of the dense and chunked float32 outputs
  against float64 (log-space, numpy), and their largest weight sum, for
  the last ``n_queries`` queries over ``n_keys`` keys. ``shift``: added to
  every logit (a bias): at -10 each key breaks off about sigmoid(-10) =
  4.5e-5 of the stick, so it reaches across 16k keys; ``reach``: the
  largest share of a query's weight on the first half of the keys."""
  rng = np.random.default_rng(2)
  call = _call(rng, 1, n_queries, n_keys, h=2, k=16)
  dense = A.Spec(backend='dense', normaliser=STICK)
  chunked = A.Spec(backend='chunked', block=block, normaliser=STICK)
  out_d, out_c = jax.jit(lambda c: (
      A.attention(dense, _shifted(c, shift)),
      A.attention(chunked, _shifted(c, shift))))(call)
  q = np.asarray(call.near.q, np.float64)
  k = np.asarray(call.near.k, np.float64)
  v = np.asarray(call.v, np.float64)
  z = np.einsum('bthk,bshk->bhts', q, k) / 4.0 + shift
  pos = np.arange(n_keys - n_queries, n_keys)
  visible = np.arange(n_keys)[None, :] < pos[:, None]
  sp = np.where(visible, np.logaddexp(0.0, z), 0.0)
  later = np.cumsum(sp[..., ::-1], -1)[..., ::-1] - sp
  a = np.where(visible, np.exp(-np.logaddexp(0.0, -z) - later), 0.0)
  rem = np.exp(-sp.sum(-1))
  want = (np.einsum('bhts,bshk->bthk', a, v)
          + np.transpose(rem, (0, 2, 1))[..., None] * v[:, n_keys - n_queries:])
  scale = np.abs(want).max()
  err = lambda out: float(np.abs(np.asarray(out, np.float64) - want).max()
                          / scale)
  z32 = jnp.where(jnp.asarray(visible), jnp.asarray(z, jnp.float32),
                  A.NEG_INF)
  a32, _ = SB.stick_weights(z32)
  return {'dense': err(out_d), 'chunked': err(out_c),
          'max_weight_sum': float(a32.sum(-1).max()),
          'finite': bool(np.isfinite(out_d).all() & np.isfinite(out_c).all()),
          'reach': float(a[..., :n_keys // 2].sum(-1).max())}


@pytest.mark.parametrize('shift', [-10.0, -2.0])
def test_long_range_float32(shift):
  """16k keys: finite, within 1e-5 of float64 (relative to the largest
  output), weights summing to at most 1; at -10 the first 8k keys still
  hold a visible share of the weight, so they are tested too."""
  r = long_range_errors(16384, shift)
  assert r['finite']
  assert r['dense'] < 1e-5 and r['chunked'] < 1e-5, r
  assert r['max_weight_sum'] <= 1.0 + 1e-6, r
  if shift == -10.0:
    assert r['reach'] > 0.05, r


# ----------------------------------------------------------------- the model


def _model(**fields):
  c = tiny_model_config(**{'position': 'none', 'normaliser': 'stick_breaking',
                           **fields})
  config_lib.validate(c)
  return model_lib.build(c.model, seed=0)


def _forward(model, *tokens):
  """The model's logits of each token array, under one jit."""
  pos = jnp.arange(tokens[0].shape[1], dtype=jnp.int32)[None]
  return jax.jit(lambda *ts: [model(t, pos) for t in ts],
                 compiler_options=FAST_COMPILE)(*tokens)


def _decode_jitted(model, tokens, n_prompt):
  """helpers.decode_steps under one jit per call shape (the prefill, then
  every step of one token): the logits of every token."""
  graphdef, state = nnx.split(model)

  @functools.partial(jax.jit, static_argnames='prefill',
                     compiler_options=FAST_COMPILE)
  def call(state, toks, pos, cache, prefill=False):
    return nnx.merge(graphdef, state).decode(toks, pos, cache, prefill=prefill)

  t = tokens.shape[1]
  pos = jnp.arange(t, dtype=jnp.int32)[None]
  cache = model.init_cache(1, t)
  logits, cache = call(state, tokens[:, :n_prompt], pos[:, :n_prompt], cache,
                       prefill=True)
  out = [logits]
  for i in range(n_prompt, t):
    logits, cache = call(state, tokens[:, i:i + 1], pos[:, i:i + 1], cache)
    out.append(logits)
  return jnp.concatenate(out, axis=1)


def test_decode_equals_forward_and_causal():
  """Greedy decoding with the cache gives the forward pass's logits (the
  whole-sequence cache, and a sliding window's ring of slots, whose keys
  are out of token order); changing later tokens leaves earlier logits."""
  tokens = jnp.asarray(np.random.default_rng(3).integers(0, 257, (1, 9)))
  for fields in ({}, {'layers__window': (4,)}):
    model = _model(**fields)
    changed = tokens.at[:, 6:].set((tokens[:, 6:] + 1) % 257)
    full, other = _forward(model, tokens, changed)
    decoded = _decode_jitted(model, tokens, 5)
    np.testing.assert_allclose(decoded, full, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(other[:, :6], full[:, :6])
    assert not np.allclose(other[:, 6:], full[:, 6:])


def test_chunked_equals_dense_in_the_model():
  """Shaw's content term (its value term takes the stick weights) and
  ReRoPE's far branch: the chunked backend (tiles of 8, 19 tokens) gives
  the dense backend's logits."""
  tokens = jnp.asarray(np.random.default_rng(7).integers(0, 257, (1, 19)))
  pos = jnp.arange(19, dtype=jnp.int32)[None]
  cases = ({'position': 'shaw'}, {'position': 'rope', 'rerope__window': 5})
  pairs = []
  for fields in cases:
    pairs.append([_model(**{**fields, 'attention': name,
                            'attention_block': 8})
                  for name in ('dense', 'chunked')])
  outs = jax.jit(lambda: [[m(tokens, pos) for m in pair] for pair in pairs],
                 compiler_options=FAST_COMPILE)()
  for fields, (dense, chunked) in zip(cases, outs):
    np.testing.assert_allclose(chunked, dense, rtol=1e-5, atol=1e-5,
                               err_msg=str(fields))


def test_jitted_training_step_has_finite_gradient():
  model = _model(attention='chunked', attention_block=8)
  graphdef, state = nnx.split(model)
  tokens = jnp.asarray(np.random.default_rng(4).integers(0, 257, (2, 19)))
  pos = jnp.broadcast_to(jnp.arange(18, dtype=jnp.int32), (2, 18))

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def step(state):
    def loss(state):
      m = nnx.merge(graphdef, state)
      return model_lib.token_losses(m, tokens[:, :-1], pos,
                                    tokens[:, 1:]).mean()
    value, grads = jax.value_and_grad(loss)(state)
    return value, jax.tree.map(lambda p, g: p - 0.1 * g, state, grads), grads

  value, new_state, grads = step(state)
  leaves = jax.tree.leaves(grads)
  assert np.isfinite(float(value))
  assert all(bool(jnp.isfinite(g).all()) for g in leaves)
  assert any(float(jnp.abs(g).max()) > 0 for g in leaves)
  assert float(step(new_state)[0]) < float(value)


def test_fused_kernels_refuse_and_fall_back():
  call = _call(np.random.default_rng(5), 1, 4, 4)
  for name in ('flash', 'cudnn', 'auto'):
    spec = A.Spec(backend=name, normaliser=STICK)
    for backend in (A.FLASH, A.CUDNN):
      assert 'stick_breaking' in backend.unavailable(spec, call)
    assert A.choose(spec, call) in (A.DENSE, A.CHUNKED)


def test_config_checks():
  c = tiny_model_config(normaliser='stick_breaking')
  config_lib.validate(c)
  for fields, needle in (({'sinks__logit': True}, 'config.model.sinks'),
                         ({'length_scaling__kind': 'logn'},
                          'config.model.length_scaling.kind'),
                         ({'normaliser': 'sparsemax'},
                          'config.model.normaliser')):
    c = tiny_model_config(**{'normaliser': 'stick_breaking', **fields})
    with pytest.raises(ConfigError, match=needle.replace('.', r'\.')):
      config_lib.validate(c)


def test_softmax_is_the_default_and_unchanged():
  c = tiny_model_config()
  assert c.model.normaliser == 'softmax'
  model = model_lib.build(c.model, seed=0)
  assert all(b.attn.spec.normaliser is None for b in model.blocks)
  # The spec with no normaliser is the softmax one: the same dense output
  # as a softmax computed here.
  call = _call(np.random.default_rng(6), 1, 6, 6)
  out = A.attention(A.Spec(), call)
  z = jnp.einsum('bthk,bshk->bhts', call.near.q, call.near.k) / math.sqrt(8)
  p = jax.nn.softmax(jnp.where(jnp.tril(jnp.ones((6, 6), bool)), z,
                               -jnp.inf), -1)
  np.testing.assert_allclose(out, jnp.einsum('bhts,bshk->bthk', p, call.v),
                             rtol=1e-5, atol=1e-6)


if __name__ == '__main__':
  for n in (4096, 16384):
    for shift in (-10.0, -2.0):
      print(f'keys={n} shift={shift}', long_range_errors(n, shift))


def test_attention_diagnostics_take_the_entropy_of_the_stick_weights():
  # Query i weighs keys j < i nearest first; the remainder goes to its own
  # value. The entropy is over those weights and the remainder, worked out
  # here in float64 in the product form.
  rng = np.random.default_rng(3)
  t = 5
  z = rng.normal(0.0, 2.0, (1, 1, t, t))
  idx = jnp.arange(t)
  sb = SB.StickBreaking()
  mask = sb.restrict(A.CAUSAL(idx, idx), idx, idx)
  stats = A.attention_stats(jnp.asarray(z, jnp.float32), mask, sb)
  beta = 1.0 / (1.0 + np.exp(-z[0, 0]))
  for i in range(t):
    weights, left = [], 1.0
    for j in range(i - 1, -1, -1):
      weights.append(beta[i, j] * left)
      left *= 1.0 - beta[i, j]
    p = np.array(weights + [left])
    assert abs(p.sum() - 1.0) < 1e-12
    expected = -(p * np.log(p)).sum()
    np.testing.assert_allclose(float(stats['entropy'][0, i]), expected,
                               rtol=1e-5, atol=1e-6)
  softmax = A.attention_stats(jnp.asarray(z, jnp.float32), mask)
  assert not np.allclose(softmax['entropy'][0, 2:], stats['entropy'][0, 2:])
