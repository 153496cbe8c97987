"""The Forgetting Transformer's gates (lmx/positions/fox.py): the decay
by hand and over long sequences, the module, its bad settings, and chunked
against dense at strong decay."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmx import positions as P
from lmx.errors import ConfigError
from content_encodings import built, model_cfg, qk, tile, tokens as random_tokens


# -------------------------------------------------------------------- FoX


def test_fox_log_gates_by_hand():
  # x = (1, 0), w = [[0, 1], [0, 0]], b = (0, ln 3 - 1): z = (0, ln 3),
  # sigmoid = 1/2, 3/4; log = -0.6931472, -0.2876821.
  x = jnp.array([[[1.0, 0.0]]])
  w = jnp.array([[0.0, 1.0], [0.0, 0.0]])
  b = jnp.array([0.0, math.log(3.0) - 1.0])
  np.testing.assert_allclose(P.fox_log_gates(x, w, b),
                             [[[-0.6931472, -0.2876821]]], rtol=1e-6)


def test_fox_decay_is_the_sum_of_log_gates_between_the_pair():
  # log f = -1, -2, -0.5 (one head): F = -1, -3, -3.5, and
  # F_i - F_j = sum_{l=j+1..i} log f_l: (2, 0) -2 - 0.5 = -2.5;
  # (2, 1) -0.5; (1, 0) -2; the diagonal 0.
  log_f = jnp.array([-1.0, -2.0, -0.5]).reshape(1, 3, 1)
  side = P.fox_prefix(log_f)
  np.testing.assert_allclose(side[0] + side[1], [[[-1.0], [-3.0], [-3.5]]])
  d = P.fox_decay(side, side)[0, 0]
  np.testing.assert_allclose(np.tril(d), [[0, 0, 0], [-2, 0, 0],
                                          [-2.5, -0.5, 0]], atol=1e-7)


def test_fox_prefix_continues_from_previous():
  # Decoding: F of the new tokens continues from the last cached one.
  rng = np.random.default_rng(0)
  log_f = jnp.asarray(-rng.exponential(size=(2, 11, 3)), jnp.float32)
  whole = P.fox_prefix(log_f)
  first = P.fox_prefix(log_f[:, :7])
  rest = P.fox_prefix(log_f[:, 7:], previous=(first[0][:, -1],
                                              first[1][:, -1]))
  np.testing.assert_allclose(rest[0] + rest[1],
                             (whole[0] + whole[1])[:, 7:], rtol=1e-6)


def test_fox_decay_stays_exact_over_long_sequences():
  # 2^17 tokens with log f ~ log_sigmoid(N(0, 1)): F reaches about -10^5,
  # where a float32 holds 2^-7 = 0.008. Against float64 the two-float F
  # keeps every difference to float32 rounding of the difference itself;
  # a plain float32 prefix sum misses near pairs by about 1e-2.
  rng = np.random.default_rng(0)
  t = 2 ** 17
  log_f = np.asarray(jax.nn.log_sigmoid(jnp.asarray(
      rng.normal(size=(1, t, 1)), jnp.float32)))
  exact = np.cumsum(log_f.astype(np.float64), axis=1)[0, :, 0]
  hi, lo = (np.asarray(a)[0, :, 0] for a in jax.jit(P.fox_prefix)(
      jnp.asarray(log_f)))
  i = rng.integers(16, t, 4000)
  j = np.concatenate([i[:2000] - rng.integers(0, 16, 2000),
                      rng.integers(0, 16, 2000)])
  want = exact[i] - exact[j]
  got = (hi[i] - hi[j]) + (lo[i] - lo[j])
  # Every pair within a few float32 roundings of its own difference.
  assert np.all(np.abs(got - want) <= 3e-7 * np.maximum(np.abs(want), 16))
  near = slice(0, 2000)
  assert np.abs(got - want)[near].max() < 1e-5
  plain = np.asarray(jnp.cumsum(jnp.asarray(log_f), axis=1))[0, :, 0]
  assert np.abs((plain[i] - plain[j]) - want)[near].max() > 1e-3


def test_fox_module_gates_its_input_and_ignores_positions():
  cfg = model_cfg('fox', num_heads=2, d_model=8)
  enc = P.FoX(cfg, rngs=nnx.Rngs(params=0))
  assert enc.gate_w.shape == (8, 2) and enc.gate_b.shape == (2,)
  np.testing.assert_array_equal(enc.gate_b[...], [0.0, 0.0])
  # Initialised as the authors': N(0, 0.02) weights.
  assert 0.005 < float(jnp.std(enc.gate_w[...])) < 0.05
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(1, 5, 8)), jnp.float32)
  q, k = qk(1, 5, 2, 4)
  pos = jnp.arange(5, dtype=jnp.int32)[None]
  term = enc.content(x, q, k, pos)
  assert term.tiled
  got = term.fn(tile(term, q, k, pos))
  z = np.asarray(x) @ np.asarray(enc.gate_w[...])
  log_f = np.log(1 / (1 + np.exp(-z)))
  f_cum = np.cumsum(log_f, axis=1)
  want = np.transpose(f_cum[:, :, None] - f_cum[:, None, :], (0, 3, 1, 2))
  np.testing.assert_allclose(got, want, atol=1e-6)
  moved = term.fn(tile(term, q, k, pos * 3 + 40))
  np.testing.assert_array_equal(moved, got)


@pytest.mark.parametrize('field,value', [('init_std', -0.1),
                                         ('bias_init', float('nan')),
                                         ('bias_init', float('inf'))])
def test_fox_bad_settings_are_refused(field, value):
  cfg = model_cfg('fox', **{f'fox__{field}': value})
  with pytest.raises(ConfigError, match=f'config.model.fox.{field}'):
    P.FoX.check(cfg)



def test_fox_chunked_equals_dense_at_100_tokens_of_strong_decay():
  # bias_init -1: log f ~ -1.3 per token, F ~ -130 at the end, where a
  # float32 step is 1.5e-5; the term is F_i - F_j from the two-float F.
  models = [built('fox', fox__bias_init=-1.0, attention=backend,
                   attention_block=16) for backend in ('dense', 'chunked')]
  tokens = random_tokens(1, 101)
  pos = jnp.arange(101, dtype=jnp.int32)[None]
  dense, chunked = (m(tokens, pos) for m in models)
  np.testing.assert_allclose(chunked, dense, atol=1e-5 * max(
      1.0, float(jnp.abs(dense).max())), rtol=0)
