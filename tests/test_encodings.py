"""Each encoding's defining math against numbers worked out from its paper."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from lmx import positions as P


# ALiBi (Press et al. 2022, Sec. 3): for n heads the slopes are the geometric
# sequence starting at 2^(-8/n) with that same ratio.
def test_alibi_slopes_power_of_two():
  # n=8: ratio 2^-1 -> 1/2, 1/4, ..., 1/256 (the paper's example).
  np.testing.assert_allclose(P.alibi_slopes(8), [2.0**-k for k in range(1, 9)])
  # n=4: ratio 2^-2 -> 1/4, 1/16, 1/64, 1/256.
  np.testing.assert_allclose(P.alibi_slopes(4), [2.0**-2, 2.0**-4, 2.0**-6,
                                                 2.0**-8])


def test_alibi_slopes_not_a_power_of_two():
  # n=6: the 4 slopes of 4 heads, then every other slope of 8 heads, first 2:
  # 8-head slopes are 2^-1..2^-8; [0::2] -> 2^-1, 2^-3, 2^-5, 2^-7; take 2.
  np.testing.assert_allclose(
      P.alibi_slopes(6), [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3])
  # n=12: 8 heads (2^-1..2^-8), then 4 of 16 heads' slopes at even indices:
  # 16-head ratio 2^-0.5 -> slopes 2^-0.5k, k=1..16; k=1,3,5,7 -> 2^-0.5..2^-3.5
  expected = [2.0**-k for k in range(1, 9)] + [2.0**-0.5, 2.0**-1.5,
                                               2.0**-2.5, 2.0**-3.5]
  np.testing.assert_allclose(P.alibi_slopes(12), expected, rtol=1e-6)
  assert P.alibi_slopes(1).tolist() == [2.0**-8]


def test_alibi_bias_values():
  q = jnp.array([[0, 1, 2, 3]])
  bias = P.alibi_bias(q, q, P.alibi_slopes(2))   # slopes 1/16, 1/256
  assert bias.shape == (1, 2, 4, 4)
  # Query 3, key 0: distance 3 -> -3/16 in head 0, -3/256 in head 1.
  assert float(bias[0, 0, 3, 0]) == pytest.approx(-3 / 16)
  assert float(bias[0, 1, 3, 0]) == pytest.approx(-3 / 256)
  assert float(bias[0, 0, 2, 2]) == 0.0


# T5 (Raffel et al. 2020): half the buckets are exact distances, the rest
# log-spaced up to max_distance. Here num_buckets=32, max_distance=128,
# causal: max_exact = 16.
@pytest.mark.parametrize('distance,bucket', [
    (0, 0), (1, 1), (15, 15),
    (16, 16),   # 16 + floor(log(16/16)/log(128/16) * 16) = 16 + 0
    (32, 21),   # 16 + floor(log 2 / log 8 * 16) = 16 + floor(5.33) = 21
    (64, 26),   # 16 + floor(log 4 / log 8 * 16) = 16 + floor(10.67) = 26
    (100, 30),  # log(6.25)/log(8) = 1.8326/2.0794 = 0.8813; *16 = 14.10 -> 30
    (127, 31),  # 16 + floor(log 7.94 / log 8 * 16) = 16 + floor(15.94) = 31
    (128, 31), (10_000, 31),  # capped at num_buckets - 1
])
def test_t5_causal_buckets(distance, bucket):
  # The argument is key - query: a key `distance` tokens in the past.
  got = P.t5_relative_bucket(jnp.array(-distance), 32, 128)
  assert int(got) == bucket


def test_t5_future_keys_share_bucket_zero_when_causal():
  got = P.t5_relative_bucket(jnp.array([1, 5, 500]), 32, 128)
  assert got.tolist() == [0, 0, 0]


def test_t5_bidirectional_buckets():
  # 32 buckets -> 16 per direction, max_exact 8. Past keys (key - query < 0)
  # use buckets 0..15, future keys 16..31.
  rel = jnp.array([-3, 3, -8, 8, -1000, 1000])
  got = P.t5_relative_bucket(rel, 32, 128, bidirectional=True)
  # -8: 8 + floor(log(8/8)/log(128/8) * 8) = 8; +8 -> 16 + 8 = 24.
  assert got.tolist() == [3, 19, 8, 24, 15, 31]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 5000), min_size=2, max_size=30),
       st.sampled_from([(32, 128), (16, 64), (64, 1024)]))
def test_t5_buckets_are_monotone_and_in_range(distances, spec):
  num_buckets, max_distance = spec
  d = jnp.array(sorted(distances))
  b = np.asarray(P.t5_relative_bucket(-d, num_buckets, max_distance))
  assert b.min() >= 0 and b.max() < num_buckets
  assert np.all(np.diff(b) >= 0)


# RoPE (Su et al. 2021): w_i = theta^(-2i/d).
def test_rope_frequencies():
  np.testing.assert_allclose(P.rope_inv_freq(4), [1.0, 0.01], rtol=1e-6)
  np.testing.assert_allclose(P.rope_inv_freq(8, theta=16.0),
                             [1.0, 0.5, 0.25, 0.125], rtol=1e-6)
  with pytest.raises(ValueError, match='even'):
    P.rope_inv_freq(5)


def test_rope_rotation_by_hand():
  # Pairs are (x_0, x_2) and (x_1, x_3) for head dim 4. x = e_0 at position 1
  # turns by angle 1 * w_0 = 1: (cos 1, sin 1) in channels (0, 2).
  x = jnp.array([1.0, 0.0, 0.0, 0.0]).reshape(1, 1, 1, 4)
  out = P.apply_rope(x, jnp.array([[1]]), P.rope_inv_freq(4))
  np.testing.assert_allclose(out.reshape(-1),
                             [math.cos(1), 0, math.sin(1), 0], atol=1e-6)
  # e_1 at position 100: angle 100 * 0.01 = 1 in the second pair.
  x = jnp.array([0.0, 1.0, 0.0, 0.0]).reshape(1, 1, 1, 4)
  out = P.apply_rope(x, jnp.array([[100]]), P.rope_inv_freq(4))
  np.testing.assert_allclose(out.reshape(-1),
                             [0, math.cos(1), 0, math.sin(1)], atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 4000), st.integers(0, 4000), st.integers(-2000, 2000))
def test_rope_dot_product_depends_only_on_distance(p, s, shift):
  shift = max(shift, -min(p, s))
  key = jax.random.key(p * 7919 + s)
  q, k = jax.random.normal(key, (2, 1, 1, 1, 16))
  inv = P.rope_inv_freq(16)
  rot = lambda x, pos: P.apply_rope(x, jnp.array([[pos]]), inv).reshape(-1)
  a = jnp.dot(rot(q, p), rot(k, s))
  b = jnp.dot(rot(q, p + shift), rot(k, s + shift))
  np.testing.assert_allclose(a, b, atol=2e-3, rtol=1e-3)
  # Rotations keep norms.
  np.testing.assert_allclose(jnp.linalg.norm(rot(q, p)), jnp.linalg.norm(q),
                             rtol=1e-5)


# xPos (Sun et al. 2023): zeta_i = (2i/d + gamma) / (1 + gamma), gamma = 0.4.
def test_xpos_zeta_and_scale():
  # d = 4: i = 0 -> 0.4/1.4 = 0.285714; i = 1 -> (0.5 + 0.4)/1.4 = 0.642857.
  np.testing.assert_allclose(P.xpos_zeta(4), [0.4 / 1.4, 0.9 / 1.4], rtol=1e-6)
  # At position = scale_base the scale is zeta itself; at 0 it is 1.
  np.testing.assert_allclose(P.xpos_scale(jnp.array(512), 4),
                             [0.4 / 1.4, 0.9 / 1.4], rtol=1e-6)
  np.testing.assert_allclose(P.xpos_scale(jnp.array(0), 4), [1.0, 1.0])
  # At -1024 (two scale_bases back): zeta^-2 -> 12.25, 2.419753.
  np.testing.assert_allclose(P.xpos_scale(jnp.array(-1024), 4),
                             [12.25, (1.4 / 0.9) ** 2], rtol=1e-5)


# KERPLE (Chi et al. 2022): log  -r1 log(1 + r2 d); power  -a d^p.
def test_kerple_kernels_by_hand():
  d = jnp.array([0.0, 1.0, 3.0])
  # r1 = 2, r2 = 0.5: -2 log(1), -2 log(1.5), -2 log(2.5).
  np.testing.assert_allclose(P.kerple_log(d, 2.0, 0.5),
                             [0.0, -2 * math.log(1.5), -2 * math.log(2.5)],
                             rtol=1e-6)
  # a = 0.5, p = 1.5: 0, -0.5, -0.5 * 3^1.5 = -2.598076.
  np.testing.assert_allclose(P.kerple_power(d, 0.5, 1.5),
                             [0.0, -0.5, -0.5 * 3**1.5], rtol=1e-6)


def test_kerple_power_gradient_is_finite_at_zero_distance():
  d = jnp.array([0.0, 2.0])
  g = jax.grad(lambda p: P.kerple_power(d, 1.0, p).sum())(0.7)
  # d/dp of -d^p = -d^p log d: 0 at d=0, -2^0.7 log 2 at d=2.
  assert float(g) == pytest.approx(-(2**0.7) * math.log(2), rel=1e-5)


def _model_cfg(position, **extra):
  from configs import base
  c = base.get_config('size=tiny').model
  c.position = position
  for k, v in extra.items():
    c[position][k] = v
  return c


@pytest.mark.parametrize('kernel', ['log', 'power'])
def test_kerple_parameters_are_clamped_to_the_papers_constraints(kernel):
  enc = P.Kerple(_model_cfg('kerple', kernel=kernel), rngs=nnx.Rngs(0))
  enc.scale[...] = jnp.array([-1.0, 3.0])
  enc.shape[...] = jnp.array([-2.0, 5.0])
  first, second = enc.kernel_parameters()
  assert first.tolist() == pytest.approx([enc.eps, 3.0])
  upper = 5.0 if kernel == 'log' else 2.0   # power kernel: 0 < p <= 2
  assert second.tolist() == pytest.approx([enc.eps, upper])
  # The clamp passes gradients through, so a clamped parameter can recover.
  g = jax.grad(lambda s: (s + jax.lax.stop_gradient(
      jnp.clip(s, 0.01) - s)).sum())(jnp.array(-1.0))
  assert float(g) == 1.0


# Sinusoidal (Vaswani et al. 2017): PE(p,2i) = sin(p/10000^(2i/d)),
# PE(p,2i+1) = cos(p/10000^(2i/d)).
def test_sinusoidal_table_by_hand():
  t = P.sinusoidal_table(jnp.array([0, 1]), 4)
  np.testing.assert_allclose(t[0], [0, 1, 0, 1], atol=1e-7)
  # d = 4: i = 1 -> 10000^(-2/4) = 0.01.
  np.testing.assert_allclose(
      t[1], [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)],
      rtol=1e-6)
  with pytest.raises(ValueError, match='even'):
    P.sinusoidal_table(jnp.array([0]), 5)


# Position sampling.
def test_contiguous_and_shift_positions():
  rng = np.random.default_rng(0)
  np.testing.assert_array_equal(
      P.sample_positions('contiguous', 2, 5, 100, rng), [[0, 1, 2, 3, 4]] * 2)
  s = P.sample_positions('shift', 50, 5, 12, rng)
  np.testing.assert_array_equal(np.diff(s, axis=1), 1)
  assert s.min() >= 0 and s.max() < 12
  assert len(set(s[:, 0].tolist())) > 1   # offsets do vary


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 64), st.integers(0, 200), st.integers(0, 2**31))
def test_randomized_positions_are_sorted_distinct_and_in_range(length, extra,
                                                               seed):
  max_position = length + extra
  pos = P.sample_positions('randomized', 3, length, max_position,
                           np.random.default_rng(seed))
  assert pos.shape == (3, length)
  assert np.all(np.diff(pos, axis=1) > 0)        # sorted, distinct
  assert pos.min() >= 0 and pos.max() < max_position
  again = P.sample_positions('randomized', 3, length, max_position,
                             np.random.default_rng(seed))
  np.testing.assert_array_equal(pos, again)      # reproducible


def test_randomized_positions_refuse_a_length_past_max_position():
  with pytest.raises(ValueError, match='max_position'):
    P.sample_positions('randomized', 1, 10, 9, np.random.default_rng(0))


def test_unknown_encoding_lists_the_valid_names():
  with pytest.raises(ValueError) as e:
    P.get_encoding('rotary')
  for name in P.REGISTRY:
    assert name in str(e.value)
