"""RoPE frequency scaling (lmx.positions.rope_scaling) against numbers worked
out by hand from the papers (the working is in the comments), its config
check, and the RoPE module / model using it.

Throughout: head dim K = 8, theta = 10000, so plain RoPE has
w_i = 10000^(-2i/8) = 10000^(-i/4) = [1, 0.1, 0.01, 0.001] and wavelengths
lambda_i = 2 pi / w_i = [6.2832, 62.832, 628.32, 6283.2].
"""

import functools
import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from configs import base
from lmx.config import defaults
from lmx.errors import ConfigError
from lmx.model import transformer as model_lib
from lmx import positions as P
from lmx.positions import rope_scaling as RS

K, THETA = 8, 10000.0
PLAIN = [1.0, 0.1, 0.01, 0.001]


def _rope_cfg(scaling='none', **fields):
  c = P.RoPE.default_config()
  c.scaling = scaling
  for key, value in fields.items():
    c[key] = value
  return c


def _freqs(scaling, positions=None, **fields):
  return RS.scaled_frequencies(_rope_cfg(scaling, **fields), K, THETA,
                               positions)


def test_default_config_is_plain_rope():
  c = P.RoPE.default_config()
  assert c.scaling == 'none' and c.factor == 1.0 and c.original_max_len == 0
  assert (c.beta_fast, c.beta_slow) == (32.0, 1.0)
  assert (c.low_freq_factor, c.high_freq_factor) == (1.0, 4.0)


def test_none_is_plain_rope():
  inv, scale = _freqs('none')
  np.testing.assert_allclose(inv, PLAIN, rtol=1e-6)
  assert scale == 1.0 and inv.dtype == jnp.float32
  assert np.array_equal(inv, P.rope_inv_freq(K, THETA))


def test_linear_divides_by_the_factor():
  # Position Interpolation, s = 4: positions m -> m / 4, i.e. w_i / 4.
  inv, scale = _freqs('linear', factor=4.0)
  np.testing.assert_allclose(inv, [0.25, 0.025, 0.0025, 0.00025], rtol=1e-6)
  assert scale == 1.0
  # Rotating position 4m with w / 4 is rotating position m with w.
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 1, 1, K)),
                  jnp.float32)
  np.testing.assert_allclose(P.apply_rope(x, jnp.array([[12]]), inv),
                             P.apply_rope(x, jnp.array([[3]]), jnp.array(PLAIN)),
                             atol=1e-6)


def test_ntk_changes_the_base():
  # s = 4: theta' = 10000 * 4^(8/6) = 10000 * 4^(4/3) = 10000 * 6.3496042
  # = 63496.042. w_i' = theta'^(-i/4) = 0.1^i * 4^(-i/3):
  # w_0 = 1 (highest frequency kept), w_1 = 0.1 * 4^(-1/3) = 0.1 * 0.6299605
  # = 0.06299605, w_2 = 0.01 * 4^(-2/3) = 0.01 * 0.3968503 = 0.003968503,
  # w_3 = 0.001 / 4 = 0.00025 (lowest frequency divided by exactly s).
  assert RS.ntk_base(THETA, K, 4.0) == pytest.approx(63496.042, rel=1e-7)
  inv, scale = _freqs('ntk', factor=4.0)
  np.testing.assert_allclose(inv, [1.0, 0.06299605, 0.003968503, 0.00025],
                             rtol=1e-5)
  np.testing.assert_allclose(inv[1], 63496.042 ** (-2 / 8), rtol=1e-6)
  assert scale == 1.0


# NTK-by-parts (YaRN Sec. 3.2) with the paper's ramp on turns
# (ramp='turns'), s = 4, alpha = beta_slow = 1, beta = beta_fast = 32.
# r_i = L w_i / (2 pi).
#
# L = 256: L / (2 pi) = 40.743665, r = [40.74, 4.0744, 0.40744, 0.040744].
#   i = 0: r > 32 -> kept: 1.
#   i = 1: 1 < r < 32 -> gamma = (4.0743665 - 1) / 31 = 0.09917311,
#          w' = 0.1 * ((1 - gamma) / 4 + gamma) = 0.1 * (0.25 + 0.75 gamma)
#          = 0.1 * 0.32437984 = 0.032437984.
#   i = 2, 3: r < 1 -> interpolated: 0.01 / 4, 0.001 / 4.
# L = 64: L / (2 pi) = 10.185916, r = [10.186, 1.0186, 0.10186, 0.010186]:
#   i = 0: gamma = 9.185916 / 31 = 0.29631988 -> 0.25 + 0.75 gamma
#          = 0.47223991.
#   i = 1: gamma = 0.0185916 / 31 = 0.00059973 -> 0.1 * (0.25 + 0.75 gamma)
#          = 0.025044980.
#   i = 2, 3: interpolated.
BY_PARTS_256 = [1.0, 0.032437984, 0.0025, 0.00025]
BY_PARTS_64 = [0.47223991, 0.025044980, 0.0025, 0.00025]


def test_wavelength_turns():
  np.testing.assert_allclose(RS.wavelength_turns(jnp.array(PLAIN), 64.0),
                             [10.185916, 1.0185916, 0.10185916, 0.010185916],
                             rtol=1e-6)


def test_ramp():
  r = jnp.array([0.0, 1.0, 16.5, 32.0, 40.0])
  # (16.5 - 1) / 31 = 0.5.
  np.testing.assert_allclose(RS.ramp(r, 1.0, 32.0), [0, 0, 0.5, 1, 1])


@pytest.mark.parametrize('length,expected', [(256, BY_PARTS_256),
                                             (64, BY_PARTS_64)])
def test_ntk_by_parts_turns(length, expected):
  inv, scale = _freqs('ntk_by_parts', factor=4.0, original_max_len=length,
                      ramp='turns')
  np.testing.assert_allclose(inv, expected, rtol=1e-6)
  assert scale == 1.0
  # The kept and interpolated pairs are exact, not just close.
  if length == 256:
    assert float(inv[0]) == 1.0
    assert float(inv[2]) == float(jnp.float32(0.01) / 4)


# The released code's ramp (ramp='index', the default), K = 8:
#   d(r) = K ln(L / (2 pi r)) / (2 ln theta), 2 ln 1e4 = 18.420681.
#   L = 256: d(32) = 8 ln(256 / 201.06193) / 18.420681 = 8 * 0.241564 /
#     18.420681 = 0.1049 -> floor 0; d(1) = 8 ln(40.743665) / 18.420681 =
#     8 * 3.707300 / 18.420681 = 1.6101 -> ceil 2. lo = 0, hi = 2.
#   L = 64: d(32) = 8 * (-1.144730) / 18.420681 = -0.497 -> floor -1 ->
#     clamped to 0; d(1) = 8 * 2.321024 / 18.420681 = 1.0080 -> ceil 2.
#   Both: ramp = clip(i / 2) = [0, 0.5, 1, 1], gamma = 1 - ramp = [1, 0.5,
#   0, 0]: w' = [1, 0.1 (0.5 / 4 + 0.5) = 0.0625, 0.01 / 4, 0.001 / 4].
BY_INDEX_K8 = [1.0, 0.0625, 0.0025, 0.00025]


@pytest.mark.parametrize('length', [256, 64])
def test_ntk_by_parts_index_is_the_default(length):
  inv, _ = _freqs('ntk_by_parts', factor=4.0, original_max_len=length)
  np.testing.assert_allclose(inv, BY_INDEX_K8, rtol=1e-6)
  assert RS.correction_range(32.0, 1.0, K, THETA, length) == (0, 2)


# The released code's ramp at the sizes the field uses. d(r) as above:
#   K = 128, theta = 1e4, L = 4096: d(32) = 128 ln(4096 / 201.06193) /
#     18.420681 = 128 * 3.014153 / 18.420681 = 20.944 -> lo = 20;
#     d(1) = 128 ln(651.89865) / 18.420681 = 128 * 6.479878 / 18.420681
#     = 45.027 -> hi = 46.
#   K = 128, theta = 5e5 (2 ln 5e5 = 26.244727): d(32) = 385.8116 /
#     26.244727 = 14.701 -> lo = 14; d(1) = 829.4244 / 26.244727 = 31.604
#     -> hi = 32.
#   K = 32 (lmx's default head), theta = 1e4, L = 64: d(32) = 32 *
#     (-1.144730) / 18.420681 = -1.989 -> floor -2, clamped to 0 (the clamp
#     at pair 0); d(1) = 32 * 2.321024 / 18.420681 = 4.032 -> hi = 5.
# Frequencies at a few pairs, w_i = theta^(-2i/K), gamma_i = 1 - clip((i -
# lo) / (hi - lo)), w_i' = w_i ((1 - gamma_i) / s + gamma_i):
#   K 128, 1e4: i = 33: w = 10^(-2.0625) = 0.0086596, gamma = 1 - 13/26 =
#     0.5: s = 4 -> 0.625 w = 0.0054123; s = 8 -> 0.5625 w = 0.0048710.
#     i = 46: gamma 0: w / s = 0.00133352 / s.
#   K 128, 5e5: i = 23: w = 5e5^(-0.359375) = 0.0089523, gamma = 1 - 9/18
#     = 0.5: s = 4 -> 0.0055952; s = 8 -> 0.0050356.
#   K 32, 1e4: i = 2: w = 10^(-0.5) = 0.31622777, gamma = 1 - 2/5 = 0.6:
#     s = 4 -> 0.7 w = 0.22135944; s = 8 -> 0.65 w = 0.20554805.
#     i = 0: kept, 1 (the clamp makes the ramp start at pair 0).
INDEX_CASES = [
    # K, theta, L, (lo, hi), s, {pair: frequency}
    (128, 1e4, 4096, (20, 46), 4.0,
     {0: 1.0, 20: 0.056234133, 33: 0.005412277, 46: 0.00033338036}),
    (128, 1e4, 4096, (20, 46), 8.0,
     {0: 1.0, 33: 0.0048710493, 46: 0.00016669018, 63: 1.4434775e-05}),
    (128, 5e5, 4096, (14, 32), 4.0,
     {14: 0.056669621, 23: 0.0055951621, 32: 0.00035355339}),
    (128, 5e5, 4096, (14, 32), 8.0,
     {23: 0.0050356459, 32: 0.0001767767, 63: 3.068926e-07}),
    (32, 1e4, 64, (0, 5), 4.0, {0: 1.0, 2: 0.22135944, 5: 0.014058533}),
    (32, 1e4, 64, (0, 5), 8.0, {0: 1.0, 2: 0.20554805, 5: 0.0070292666}),
]


@pytest.mark.parametrize('k,theta,length,bounds,factor,expected',
                         INDEX_CASES)
def test_index_ramp_against_hand_values(k, theta, length, bounds, factor,
                                        expected):
  assert RS.correction_range(32.0, 1.0, k, theta, length) == bounds
  cfg = _rope_cfg('yarn', factor=factor, original_max_len=length)
  inv, _ = RS.scaled_frequencies(cfg, k, theta)
  for pair, value in expected.items():
    assert float(inv[pair]) == pytest.approx(value, rel=2e-6), pair
  # Every pair, from the bounds alone.
  lo, hi = bounds
  plain = np.asarray(P.rope_inv_freq(k, theta), np.float64)
  gamma = 1.0 - np.clip((np.arange(k // 2) - lo) / (hi - lo), 0.0, 1.0)
  np.testing.assert_allclose(inv, plain * ((1 - gamma) / factor + gamma),
                             rtol=2e-6)


def test_the_two_ramps_differ_inside_the_ramp():
  # K = 128, L = 4096, s = 4: up to 73% apart in frequency (more than the
  # issue's "up to 80%" only at s = 8); outside both ramps they agree.
  turns = _freqs_k(128, 'yarn', factor=4.0, original_max_len=4096,
                   ramp='turns')
  index = _freqs_k(128, 'yarn', factor=4.0, original_max_len=4096)
  rel = np.abs(turns - index) / np.minimum(turns, index)
  assert 0.6 < rel.max() < 0.8
  np.testing.assert_array_equal(turns[:15], index[:15])
  np.testing.assert_array_equal(turns[50:], index[50:])


def _freqs_k(k, scaling, **fields):
  return np.asarray(RS.scaled_frequencies(_rope_cfg(scaling, **fields), k,
                                          THETA)[0])


def test_check_ramp_name():
  message = _check(_model_cfg('yarn', factor=4.0, original_max_len=64,
                              ramp='pair'))
  assert 'config.model.rope.ramp' in message and "'index'" in message


def test_yarn_frequencies_and_temperature():
  inv, scale = _freqs('yarn', factor=4.0, original_max_len=256, ramp='turns')
  np.testing.assert_allclose(inv, BY_PARTS_256, rtol=1e-6)
  # s = 4: sqrt(1/t) = 0.1 ln 4 + 1 = 1.1386294, 1/t = 1.2964770.
  assert scale == pytest.approx(1.2964770, rel=1e-7)
  # s = 8: sqrt(1/t) = 0.1 ln 8 + 1 = 0.1 * 2.0794415 + 1 = 1.2079442,
  # 1/t = 1.2079442^2 = 1.4591291.
  _, scale = _freqs('yarn', factor=8.0, original_max_len=256)
  assert scale == pytest.approx(1.4591291, rel=1e-7)


def test_yarn_logits_are_multiplied_by_the_temperature():
  # Through the module: q.k with yarn (s = 8) is (0.1 ln 8 + 1)^2 = 1.4591291
  # times q.k with ntk_by_parts (same frequencies, no temperature).
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(1, 5, 2, K)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 5, 2, K)), jnp.float32)
  pos = jnp.array([[0, 3, 50, 400, 1000]])
  logits = {}
  for scaling in ('yarn', 'ntk_by_parts'):
    enc = _rope(scaling, factor=8.0, original_max_len=256)
    qr, kr = enc.rotate(q, k, pos, pos)
    logits[scaling] = jnp.einsum('bthk,bshk->bhts', qr, kr)
  np.testing.assert_allclose(logits['yarn'],
                             1.4591291 * logits['ntk_by_parts'], rtol=1e-5,
                             atol=1e-5)


def test_llama3():
  # L = 64, s = 8, low = 1, high = 4: wavelengths below L / 4 = 16 kept,
  # above L / 1 = 64 divided by 8. lambda = [6.28, 62.83, 628.3, 6283]:
  #   i = 0: 6.28 < 16 -> 1.
  #   i = 1: 16 <= 62.83 <= 64 -> smooth = (64 / 62.831853 - 1) / (4 - 1)
  #          = 0.0185916 / 3 = 0.0061972;
  #          w' = (1 - smooth) 0.1 / 8 + smooth 0.1 = 0.0125 + 0.0875 smooth
  #          = 0.0125 + 0.00054226 = 0.013042256.
  #   i = 2, 3: > 64 -> 0.01 / 8 = 0.00125, 0.001 / 8 = 0.000125.
  inv, scale = _freqs('llama3', factor=8.0, original_max_len=64)
  np.testing.assert_allclose(inv, [1.0, 0.013042256, 0.00125, 0.000125],
                             rtol=1e-6)
  assert scale == 1.0
  # Llama 3.1's own setting (K = 128, theta = 500000, L = 8192, s = 8,
  # low 1, high 4): pair i has lambda_i = 2 pi 500000^(i/64); kept iff
  # lambda < 2048, i.e. i < 64 ln(2048 / 2 pi) / ln(500000)
  # = 64 * 5.78674 / 13.12236 = 28.22 -> pairs 0..28, 29 kept; divided by 8
  # iff lambda > 8192, i.e. i > 64 ln(8192 / 2 pi) / ln(500000)
  # = 64 * 7.17304 / 13.12236 = 34.98 -> pairs 35..63, 29 of them; 6 blended.
  cfg = _rope_cfg('llama3', factor=8.0, original_max_len=8192)
  inv, _ = RS.scaled_frequencies(cfg, 128, 500000.0)
  plain = P.rope_inv_freq(128, 500000.0)
  assert int(jnp.sum(inv == plain)) == 29
  assert int(jnp.sum(inv == plain / 8)) == 29


def test_dynamic_is_plain_up_to_the_original_length():
  # L = 16: any sequence of length l' <= 16 gets plain RoPE, bit for bit.
  plain = P.rope_inv_freq(K, THETA)
  for factor in (1.0, 2.0):
    for last in (0, 7, 15):
      inv, scale = _freqs('dynamic', jnp.arange(last + 1), factor=factor,
                          original_max_len=16)
      assert np.array_equal(inv, plain) and scale == 1.0


def test_dynamic_beyond_the_original_length_is_ntk():
  # s = 1 (YaRN Sec. 3.3): l' = 32, L = 16 -> s_dyn = max(1, 32/16) = 2:
  # NTK-aware with s = 2, w_3 = 0.001 / 2 = 0.0005.
  inv, _ = _freqs('dynamic', jnp.arange(32), factor=1.0, original_max_len=16)
  ntk, _ = _freqs('ntk', factor=2.0)
  np.testing.assert_allclose(inv, ntk, rtol=1e-6)
  assert float(inv[3]) == pytest.approx(0.0005, rel=1e-6)
  # s = 2 (emozilla): s_dyn = 2 * 32/16 - (2 - 1) = 3; w_3 = 0.001 / 3.
  inv, _ = _freqs('dynamic', jnp.arange(32), factor=2.0, original_max_len=16)
  np.testing.assert_allclose(inv, _freqs('ntk', factor=3.0)[0], rtol=1e-6)
  assert float(inv[3]) == pytest.approx(0.001 / 3, rel=1e-6)
  # Only the largest position counts (gaps are fine): l' = 48 -> s_dyn = 3.
  inv, _ = _freqs('dynamic', jnp.array([0, 5, 47]), factor=1.0,
                  original_max_len=16)
  np.testing.assert_allclose(inv, _freqs('ntk', factor=3.0)[0], rtol=1e-6)


def test_dynamic_under_jit_and_per_sequence():
  cfg = _rope_cfg('dynamic', factor=1.0, original_max_len=16)
  f = jax.jit(lambda pos: RS.scaled_frequencies(cfg, K, THETA, pos)[0])
  # Row 0 ends at 15 (plain), row 1 at 31 (s_dyn = 2).
  pos = jnp.stack([jnp.arange(16), jnp.arange(16) + 16])
  inv = f(pos)
  assert inv.shape == (2, K // 2)
  assert np.array_equal(inv[0], P.rope_inv_freq(K, THETA))
  np.testing.assert_allclose(inv[1], _freqs('ntk', factor=2.0)[0], rtol=1e-6)
  with pytest.raises(ValueError, match='positions'):
    RS.scaled_frequencies(cfg, K, THETA)


@pytest.mark.parametrize('scaling', RS.METHODS)
def test_factor_one_is_plain_rope_exactly(scaling):
  # Every method at s = 1 is the identity (dynamic: up to L; longrope with
  # every rescale factor 1).
  ones = {'long_factor': (1.0,) * (K // 2)} if scaling == 'longrope' else {}
  inv, scale = _freqs(scaling, jnp.arange(10), factor=1.0,
                      original_max_len=16, **ones)
  assert np.array_equal(inv, P.rope_inv_freq(K, THETA)) and scale == 1.0
  # ...and so is the module's rotation.
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.normal(size=(2, 10, 2, K)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(2, 10, 2, K)), jnp.float32)
  pos = jnp.broadcast_to(jnp.arange(10), (2, 10))
  got = _rope(scaling, factor=1.0, original_max_len=16, **ones).rotate(
      q, k, pos, pos)
  want = _rope('none').rotate(q, k, pos, pos)
  for a, b in zip(got, want):
    assert np.array_equal(a, b)


def _rope(scaling, **fields):
  c = ml_collections.ConfigDict({'num_heads': 2, 'd_model': 2 * K,
                                 'rope': _rope_cfg(scaling, **fields)})
  return P.RoPE(c, rngs=nnx.Rngs(params=0))


_SETTINGS = {
    'none': {},
    'linear': {'factor': 4.0},
    'ntk': {'factor': 4.0},
    'dynamic': {'factor': 2.0, 'original_max_len': 64},
    'ntk_by_parts': {'factor': 4.0, 'original_max_len': 64},
    'yarn': {'factor': 4.0, 'original_max_len': 64},
    'llama3': {'factor': 8.0, 'original_max_len': 64},
    # Head dim 16: 8 pairs.
    'longrope': {'factor': 4.0, 'original_max_len': 64,
                 'long_factor': (1.0, 1.0, 1.5, 2.0, 3.0, 4.0, 4.0, 4.0)},
}
_QK = np.random.default_rng(0).normal(size=(2, 1, 1, 1, 16)).astype(np.float32)
_QK /= np.linalg.norm(_QK, axis=-1, keepdims=True)


@settings(max_examples=15, deadline=None)
@given(scaling=st.sampled_from(RS.METHODS), p=st.integers(0, 1024),
       s=st.integers(0, 1024), shift=st.integers(0, 1024))
def test_logit_depends_only_on_distance(scaling, p, s, shift):
  # For dynamic the length (here 3000) is fixed, so are the frequencies.
  cfg = _rope_cfg(scaling, **_SETTINGS[scaling])
  inv, scale = RS.scaled_frequencies(cfg, 16, THETA, jnp.array([2999]))
  rot = lambda x, m: P.apply_rope(jnp.asarray(x), jnp.array([[m]]), inv,
                                  scale ** 0.5).reshape(-1)
  q, k = _QK
  a = float(jnp.dot(rot(q, p), rot(k, s)))
  b = float(jnp.dot(rot(q, p + shift), rot(k, s + shift)))
  assert a == pytest.approx(b, abs=3e-3 * scale)


@pytest.mark.parametrize('scaling', [m for m in RS.METHODS if m != 'none'])
def test_module_rotation_is_relative(scaling):
  # Through RoPE.rotate: shifting all positions leaves the logits unchanged.
  rng = np.random.default_rng(2)
  q = jnp.asarray(rng.normal(size=(1, 6, 2, 16)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 6, 2, 16)), jnp.float32)
  enc = P.RoPE(ml_collections.ConfigDict({
      'num_heads': 2, 'd_model': 32,
      'rope': _rope_cfg(scaling, **_SETTINGS[scaling])}),
               rngs=nnx.Rngs(params=0))
  logits = lambda p: jnp.einsum('bthk,bshk->bhts', *enc.rotate(q, k, p, p))
  if scaling == 'dynamic':
    # s_dyn follows the largest position (here 200 > L = 64 in both), so
    # shift the first five only and compare the logits among them.
    a = logits(jnp.array([[0, 3, 9, 40, 100, 200]]))[..., :5, :5]
    b = logits(jnp.array([[57, 60, 66, 97, 157, 200]]))[..., :5, :5]
  else:
    pos = jnp.array([[0, 3, 9, 40, 100, 200]])
    a, b = logits(pos), logits(pos + 57)
  np.testing.assert_allclose(a, b, atol=2e-3, rtol=1e-4)


# --------------------------------------------------------------------------
# check(): one message per bad setting, naming the field and the fix.


def _model_cfg(scaling, **fields):
  c = base.get_config('size=tiny').model
  c.position = 'rope'
  c.rope = _rope_cfg(scaling, **fields)
  return c


def _check(model_cfg):
  """The message of check's ConfigError, or None if it accepts."""
  try:
    RS.check(model_cfg)
  except ConfigError as e:
    return str(e)
  return None


@pytest.mark.parametrize('scaling,fields', list(_SETTINGS.items()))
def test_check_accepts_good_settings(scaling, fields):
  assert _check(_model_cfg(scaling, **fields)) is None


def test_check_accepts_old_configs_and_dynamic_factor_one():
  # A config saved before the scaling fields existed, completed as
  # checkpoint.read_config completes it.
  old = json.loads(base.get_config('size=tiny').to_json())
  old['model']['rope'] = {'theta': 10000.0}
  old = ml_collections.ConfigDict(defaults.complete(old))
  assert old.model.rope.scaling == 'none'
  assert _check(old.model) is None
  alibi = base.get_config('size=tiny').model
  alibi.position = 'alibi'
  assert _check(alibi) is None
  assert _check(_model_cfg('dynamic', factor=1.0,
                             original_max_len=64)) is None


def test_check_unknown_name_lists_the_valid_ones():
  message = _check(_model_cfg('yarn2'))
  assert 'config.model.rope.scaling' in message and "'yarn2'" in message
  for name in RS.METHODS:
    assert name in message


@pytest.mark.parametrize('scaling', ['linear', 'ntk', 'ntk_by_parts', 'yarn',
                                     'llama3'])
@pytest.mark.parametrize('factor', [1.0, 0.5])
def test_check_factor_must_exceed_one(scaling, factor):
  message = _check(_model_cfg(scaling, factor=factor, original_max_len=64))
  assert 'config.model.rope.factor' in message and '> 1' in message


def test_check_dynamic_factor_below_one():
  message = _check(_model_cfg('dynamic', factor=0.5, original_max_len=64))
  assert 'config.model.rope.factor' in message and '>= 1' in message


@pytest.mark.parametrize('scaling', RS.NEEDS_ORIGINAL_LEN)
def test_check_needs_original_max_len(scaling):
  message = _check(_model_cfg(scaling, factor=4.0))
  assert 'config.model.rope.original_max_len' in message
  # linear and ntk do not need it.
  assert _check(_model_cfg('linear', factor=4.0)) is None
  assert _check(_model_cfg('ntk', factor=4.0)) is None


@pytest.mark.parametrize('scaling', ['ntk_by_parts', 'yarn'])
def test_check_beta_order(scaling):
  message = _check(_model_cfg(scaling, factor=4.0, original_max_len=64,
                                beta_fast=1.0, beta_slow=1.0))
  assert 'config.model.rope.beta_fast' in message
  assert 'config.model.rope.beta_slow' in message


def test_check_llama3_factor_order():
  message = _check(_model_cfg('llama3', factor=8.0, original_max_len=64,
                                low_freq_factor=4.0, high_freq_factor=1.0))
  assert 'config.model.rope.low_freq_factor' in message
  assert 'config.model.rope.high_freq_factor' in message


# --------------------------------------------------------------------------
# The model.


@functools.cache
def _logits(scaling, factor=1.0, original_max_len=0, drop_fields=False):
  cfg = base.get_config('size=tiny')
  cfg.model.position = 'rope'
  if drop_fields:  # a config saved before the scaling fields existed
    old = json.loads(cfg.to_json())
    old['model']['rope'] = {'theta': 10000.0}
    cfg = ml_collections.ConfigDict(defaults.complete(old))
  else:
    cfg.model.rope.scaling = scaling
    cfg.model.rope.factor = factor
    cfg.model.rope.original_max_len = original_max_len
  model = model_lib.build(cfg.model, seed=0)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 257, (2, 12)),
                       jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(12, dtype=jnp.int32) * 3, (2, 12))
  return np.asarray(model(tokens, pos))


def test_model_factor_one_and_old_configs_match_plain_rope():
  plain = _logits('none')
  assert np.array_equal(_logits('linear', 1.0), plain)
  assert np.array_equal(_logits('yarn', 1.0, 16), plain)
  assert np.array_equal(_logits('none', drop_fields=True), plain)


def test_model_scaling_changes_the_logits():
  plain = _logits('none')
  for args in (('linear', 4.0), ('yarn', 4.0, 16), ('dynamic', 1.0, 16)):
    # Positions reach 33 > 16, so dynamic scales too.
    assert np.abs(_logits(*args) - plain).max() > 1e-4, args
  # Dynamic with L beyond the positions used is plain RoPE.
  assert np.array_equal(_logits('dynamic', 1.0, 64), plain)


def test_yarn_temperature_boundaries():
  # s = 1 -> 1; s = e -> (0.1 + 1)^2 = 1.21.
  assert RS.yarn_attention_scale(1.0) == 1.0
  assert RS.yarn_attention_scale(math.e) == pytest.approx(1.1 ** 2)


# --------------------------------------------------------------------------
# LongRoPE (Ding et al. 2024): K = 8, L = 16, s = 4,
# long = [1, 2, 4, 8], short = [1, 1, 1, 2].
#   Up to L (largest position + 1 <= 16): w / short = [1, 0.1, 0.01, 0.0005].
#   Past L: w / long = [1, 0.05, 0.0025, 0.000125].
#   Logits x (1 + ln 4 / ln 16) = 1 + 0.5 = 1.5 (ln 16 = 2 ln 4), i.e. q and k
#   each x sqrt(1.5) = 1.2247449.
LONG, SHORT = (1.0, 2.0, 4.0, 8.0), (1.0, 1.0, 1.0, 2.0)


def test_longrope_by_hand():
  fields = dict(factor=4.0, original_max_len=16, long_factor=LONG,
                short_factor=SHORT)
  inv, scale = _freqs('longrope', jnp.arange(16), **fields)
  np.testing.assert_allclose(inv, [1.0, 0.1, 0.01, 0.0005], rtol=1e-6)
  assert scale == pytest.approx(1.5, rel=1e-12)
  inv, _ = _freqs('longrope', jnp.arange(17), **fields)
  np.testing.assert_allclose(inv, [1.0, 0.05, 0.0025, 0.000125], rtol=1e-6)
  # Per sequence, under jit: row 0 ends at 15 (short), row 1 at 20 (long).
  cfg = _rope_cfg('longrope', **fields)
  f = jax.jit(lambda pos: RS.scaled_frequencies(cfg, K, THETA, pos)[0])
  inv = f(jnp.stack([jnp.arange(16), jnp.arange(16) + 5]))
  np.testing.assert_allclose(inv[0], [1.0, 0.1, 0.01, 0.0005], rtol=1e-6)
  np.testing.assert_allclose(inv[1], [1.0, 0.05, 0.0025, 0.000125], rtol=1e-6)
  # No short list: all 1 up to L.
  inv, _ = _freqs('longrope', jnp.arange(16), factor=4.0, original_max_len=16,
                  long_factor=LONG)
  assert np.array_equal(inv, P.rope_inv_freq(K, THETA))


def test_longrope_module_scales_the_logits():
  # Same frequencies, the logits 1.5 times those of linear-free rotation.
  rng = np.random.default_rng(3)
  q = jnp.asarray(rng.normal(size=(1, 5, 2, K)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 5, 2, K)), jnp.float32)
  pos = jnp.array([[0, 2, 5, 9, 30]])
  enc = _rope('longrope', factor=4.0, original_max_len=16, long_factor=LONG)
  qr, kr = enc.rotate(q, k, pos, pos)
  got = jnp.einsum('bthk,bshk->bhts', qr, kr)
  inv = jnp.asarray(P.rope_inv_freq(K, THETA)) / jnp.asarray(LONG)
  want = jnp.einsum('bthk,bshk->bhts', P.apply_rope(q, pos, inv),
                    P.apply_rope(k, pos, inv)) * 1.5
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('fields,words', [
    (dict(long_factor=()), ['config.model.rope.long_factor', 'exactly 8']),
    (dict(long_factor=(1.0,) * 7), ['has 7 factors', 'exactly 8']),
    (dict(long_factor=(1.0,) * 7 + (-2.0,)), ['positive finite']),
    (dict(long_factor=(1.0,) * 7 + (float('inf'),)), ['positive finite']),
    (dict(long_factor=(1.0,) * 8, short_factor=(1.0,) * 3),
     ['config.model.rope.short_factor', 'or none for all 1']),
])
def test_check_longrope_lists(fields, words):
  # The tiny model: head 16, 8 pairs.
  message = _check(_model_cfg('longrope', factor=4.0, original_max_len=16,
                              **fields))
  assert message is not None
  for word in words:
    assert word in message, message


def test_longrope_for_length_starts_from_yarn():
  # The comparison's long factors are YaRN's per-pair ratios at s = n / L.
  c = base.get_config('size=tiny').model
  RS.configure(c, 16, 64, 'longrope')
  assert c.rope.scaling == 'longrope' and c.rope.factor == 4.0
  assert len(c.rope.long_factor) == 8
  assert _check(c) is None
  yarn, _ = RS.scaled_frequencies(_rope_cfg('yarn', factor=4.0,
                                            original_max_len=16), 16, THETA)
  np.testing.assert_allclose(
      np.asarray(P.rope_inv_freq(16, THETA)) / np.asarray(c.rope.long_factor),
      yarn, rtol=1e-6)
  # At n <= L it is plain RoPE.
  RS.configure(c, 16, 16, 'longrope')
  assert c.rope.scaling == 'none'


def test_configs_saved_before_the_ramp_existed_keep_the_paper_ramp():
  saved = base.get_config('size=tiny').to_dict()
  del saved['model']['rope']['ramp']
  saved['model']['rope']['scaling'] = 'yarn'
  assert defaults.complete(saved)['model']['rope']['ramp'] == 'turns'
  saved = base.get_config('size=tiny').to_dict()
  del saved['model']['rope']['ramp']
  # Without a by-parts scaling the run had no ramp: today's default.
  assert defaults.complete(saved)['model']['rope']['ramp'] == 'index'


def test_configs_saved_before_kerple_sharing_keep_per_layer_parameters():
  saved = base.get_config('size=tiny').to_dict()
  saved['model']['position'] = 'kerple'
  del saved['model']['kerple']['per_layer']
  assert defaults.complete(saved)['model']['kerple']['per_layer'] is True
  # Another encoding's run gets today's default (so resuming it with
  # today's config changes nothing).
  saved = base.get_config('size=tiny').to_dict()
  del saved['model']['kerple']['per_layer']
  assert defaults.complete(saved)['model']['kerple']['per_layer'] is False
  # A field that is there is never changed.
  saved = base.get_config('size=tiny').to_dict()
  assert defaults.complete(saved)['model']['kerple']['per_layer'] is False
