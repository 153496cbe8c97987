"""Each position encoding's defining formula, checked against numbers worked
out by hand from its paper (the working is in the comments), plus a few
property tests with hypothesis."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from lmx.model import attention as A
from lmx import positions as P
from lmx.errors import ConfigError
import attention_calls as AC


def _model_cfg(position, num_heads, d_model):
  """A minimal ``config.model`` for building one encoding on its own."""
  c = ml_collections.ConfigDict()
  c.position = position
  c.num_heads = num_heads
  c.d_model = d_model
  for name, encoding in P.REGISTRY.items():
    c[name] = encoding.default_config()
  return c


# --------------------------------------------------------------------------
# ALiBi (Press et al. 2022, Sec. 3 and their reference code).


def test_alibi_slopes_for_powers_of_two():
  # n = 8: start = ratio = 2^(-8/8) = 1/2 -> 1/2, 1/4, ..., 1/256.
  np.testing.assert_allclose(
      P.alibi_slopes(8),
      [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625])
  # n = 4: ratio 2^(-8/4) = 1/4 -> 1/4, 1/16, 1/64, 1/256.
  np.testing.assert_allclose(P.alibi_slopes(4),
                             [0.25, 0.0625, 0.015625, 0.00390625])
  # n = 1: 2^-8.
  np.testing.assert_allclose(P.alibi_slopes(1), [0.00390625])
  assert P.alibi_slopes(8).dtype == np.float32


def test_alibi_slopes_for_other_head_counts():
  # n = 6: the 4-head slopes 2^-2, 2^-4, 2^-6, 2^-8, then the 8-head slopes
  # 2^-1 .. 2^-8 taken every other from index 0 (2^-1, 2^-3, 2^-5, 2^-7),
  # first 6 - 4 = 2 of them: 2^-1, 2^-3.
  np.testing.assert_allclose(P.alibi_slopes(6),
                             [0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125])
  # n = 12: the 8-head slopes 2^-1 .. 2^-8, then the 16-head slopes
  # (ratio 2^(-8/16) = 2^-0.5: 2^-0.5, 2^-1, ..., 2^-8) every other from
  # index 0 (2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5, ...), first 12 - 8 = 4.
  # 2^-0.5 = 0.70710678, 2^-1.5 = 0.35355339, 2^-2.5 = 0.17677670,
  # 2^-3.5 = 0.08838835.
  np.testing.assert_allclose(
      P.alibi_slopes(12),
      [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625,
       0.70710678, 0.35355339, 0.17677670, 0.08838835], rtol=1e-6)


def test_alibi_slopes_reject_zero_heads():
  with pytest.raises(ValueError):
    P.alibi_slopes(0)


def test_alibi_bias_entries():
  # 2 heads: slopes 2^-4 = 1/16 and 2^-8 = 1/256. Positions with a gap.
  pos = jnp.array([[0, 1, 2, 5]])
  bias = P.alibi_bias(pos, pos, P.alibi_slopes(2))
  assert bias.shape == (1, 2, 4, 4) and bias.dtype == jnp.float32
  # Query at 5, key at 0: -(5 - 0)/16 = -0.3125 and -5/256 = -0.01953125.
  assert float(bias[0, 0, 3, 0]) == pytest.approx(-0.3125)
  assert float(bias[0, 1, 3, 0]) == pytest.approx(-0.01953125)
  # Query at 5, key at 1: -4/16 = -0.25.
  assert float(bias[0, 0, 3, 1]) == pytest.approx(-0.25)
  # Query at 2, key at 1: -1/256.
  assert float(bias[0, 1, 2, 1]) == pytest.approx(-0.00390625)
  # A token attending to itself: no penalty.
  assert float(bias[0, 0, 2, 2]) == 0.0


def test_alibi_module_uses_the_slopes():
  enc = P.ALiBi(_model_cfg('alibi', num_heads=4, d_model=16),
                rngs=nnx.Rngs(params=0))
  pos = jnp.array([[0, 3]])
  bias = enc.bias(pos, pos)
  # 4 heads: slopes 1/4, 1/16, 1/64, 1/256; distance 3 -> -3 m_h.
  np.testing.assert_allclose(bias[0, :, 1, 0],
                             [-0.75, -0.1875, -0.046875, -0.01171875])


# --------------------------------------------------------------------------
# T5 relative buckets (Raffel et al. 2020). Causal, 32 buckets, max distance
# 128: max_exact = 16; a distance n >= 16 goes to
#   16 + floor(log(n/16) / log(128/16) * 16) = 16 + floor(log2(n/16)/3 * 16),
# capped at 31. The argument is key_position - query_position = -n.


@pytest.mark.parametrize('distance,bucket', [
    (0, 0), (1, 1), (7, 7), (15, 15),  # exact buckets
    (16, 16),   # log2(1) = 0                         -> 16 + 0
    (20, 17),   # log2(1.25)/3*16 = 0.32193/3*16 = 1.717 -> 16 + 1
    (32, 21),   # log2(2)/3*16 = 5.333                -> 16 + 5
    (34, 21),   # log2(2.125)/3*16 = 1.08746/3*16 = 5.800 -> 16 + 5
    (35, 22),   # log2(2.1875)/3*16 = 1.12928/3*16 = 6.023 -> 16 + 6
    (64, 26),   # log2(4)/3*16 = 10.667               -> 16 + 10
    (100, 30),  # log2(6.25)/3*16 = 2.64386/3*16 = 14.10 -> 16 + 14
    (112, 30),  # log2(7)/3*16 = 2.80735/3*16 = 14.973  -> 16 + 14
    (113, 31),  # log2(7.0625)/3*16 = 2.82018/3*16 = 15.04 -> 16 + 15
    (127, 31),  # log2(7.9375)/3*16 = 2.98868/3*16 = 15.94 -> 16 + 15
    (128, 31),  # 16 + 16 = 32, capped at 31
    (1000, 31),
])
def test_t5_causal_bucket(distance, bucket):
  got = P.t5_relative_bucket(jnp.array(-distance), num_buckets=32,
                             max_distance=128)
  assert int(got) == bucket


def test_t5_causal_future_keys_go_to_bucket_zero():
  # key after query: key - query > 0, n = max(query - key, 0) = 0.
  got = P.t5_relative_bucket(jnp.array([1, 2, 17, 500]), 32, 128)
  assert got.tolist() == [0, 0, 0, 0]


def test_t5_bidirectional_bucket():
  # 16 buckets per direction, max_exact = 8; past keys (key - query < 0) in
  # 0..15, future keys in 16..31. Distance 24: 8 + floor(log(24/8) /
  # log(128/8) * 8) = 8 + floor(log2(3)/4 * 8) = 8 + floor(3.17) = 11.
  rel = jnp.array([0, -3, 3, -24, 24, -1000, 1000])
  got = P.t5_relative_bucket(rel, 32, 128, bidirectional=True)
  assert got.tolist() == [0, 3, 19, 11, 27, 15, 31]


def test_t5_module_looks_up_its_table():
  enc = P.T5Bias(_model_cfg('t5', num_heads=2, d_model=8),
                 rngs=nnx.Rngs(params=0))
  # Row b of the table holds 10b (head 0) and 10b + 1 (head 1).
  enc.table[...] = 10.0 * jnp.arange(32.0)[:, None] + jnp.array([0.0, 1.0])
  q = jnp.array([[0, 1, 40]])
  bias = enc.bias(q, q)
  assert bias.shape == (1, 2, 3, 3)
  # Query 40, key 0: distance 40 -> 16 + floor(log2(2.5)/3*16)
  # = 16 + floor(1.32193/3*16) = 16 + floor(7.05) = 23 -> 230, 231.
  assert bias[0, :, 2, 0].tolist() == [230.0, 231.0]
  # Query 1, key 0: distance 1 -> bucket 1 -> 10, 11.
  assert bias[0, :, 1, 0].tolist() == [10.0, 11.0]
  # Query 0, key 40 (future, masked later): bucket 0.
  assert bias[0, :, 0, 2].tolist() == [0.0, 1.0]


@settings(max_examples=40, deadline=None)
@given(num_buckets=st.sampled_from([4, 8, 16, 32, 64]),
       max_distance=st.integers(40, 2000),
       bidirectional=st.booleans())
def test_t5_bucket_is_monotone_and_in_range(num_buckets, max_distance,
                                            bidirectional):
  distance = jnp.arange(0, 3000)
  # Past keys, growing distance: buckets never decrease and stay in range.
  past = np.asarray(P.t5_relative_bucket(-distance, num_buckets, max_distance,
                                         bidirectional))
  assert past.min() >= 0 and past.max() < num_buckets
  assert np.all(np.diff(past) >= 0)
  assert past[0] == 0
  if bidirectional:
    future = np.asarray(P.t5_relative_bucket(distance, num_buckets,
                                             max_distance, bidirectional))
    assert future.min() >= 0 and future.max() < num_buckets
    assert np.all(np.diff(future[1:]) >= 0)
    # The two directions never share a bucket (except distance 0).
    assert not set(past[1:].tolist()) & set(future[1:].tolist())


# --------------------------------------------------------------------------
# RoPE (Su et al. 2021): w_i = theta^(-2i/K); pair (x_i, x_{i+K/2}) turned by
# the angle p * w_i.


def test_rope_inv_freq():
  # K = 4, theta = 10000: w_0 = 1, w_1 = 10000^(-2/4) = 0.01.
  np.testing.assert_allclose(P.rope_inv_freq(4, 10000.0), [1.0, 0.01],
                             rtol=1e-6)
  # K = 8, theta = 16: 16^0, 16^-0.25, 16^-0.5, 16^-0.75 = 1, 1/2, 1/4, 1/8.
  np.testing.assert_allclose(P.rope_inv_freq(8, 16.0),
                             [1.0, 0.5, 0.25, 0.125], rtol=1e-6)
  with pytest.raises(ValueError):
    P.rope_inv_freq(5)


def test_rope_rotation_by_hand():
  inv = P.rope_inv_freq(4)   # [1, 0.01]
  # x = e_0 at position 1: pair (x_0, x_2) = (1, 0) turned by 1 rad
  # -> (cos 1, sin 1) = (0.5403023, 0.8414710) in channels 0 and 2.
  x = jnp.array([1.0, 0.0, 0.0, 0.0]).reshape(1, 1, 1, 4)
  out = P.apply_rope(x, jnp.array([[1]]), inv).reshape(-1)
  np.testing.assert_allclose(out, [0.5403023, 0.0, 0.8414710, 0.0], atol=1e-6)
  # x = e_3 at position 100: pair (x_1, x_3) = (0, 1) turned by 100 * 0.01
  # = 1 rad -> (0*cos1 - 1*sin1, 1*cos1 + 0) = (-0.8414710, 0.5403023).
  x = jnp.array([0.0, 0.0, 0.0, 1.0]).reshape(1, 1, 1, 4)
  out = P.apply_rope(x, jnp.array([[100]]), inv).reshape(-1)
  np.testing.assert_allclose(out, [0.0, -0.8414710, 0.0, 0.5403023],
                             atol=1e-5)
  # Position 0 is the identity.
  x = jnp.array([0.3, -1.2, 2.0, 0.7]).reshape(1, 1, 1, 4)
  out = P.apply_rope(x, jnp.array([[0]]), inv).reshape(-1)
  np.testing.assert_allclose(out, [0.3, -1.2, 2.0, 0.7])


_QK = np.random.default_rng(0).normal(size=(2, 1, 1, 1, 16)).astype(np.float32)
_QK /= np.linalg.norm(_QK, axis=-1, keepdims=True)


def _rot(x, position, inv):
  return P.apply_rope(jnp.asarray(x), jnp.array([[position]]), inv).reshape(-1)


@settings(max_examples=40, deadline=None)
@given(p=st.integers(0, 2048), s=st.integers(0, 2048),
       shift=st.integers(0, 2048))
def test_rope_logit_depends_only_on_distance(p, s, shift):
  inv = P.rope_inv_freq(16)
  q, k = _QK
  a = float(jnp.dot(_rot(q, p, inv), _rot(k, s, inv)))
  b = float(jnp.dot(_rot(q, p + shift, inv), _rot(k, s + shift, inv)))
  # Unit vectors; float32 angles near 4096 carry ~5e-4 rad of rounding.
  assert a == pytest.approx(b, abs=3e-3)
  # Rotations preserve the norm (here 1).
  assert float(jnp.linalg.norm(_rot(q, p, inv))) == pytest.approx(1.0,
                                                                   rel=1e-5)


def test_rope_module_rotates_queries_and_keys():
  enc = P.RoPE(_model_cfg('rope', num_heads=1, d_model=4),
               rngs=nnx.Rngs(params=0))
  e0 = jnp.array([1.0, 0.0, 0.0, 0.0]).reshape(1, 1, 1, 4)
  q, k = enc.rotate(e0, e0, jnp.array([[1]]), jnp.array([[0]]))
  # q at position 1: (cos 1, 0, sin 1, 0); k at position 0: unchanged.
  np.testing.assert_allclose(q.reshape(-1), [0.5403023, 0, 0.8414710, 0],
                             atol=1e-6)
  np.testing.assert_allclose(k.reshape(-1), [1.0, 0, 0, 0])


# --------------------------------------------------------------------------
# xPos (Sun et al. 2023, Sec. 3.2): zeta_i = (2i/K + gamma) / (1 + gamma);
# query at n scaled by zeta^(n/scale_base), key at m by zeta^(-m/scale_base).


def test_xpos_zeta():
  # K = 4, gamma = 0.4: i = 0: 0.4/1.4 = 0.2857143; i = 1: (0.5 + 0.4)/1.4
  # = 0.9/1.4 = 0.6428571.
  np.testing.assert_allclose(P.xpos_zeta(4, 0.4), [0.2857143, 0.6428571],
                             rtol=1e-6)
  # K = 8: (0, .25, .5, .75) + .4, / 1.4 -> .2857143, .4642857, .6428571,
  # .8214286.
  np.testing.assert_allclose(P.xpos_zeta(8, 0.4),
                             [0.2857143, 0.4642857, 0.6428571, 0.8214286],
                             rtol=1e-6)


def test_xpos_scale():
  pos = jnp.array([0, 512, 1024, -512])
  scale = P.xpos_scale(pos, 4, gamma=0.4, scale_base=512.0)
  assert scale.shape == (4, 2)
  # Position 0: zeta^0 = 1.
  np.testing.assert_allclose(scale[0], [1.0, 1.0])
  # Position 512 = scale_base: zeta itself.
  np.testing.assert_allclose(scale[1], [0.2857143, 0.6428571], rtol=1e-6)
  # Position 1024: zeta^2 = 0.0816327, 0.4132653.
  np.testing.assert_allclose(scale[2], [0.0816327, 0.4132653], rtol=1e-5)
  # Position -512: 1/zeta = 1.4/0.4 = 3.5, 1.4/0.9 = 1.5555556.
  np.testing.assert_allclose(scale[3], [3.5, 1.5555556], rtol=1e-6)


def _xpos():
  return P.XPos(_model_cfg('xpos', num_heads=1, d_model=4),
                rngs=nnx.Rngs(params=0))


def test_xpos_logit_by_hand():
  # q = k = e_0, query at n = 600, key at m = 88 (n - m = 512). The rotations
  # give q' = zeta_0^(512/512) (cos 600, 0, sin 600, 0) and k' = (cos 88, 0,
  # sin 88, 0), so q'.k' = zeta_0 * cos(512) = 0.2857143 * cos(512).
  e0 = jnp.array([1.0, 0.0, 0.0, 0.0]).reshape(1, 1, 1, 4)
  q, k = _xpos().rotate(e0, e0, jnp.array([[600]]), jnp.array([[88]]))
  logit = float(jnp.sum(q * k))
  assert logit == pytest.approx(0.4 / 1.4 * math.cos(512.0), abs=1e-4)


def test_xpos_logits_are_shift_invariant():
  enc = _xpos()
  rng = np.random.default_rng(3)
  q = jnp.asarray(rng.normal(size=(1, 6, 1, 4)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 6, 1, 4)), jnp.float32)
  pos = jnp.array([[0, 3, 4, 9, 30, 31]])
  logits = lambda p: jnp.einsum('bthk,bshk->bts', *enc.rotate(q, k, p, p))
  base = logits(pos)
  for shift in (1, 17, 5000):
    np.testing.assert_allclose(logits(pos + shift), base, atol=1e-4,
                               rtol=1e-4)
  # ...and the decay is really there: the logit is not plain RoPE's.
  inv = P.rope_inv_freq(4)
  rope = jnp.einsum('bthk,bshk->bts', P.apply_rope(q, pos, inv),
                    P.apply_rope(k, pos, inv))
  assert float(jnp.abs(rope - base).max()) > 1e-2


# --------------------------------------------------------------------------
# KERPLE (Chi et al. 2022, Sec. 4): log kernel -r1 log(1 + r2 d), power kernel
# -a d^p.


def test_kerple_log_by_hand():
  # r1 = 2, r2 = 0.5, d = 3: -2 log(2.5) = -2 * 0.9162907 = -1.8325815.
  assert float(P.kerple_log(jnp.array(3.0), 2.0, 0.5)) == pytest.approx(
      -1.8325815, rel=1e-6)
  # d = 0: -r1 log 1 = 0.
  assert float(P.kerple_log(jnp.array(0.0), 2.0, 0.5)) == 0.0
  # r1 = 1, r2 = 1, d = e - 1: -log(e) = -1.
  assert float(P.kerple_log(jnp.array(math.e - 1), 1.0, 1.0)) == pytest.approx(
      -1.0, rel=1e-6)


def test_kerple_power_by_hand():
  # a = 0.5, p = 1.5, d = 4: -0.5 * 4^1.5 = -0.5 * 8 = -4.
  assert float(P.kerple_power(jnp.array(4.0), 0.5, 1.5)) == pytest.approx(
      -4.0, rel=1e-6)
  # a = 1, p = 0.5, d = 9: -3.
  assert float(P.kerple_power(jnp.array(9.0), 1.0, 0.5)) == pytest.approx(
      -3.0, rel=1e-6)
  # p = 2 (ALiBi-like squared), a = 0.25, d = 6: -9.
  assert float(P.kerple_power(jnp.array(6.0), 0.25, 2.0)) == pytest.approx(
      -9.0, rel=1e-6)
  # d = 0: 0 for any p.
  for p in (0.01, 0.5, 2.0):
    assert float(P.kerple_power(jnp.array(0.0), 1.0, p)) == 0.0


def test_kerple_power_gradient_in_p():
  grad_p = jax.grad(lambda p, d: P.kerple_power(d, 0.5, p))
  # d/dp (-a d^p) = -a d^p log d. At d = 4, a = 0.5, p = 1.5:
  # -0.5 * 8 * log 4 = -4 * 1.3862944 = -5.5451774.
  assert float(grad_p(1.5, jnp.array(4.0))) == pytest.approx(-5.5451774,
                                                             rel=1e-5)
  # At d = 0 the kernel is 0 for every p, so the gradient is 0, not nan.
  g0 = float(grad_p(1.5, jnp.array(0.0)))
  assert math.isfinite(g0) and g0 == 0.0


def _kerple(kernel):
  cfg = _model_cfg('kerple', num_heads=2, d_model=8)
  cfg.kerple.kernel = kernel
  return P.Kerple(cfg, rngs=nnx.Rngs(params=0))


def test_kerple_clamps_its_parameters():
  # eps = 0.01 by default. Power: a >= eps, eps <= p <= 2.
  enc = _kerple('power')
  enc.scale[...] = jnp.array([-1.0, 0.005])
  enc.shape[...] = jnp.array([3.0, -0.5])
  a, p = enc.kernel_parameters()
  np.testing.assert_allclose(a, [0.01, 0.01], rtol=1e-5)
  np.testing.assert_allclose(p, [2.0, 0.01], rtol=1e-5)
  # Values inside the bounds are untouched.
  enc.scale[...] = jnp.array([0.7, 1.9])
  enc.shape[...] = jnp.array([1.5, 0.02])
  a, p = enc.kernel_parameters()
  np.testing.assert_allclose(a, [0.7, 1.9])
  np.testing.assert_allclose(p, [1.5, 0.02])
  # Log: r1, r2 >= eps, no upper bound.
  enc = _kerple('log')
  enc.scale[...] = jnp.array([-1.0, 5.0])
  enc.shape[...] = jnp.array([3.0, -0.5])
  r1, r2 = enc.kernel_parameters()
  np.testing.assert_allclose(r1, [0.01, 5.0], rtol=1e-5)
  np.testing.assert_allclose(r2, [3.0, 0.01], rtol=1e-5)


def test_kerple_clamp_passes_gradients_through():
  # The module docstring: clamp forward, identity backward.
  enc = _kerple('power')
  enc.scale[...] = jnp.array([-1.0, 0.5])
  enc.shape[...] = jnp.array([3.0, 0.5])
  grads = nnx.grad(lambda m: jnp.sum(m.kernel_parameters()[0])
                   + jnp.sum(m.kernel_parameters()[1]))(enc)
  np.testing.assert_allclose(grads['scale'][...], [1.0, 1.0])
  np.testing.assert_allclose(grads['shape'][...], [1.0, 1.0])


def test_kerple_module_bias_by_hand():
  enc = _kerple('log')
  enc.scale[...] = jnp.array([2.0, 1.0])   # r1
  enc.shape[...] = jnp.array([0.5, 1.0])   # r2
  pos = jnp.array([[0, 3]])
  bias = enc.bias(pos, pos)
  assert bias.shape == (1, 2, 2, 2)
  # d = 3: head 0: -2 log(1 + 1.5) = -1.8325815; head 1: -log 4 = -1.3862944.
  np.testing.assert_allclose(bias[0, :, 1, 0], [-1.8325815, -1.3862944],
                             rtol=1e-6)
  np.testing.assert_allclose(bias[0, :, 1, 1], [0.0, 0.0])


def test_kerple_power_init_matches_the_paper_code():
  cfg = _model_cfg('kerple', num_heads=64, d_model=64)
  cfg.kerple.kernel = 'power'
  a, p = P.Kerple(cfg, rngs=nnx.Rngs(params=0)).kernel_parameters()
  # Paper code (chijames/KERPLE, megatron/mpu/layers.py, ParallelKerplePower):
  # exponent bias_p = 2 U(0, 1), scale bias_a = U(0, 1). With 64 heads some
  # p exceeds 1 except with chance 2^-64; a never exceeds 1.
  assert float(jnp.max(p)) > 1.0
  assert float(jnp.max(a)) <= 1.0


def test_kerple_log_init_matches_the_paper_code():
  # Paper code (ParallelKerpleLog): r1 = bias_p = 2 U(0, 1), r2 = bias_a =
  # U(0, 1). With 64 heads some r1 exceeds 1 except with chance 2^-64.
  cfg = _model_cfg('kerple', num_heads=64, d_model=64)
  r1, r2 = P.Kerple(cfg, rngs=nnx.Rngs(params=0)).kernel_parameters()
  assert 1.0 < float(jnp.max(r1)) <= 2.0
  assert float(jnp.max(r2)) <= 1.0


def test_kerple_rejects_an_unknown_kernel():
  with pytest.raises(ValueError, match='kernel'):
    _kerple('gaussian')


# --------------------------------------------------------------------------
# Sinusoidal (Vaswani et al. 2017, Sec. 3.5): PE(p, 2i) = sin(p/10000^(2i/d)),
# PE(p, 2i+1) = cos(p/10000^(2i/d)).


def test_sinusoidal_table_by_hand():
  # Position 0: sin 0 = 0, cos 0 = 1 in every pair.
  np.testing.assert_allclose(P.sinusoidal_table(jnp.array(0), 6),
                             [0, 1, 0, 1, 0, 1])
  # Position 1, d = 4: timescales 10000^0 = 1 and 10000^(2/4) = 100:
  # [sin 1, cos 1, sin 0.01, cos 0.01]
  # = [0.8414710, 0.5403023, 0.0099998, 0.99995].
  np.testing.assert_allclose(P.sinusoidal_table(jnp.array(1), 4),
                             [0.8414710, 0.5403023, 0.0099998333, 0.99995],
                             atol=1e-6)
  # Shape follows the positions.
  assert P.sinusoidal_table(jnp.zeros((2, 3), jnp.int32), 8).shape == (2, 3, 8)
  with pytest.raises(ValueError):
    P.sinusoidal_table(jnp.array(0), 5)


# --------------------------------------------------------------------------
# Position sampling (contiguous; randomized from Ruoss et al. 2023; shift).


def test_contiguous_positions_are_arange():
  pos = P.sample_positions('contiguous', 3, 5, 100, np.random.default_rng(0))
  assert pos.dtype == np.int32 and pos.shape == (3, 5)
  assert pos.tolist() == [[0, 1, 2, 3, 4]] * 3


def test_randomized_positions():
  pos = P.sample_positions('randomized', 8, 20, 50, np.random.default_rng(7))
  assert pos.dtype == np.int32 and pos.shape == (8, 20)
  assert np.all(np.diff(pos, axis=1) > 0)   # strictly increasing -> distinct
  assert pos.min() >= 0 and pos.max() < 50
  # Rows are drawn independently (8 equal rows would be a broken sampler).
  assert len({tuple(r) for r in pos.tolist()}) > 1
  # Same seed, same draw; another seed, another draw.
  again = P.sample_positions('randomized', 8, 20, 50, np.random.default_rng(7))
  other = P.sample_positions('randomized', 8, 20, 50, np.random.default_rng(8))
  np.testing.assert_array_equal(pos, again)
  assert not np.array_equal(pos, other)
  # length == max_position leaves no choice: arange.
  full = P.sample_positions('randomized', 2, 10, 10, np.random.default_rng(0))
  assert full.tolist() == [list(range(10))] * 2


def test_shift_positions():
  pos = P.sample_positions('shift', 16, 10, 30, np.random.default_rng(1))
  assert pos.dtype == np.int32 and pos.shape == (16, 10)
  assert np.all(np.diff(pos, axis=1) == 1)   # consecutive
  assert pos.min() >= 0 and pos.max() <= 29
  again = P.sample_positions('shift', 16, 10, 30, np.random.default_rng(1))
  np.testing.assert_array_equal(pos, again)


@pytest.mark.parametrize('kind', ['randomized', 'shift'])
def test_sampling_longer_than_max_position_raises(kind):
  with pytest.raises(ValueError, match='max_position'):
    P.sample_positions(kind, 2, 11, 10, np.random.default_rng(0))


def test_unknown_sampling_kind_raises():
  with pytest.raises(ValueError, match='randomized'):
    P.sample_positions('uniform', 2, 4, 10, np.random.default_rng(0))


@settings(max_examples=60, deadline=None)
@given(data=st.data(), batch=st.integers(1, 4), max_position=st.integers(1, 300),
       seed=st.integers(0, 2**32 - 1))
def test_sampled_positions_are_sorted_and_in_range(data, batch, max_position,
                                                   seed):
  length = data.draw(st.integers(1, max_position), label='length')
  rand = P.sample_positions('randomized', batch, length, max_position,
                            np.random.default_rng(seed))
  assert rand.shape == (batch, length)
  assert np.all(np.diff(rand, axis=1) > 0)
  assert rand.min() >= 0 and rand.max() < max_position
  shift = P.sample_positions('shift', batch, length, max_position,
                             np.random.default_rng(seed))
  assert np.all(np.diff(shift, axis=1) == 1)
  assert shift.min() >= 0 and shift.max() < max_position


# --------------------------------------------------------------------------
# The registry.


def test_get_encoding_names_the_valid_choices():
  assert P.get_encoding('alibi') is P.ALiBi
  with pytest.raises(ValueError) as info:
    P.get_encoding('nope-typo')
  message = str(info.value)
  assert 'nope-typo' in message
  for name in ('none', 'sinusoidal', 'learned', 't5', 'alibi', 'kerple', 'xpos',
               'rope'):
    assert name in message


# ------------------------------------------------- partial rotary and p-RoPE


def _rope_enc(**rope):
  cfg = _model_cfg('rope', num_heads=2, d_model=32)   # head 16, 8 pairs
  cfg.rope.update(rope)
  return P.RoPE(cfg, rngs=nnx.Rngs(params=0))


def _qk(seed=0, t=6):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=(1, t, 2, 16)), jnp.float32),
          jnp.asarray(rng.normal(size=(1, t, 2, 16)), jnp.float32))


def test_partial_rotary_turns_the_first_channels_with_their_own_frequencies():
  # partial 0.5 of a head of 16: R = 8 channels turn, with the frequencies of
  # a head of 8, 10000^(-2i/8) = [1, 0.1, 0.01, 0.001], paired i with i + 4;
  # channels 8..15 pass through.
  q, k = _qk()
  pos = jnp.array([[0, 1, 5, 9, 40, 300]])
  qr, kr = _rope_enc(partial=0.5).rotate(q, k, pos, pos)
  np.testing.assert_array_equal(qr[..., 8:], q[..., 8:])
  np.testing.assert_array_equal(kr[..., 8:], k[..., 8:])
  inv = jnp.array([1.0, 0.1, 0.01, 0.001])
  np.testing.assert_allclose(qr[..., :8], P.apply_rope(q[..., :8], pos, inv),
                             rtol=1e-6, atol=1e-6)
  # By hand for pair 0 at position 5: angle 5.
  c, s = math.cos(5.0), math.sin(5.0)
  x1, x2 = float(q[0, 2, 0, 0]), float(q[0, 2, 0, 4])
  assert float(qr[0, 2, 0, 0]) == pytest.approx(x1 * c - x2 * s, abs=1e-5)
  assert float(qr[0, 2, 0, 4]) == pytest.approx(x2 * c + x1 * s, abs=1e-5)


def test_p_rope_keeps_the_highest_frequencies():
  # p = 0.5 of 8 pairs keeps pairs 0..3 (the highest); pairs 4..7 (channels
  # 4..7 and 12..15) do not turn.
  assert P.kept_pairs(8, 0.5) == 4 and P.kept_pairs(8, 0.75) == 6
  assert P.kept_pairs(8, 0.0) == 0 and P.kept_pairs(8, 1.0) == 8
  inv = P.p_rope(P.rope_inv_freq(16), 0.5)
  np.testing.assert_array_equal(inv[4:], 0.0)
  np.testing.assert_array_equal(inv[:4], P.rope_inv_freq(16)[:4])
  q, k = _qk(1)
  pos = jnp.array([[0, 1, 5, 9, 40, 300]])
  qr, _ = _rope_enc(p=0.5).rotate(q, k, pos, pos)
  for lo, hi in ((4, 8), (12, 16)):
    np.testing.assert_array_equal(qr[..., lo:hi], q[..., lo:hi])
  assert float(jnp.abs(qr[..., :4] - q[..., :4]).max()) > 1e-2
  # p = 0 turns nothing: NoPE.
  qr, kr = _rope_enc(p=0.0).rotate(q, k, pos, pos)
  np.testing.assert_array_equal(qr, q)
  np.testing.assert_array_equal(kr, k)


@pytest.mark.parametrize('rope', [dict(partial=0.5), dict(p=0.5),
                                  dict(partial=0.5, p=0.5)])
def test_partial_and_p_rope_are_relative(rope):
  # Shifting every position leaves the logits unchanged.
  q, k = _qk(2)
  enc = _rope_enc(**rope)
  logits = lambda p: jnp.einsum('bthk,bshk->bhts', *enc.rotate(q, k, p, p))
  pos = jnp.array([[0, 3, 9, 40, 100, 200]])
  np.testing.assert_allclose(logits(pos), logits(pos + 57), atol=2e-4,
                             rtol=1e-5)


def test_partial_one_and_p_one_are_plain_rope_exactly():
  q, k = _qk(3)
  pos = jnp.array([[0, 3, 9, 40, 100, 200]])
  plain = _rope_enc().rotate(q, k, pos, pos)
  same = _rope_enc(partial=1.0, p=1.0).rotate(q, k, pos, pos)
  for a, b in zip(plain, same):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('rope,words', [
    (dict(partial=0.2), ['config.model.rope.partial', '= 3 channels', 'even']),
    (dict(partial=0.0), ['config.model.rope.partial']),
    (dict(partial=1.5), ['config.model.rope.partial']),
    (dict(p=-0.1), ['config.model.rope.p ']),
    (dict(p=1.5), ['config.model.rope.p ']),
])
def test_bad_partial_and_p_are_refused(rope, words):
  cfg = _model_cfg('rope', num_heads=2, d_model=32)
  cfg.rope.update(rope)
  with pytest.raises(ConfigError) as err:
    P.RoPE.check(cfg)
  for word in words:
    assert word in str(err.value), str(err.value)


@pytest.mark.parametrize('key', ['partial', 'p'])
def test_partial_or_p_on_another_encoding_is_refused(key):
  from lmx.config import validate as config_lib  # pylint: disable=g-import-not-at-top
  from lmx.config import defaults  # pylint: disable=g-import-not-at-top
  from lmx.errors import ConfigError
  c = defaults.get_config('size=tiny')
  c.model.position = 'alibi'
  c.model.rope[key] = 0.5
  with pytest.raises(ConfigError,
                     match=f"config.model.rope.{key}=0.5.*'alibi'"):
    config_lib.validate(c)


# ------------------------------------------------------------------- FIRE


def test_fire_inputs_by_hand():
  # c = 0.1, L = 8, eps 0. Query 10 (past L): normaliser psi(10) = log 2.
  #   d = 10: log(2) / log 2 = 1; d = 5: log 1.5 / log 2 = 0.5849625; d = 0: 0.
  # Query 4 (below L): normaliser psi(8) = log 1.8 = 0.5877867;
  #   d = 4: log 1.4 / log 1.8 = 0.3364722 / 0.5877867 = 0.5724394.
  got = P.fire_inputs(jnp.array([[10]]), jnp.array([[0, 5, 10]]), 0.1, 8.0,
                      eps=0.0)
  np.testing.assert_allclose(got, [[[1.0, 0.5849625, 0.0]]], rtol=1e-6)
  got = P.fire_inputs(jnp.array([[4]]), jnp.array([[0]]), 0.1, 8.0, eps=0.0)
  np.testing.assert_allclose(got, [[[0.5724394]]], rtol=1e-6)


def test_fire_mlp_by_hand():
  # w1 = [1, -1], b1 = [0, 0.5], w2 = [[2], [3]], b2 = [0.1]:
  #   x = 0.25: relu([0.25, 0.25]) . [2, 3] + 0.1 = 1.35;
  #   x = 1:    relu([1, -0.5])   . [2, 3] + 0.1 = 2.1.
  w1, b1 = jnp.array([1.0, -1.0]), jnp.array([0.0, 0.5])
  w2, b2 = jnp.array([[2.0], [3.0]]), jnp.array([0.1])
  np.testing.assert_allclose(P.fire_mlp(jnp.array([0.25, 1.0]), w1, b1, w2, b2),
                             [[1.35], [2.1]], rtol=1e-6)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 5000), min_size=1, max_size=20, unique=True),
       st.floats(0.01, 10.0), st.floats(1.0, 4096.0))
def test_fire_inputs_stay_in_the_unit_interval(positions, c, threshold):
  # Progressive interpolation (Sec. 3.2): for every causal pair the MLP reads
  # a value in [0, 1], whatever the length.
  pos = jnp.asarray(sorted(positions))[None]
  x = np.asarray(P.fire_inputs(pos, pos, c, threshold))[0]
  causal = np.tril(np.ones_like(x, dtype=bool))
  assert x[causal].min() >= 0.0 and x[causal].max() <= 1.0 + 1e-6


def test_fire_module_bias_is_the_mlp_of_its_inputs():
  cfg = _model_cfg('fire', num_heads=2, d_model=8)
  enc = P.FIRE(cfg, rngs=nnx.Rngs(params=0))
  assert enc.w2[...].shape == (32, 2)
  assert float(enc.c[...]) == pytest.approx(0.1)
  pos = jnp.array([[0, 3, 600, 700]])
  bias = enc.bias(pos, pos)
  assert bias.shape == (1, 2, 4, 4)
  x = P.fire_inputs(pos, pos, 0.1, 512.0)
  want = P.fire_mlp(x, enc.w1[...], enc.b1[...], enc.w2[...], enc.b2[...])
  np.testing.assert_allclose(bias, jnp.transpose(want, (0, 3, 1, 2)),
                             rtol=1e-6)


@pytest.mark.parametrize('field,value', [('mlp_width', 0), ('init_c', 0.0),
                                         ('init_threshold', -1.0),
                                         ('eps', 0.0)])
def test_fire_bad_settings_are_refused(field, value):
  from lmx.errors import ConfigError
  cfg = _model_cfg('fire', num_heads=2, d_model=8)
  cfg.fire[field] = value
  with pytest.raises(ConfigError, match=f'config.model.fire.{field}'):
    P.FIRE.check(cfg)


# --------------------------------------------------------------- Sandwich
# Chi et al. 2023, Sec. 5: head h of H adds
# (sum_{i=1}^{d'/2} cos((m - n) / 10000^(2i/d')) - d'/2) / (8h / H).


def test_sandwich_frequencies_and_scales_by_hand():
  # d' = 4: 10000^(-2/4) = 0.01 and 10000^(-4/4) = 0.0001 (i = 1, 2).
  np.testing.assert_allclose(P.sandwich_frequencies(4), [1e-2, 1e-4],
                             rtol=1e-12)
  # 4 heads: 8h/4 = 2, 4, 6, 8.
  np.testing.assert_allclose(P.sandwich_scales(4), [2.0, 4.0, 6.0, 8.0])
  with pytest.raises(ValueError):
    P.sandwich_scales(0)


def test_sandwich_bias_by_hand():
  # d' = 4, H = 2 (divisors 4 and 8). Distance 100:
  #   cos(100 * 0.01) + cos(100 * 1e-4) - 2
  #   = cos 1 + cos 0.01 - 2 = 0.5403023 + 0.99995 - 2 = -0.4597477;
  #   head 1: / 4 = -0.1149369, head 2: / 8 = -0.0574685.
  # Distance 0: 1 + 1 - 2 = 0. Distance 300 (cos 3 = -0.9899925,
  #   cos 0.03 = 0.99955003): -1.9904425 / 4 = -0.4976106.
  q = jnp.array([[300]])
  k = jnp.array([[0, 200, 300]])
  got = np.asarray(P.sandwich_bias(q, k, 4, 2))
  assert got.shape == (1, 2, 1, 3)
  np.testing.assert_allclose(got[0, :, 0, 1], [-0.1149369, -0.0574685],
                             atol=2e-7)
  np.testing.assert_allclose(got[0, :, 0, 2], [0.0, 0.0], atol=1e-7)
  np.testing.assert_allclose(got[0, 0, 0, 0], -0.4976106, atol=3e-7)


def test_sandwich_module_and_kernel_tile_give_the_bias():
  cfg = _model_cfg('sandwich', num_heads=2, d_model=8)
  cfg.sandwich.dim = 4
  enc = P.Sandwich(cfg, rngs=nnx.Rngs(params=0))
  pos = jnp.array([[0, 3, 100, 300]])
  want = P.sandwich_bias(pos, pos, 4, 2)
  np.testing.assert_allclose(enc.bias(pos, pos), want, rtol=0, atol=0)
  kb = enc.kernel_bias()
  for h in range(2):
    p = {name: value[h] for name, value in kb.params.items()}
    tile = kb.fn(p, pos[0][:, None], pos[0][None, :])
    np.testing.assert_allclose(tile, want[0, h], rtol=1e-6, atol=1e-7)
  # Real positions are taken as they are: distance 100.5 is not 100.
  real = enc.bias(jnp.array([[100.5]]), jnp.array([[0.0]]))
  assert float(jnp.abs(real - want[:, :, 2:3, 0:1]).max()) > 1e-4


@pytest.mark.parametrize('field,value', [('dim', 3), ('dim', 0),
                                         ('dim', 2048),
                                         ('max_timescale', 0.0)])
def test_sandwich_bad_settings_are_refused(field, value):
  from lmx.errors import ConfigError
  cfg = _model_cfg('sandwich', num_heads=2, d_model=8)
  cfg.sandwich[field] = value
  with pytest.raises(ConfigError, match=f'config.model.sandwich.{field}'):
    P.Sandwich.check(cfg)


# ---------------------------------------------------------------- KeyNorm
# Su 2023 (kexue.fm/archives/9859): logit(i, j) = q_i . k_j / ||k_j||, the
# keys' norm in place of sqrt(d); on top of RoPE by default.


def _keynorm(rope, head_dim=2, heads=1):
  cfg = _model_cfg('keynorm', num_heads=heads, d_model=heads * head_dim)
  cfg.keynorm.rope = rope
  return P.KeyNorm(cfg, rngs=nnx.Rngs(params=0))


def _model_logits(enc, q, k, q_pos, k_pos):
  """The logits the model computes: the encoding's q and k, scaled by
  1/sqrt(head_dim) (lmx.model.attention.scores)."""
  from lmx.model import attention
  qr, kr = enc.rotate(q, k, q_pos, k_pos)
  return AC.scores(attention.Branch(qr, kr, q_pos, k_pos), None, 0, None)


def test_keynorm_logits_by_hand():
  # q = (1, 2), k = (3, 4): q . k / ||k|| = (3 + 8) / 5 = 2.2; and
  # k = (0, -2): (0 - 4) / 2 = -2.
  q = jnp.array([[[[1.0, 2.0]]]])
  k = jnp.array([[[[3.0, 4.0]], [[0.0, -2.0]]]])
  np.testing.assert_allclose(P.keynorm_logits(q, k), [[[[2.2, -2.0]]]],
                             rtol=1e-6)
  # Through the encoding and the model's 1/sqrt(d) (no rotation): the same.
  pos = jnp.array([[0]]), jnp.array([[0, 1]])
  np.testing.assert_allclose(_model_logits(_keynorm(False), q, k, *pos),
                             [[[[2.2, -2.0]]]], rtol=1e-6)


def test_keynorm_with_rope_by_hand():
  # Head of 2 channels: one pair, frequency theta^0 = 1. q = (1, 0) at 0,
  # k = (3, 4) at 1 turned by 1 radian: (3 cos 1 - 4 sin 1, ...); the logit
  # is (3 cos 1 - 4 sin 1) / 5 = (1.6209069 - 3.3658839) / 5 = -0.3489954.
  q = jnp.array([[[[1.0, 0.0]]]])
  k = jnp.array([[[[3.0, 4.0]]]])
  got = _model_logits(_keynorm(True), q, k, jnp.array([[0]]),
                      jnp.array([[1]]))
  np.testing.assert_allclose(got, [[[[-0.3489954]]]], rtol=1e-5)


def test_keynorm_keys_have_the_norm_that_cancels_the_scale():
  # Every key leaves with norm sqrt(head_dim) (against the model's
  # 1/sqrt(head_dim)); queries keep theirs (a rotation keeps lengths).
  r = np.random.default_rng(0)
  q = jnp.asarray(r.normal(size=(2, 5, 2, 8)) * 3, jnp.float32)
  k = jnp.asarray(r.normal(size=(2, 5, 2, 8)) * 7, jnp.float32)
  pos = jnp.broadcast_to(jnp.arange(5), (2, 5))
  qr, kr = _keynorm(True, head_dim=8, heads=2).rotate(q, k, pos, pos)
  np.testing.assert_allclose(jnp.linalg.norm(kr, axis=-1), np.sqrt(8.0),
                             rtol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(qr, axis=-1),
                             jnp.linalg.norm(q, axis=-1), rtol=1e-5)


def test_keynorm_normalises_bfloat16_keys_in_float32():
  r = np.random.default_rng(1)
  k32 = jnp.asarray(r.normal(size=(1, 6, 2, 8)) * 50, jnp.float32)
  k16 = k32.astype(jnp.bfloat16)
  out = P.normalize_keys(k16, np.sqrt(8.0))
  assert out.dtype == jnp.bfloat16
  want = P.normalize_keys(k16.astype(jnp.float32), np.sqrt(8.0))
  # One rounding to bfloat16 (2^-9 relative) of the float32 result.
  np.testing.assert_allclose(out.astype(jnp.float32), want,
                             atol=2.0 ** -8 * np.sqrt(8.0), rtol=0)


def test_keynorm_keys_are_static():
  assert _keynorm(True).keys_static() and _keynorm(False).keys_static()


@pytest.mark.parametrize('fields,needle', [
    ({'keynorm.theta': 0.0}, 'config.model.keynorm.theta'),
    ({'keynorm.eps': -1.0}, 'config.model.keynorm.eps'),
])
def test_keynorm_bad_settings_are_refused(fields, needle):
  from lmx.errors import ConfigError
  cfg = _model_cfg('keynorm', num_heads=2, d_model=8)
  cfg.rerope = ml_collections.ConfigDict({'window': 0, 'leak': 0.0})
  for path, value in fields.items():
    section, key = path.split('.')
    cfg[section][key] = value
  with pytest.raises(ConfigError) as err:
    P.KeyNorm.check(cfg)
  assert needle in str(err.value), str(err.value)


def test_keynorm_rope_needs_an_even_head_dim_only_with_rope():
  from lmx.errors import ConfigError
  cfg = _model_cfg('keynorm', num_heads=1, d_model=3)
  cfg.rerope = ml_collections.ConfigDict({'window': 0, 'leak': 0.0})
  with pytest.raises(ConfigError, match='even'):
    P.KeyNorm.check(cfg)
  cfg.keynorm.rope = False
  P.KeyNorm.check(cfg)   # no pairs to turn


# ------------------------------------------------------------------- CAPE
# Likhomanenko et al. 2021, Sec. 3: x_i' = lambda (x_i + Delta + eps_i),
# Delta ~ U[-G, G], eps_i ~ U[-L/2, L/2], log lambda ~ U[-log S, log S].

CAPE = {'max_global_shift': 5.0, 'max_local_shift': 1.0,
        'max_global_scaling': 1.03}


def _cape(batch, length, seed, **settings):
  return P.sample_positions('cape', batch, length, 0,
                            np.random.default_rng(seed),
                            {'cape': {**CAPE, **settings}})


def test_cape_global_shift_alone():
  # L = 0, S = 1: x' - i is one constant per row, within [-G, G].
  pos = _cape(64, 10, 0, max_local_shift=0.0, max_global_scaling=1.0)
  assert pos.dtype == np.float32 and pos.shape == (64, 10)
  delta = pos - np.arange(10)
  np.testing.assert_allclose(delta, delta[:, :1].repeat(10, 1), atol=1e-5)
  assert np.abs(delta).max() <= 5.0
  # The rows spread over the range (64 uniform draws on [-5, 5]).
  assert delta.min() < -4.0 and delta.max() > 4.0


def test_cape_local_shift_alone():
  # G = 0, S = 1: x' - i = eps_i, per token, within [-L/2, L/2].
  pos = _cape(16, 50, 1, max_global_shift=0.0, max_global_scaling=1.0,
              max_local_shift=0.6)
  eps = pos - np.arange(50)
  assert np.abs(eps).max() <= 0.3 + 1e-6 and np.abs(eps).max() > 0.25
  assert np.std(eps[0]) > 0.05          # varies along the sequence
  # Width 0.6 < 1 keeps the order of neighbours.
  assert np.all(np.diff(pos, axis=1) > 0)


def test_cape_global_scaling_alone():
  # G = 0, L = 0: x' = lambda i, with lambda in [1/S, S] per row, and
  # log lambda uniform: as many rows shrink as stretch.
  pos = _cape(200, 8, 2, max_global_shift=0.0, max_local_shift=0.0,
              max_global_scaling=1.5)
  lam = pos[:, 1]
  np.testing.assert_allclose(pos, lam[:, None] * np.arange(8), rtol=1e-6)
  assert lam.min() >= 1 / 1.5 - 1e-6 and lam.max() <= 1.5 + 1e-6
  assert 60 < int(np.sum(lam < 1.0)) < 140


def test_cape_draws_are_reproducible_and_bounded():
  a, b, c = _cape(4, 20, 7), _cape(4, 20, 7), _cape(4, 20, 8)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  # Every position lies in [-S (G + L/2), S (T - 1 + G + L/2)]:
  # [-1.03 x 5.5, 1.03 x 24.5] = [-5.665, 25.235].
  many = _cape(256, 20, 3)
  assert many.min() >= -5.665 and many.max() <= 25.235
  from lmx.positions import sampling
  assert sampling.cape_bound(20, CAPE) == 27   # ceil(25.235) + 1
  assert sampling.cape_span(20, CAPE) == 22    # ceil(1.03 x 20) + 1
  # The spread of a row: lambda (T - 1 + eps_last - eps_first) <= 20.6.
  assert (many.max(1) - many.min(1)).max() <= 1.03 * 20
  with pytest.raises(ValueError, match='config.positions.cape'):
    P.sample_positions('cape', 1, 4, 0, np.random.default_rng(0))


def test_cape_is_evaluated_on_contiguous_integer_positions():
  from lmx.positions import sampling
  assert sampling.eval_kind('cape') == 'contiguous'
  pos = P.sample_positions(sampling.eval_kind('cape'), 2, 6, 0,
                           np.random.default_rng(0))
  assert pos.dtype == np.int32 and pos.tolist() == [list(range(6))] * 2


# ------------------------------------------------------------ Transformer-XL


def test_txl_relative_sinusoid_by_hand():
  # dim 4: w = (1, 10000^-1/2 = 0.01); sines first, then cosines.
  got = np.asarray(P.txl_relative_sinusoid(jnp.array([0.0, 2.0]), 4))
  want = [[0, 0, 1, 1],
          [np.sin(2.0), np.sin(0.02), np.cos(2.0), np.cos(0.02)]]
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_txl_position_scores_by_hand():
  # One head, one frequency (w = 1): a . R_d = a_s sin d + a_c cos d.
  a = jnp.array([[[[0.5, -2.0]]]])                 # [B=1, T=1, H=1, C=2]
  got = P.txl_position_scores(a, jnp.array([[7]]), jnp.array([[7, 6, 4]]))
  d = np.array([0.0, 1.0, 3.0])
  np.testing.assert_allclose(np.asarray(got)[0, 0, 0],
                             0.5 * np.sin(d) - 2.0 * np.cos(d), atol=1e-5)


@settings(deadline=None, max_examples=20)
@given(st.integers(0, 2000), st.integers(0, 10**6))
def test_txl_position_scores_equal_the_direct_form(offset, seed):
  # The angle-difference form against R_(i-j) built per pair, at shifted
  # positions (it depends on i - j alone).
  rng = np.random.default_rng(seed)
  a = jnp.asarray(rng.normal(size=(2, 5, 3, 8)), jnp.float32)
  q_pos = jnp.asarray(offset + np.sort(rng.choice(50, (2, 5))), jnp.int32)
  k_pos = jnp.asarray(offset + np.sort(rng.choice(50, (2, 6))), jnp.int32)
  r = P.txl_relative_sinusoid(q_pos[:, :, None] - k_pos[:, None, :], 8)
  want = np.einsum('bthc,btsc->bhts', a, r)
  got = P.txl_position_scores(a, q_pos, k_pos)
  np.testing.assert_allclose(got, want, atol=2e-3)


def test_txl_logits_are_the_papers_four_terms():
  # A^rel = q.k + q.W_R R_(i-j) + u.k_j + v.W_R R_(i-j), all / sqrt(d_head),
  # built here term by term from the paper's equation.
  cfg = _model_cfg('txl', num_heads=2, d_model=8)
  enc = P.TransformerXL(cfg, rngs=nnx.Rngs(params=0))
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(1, 5, 2, 4)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 5, 2, 4)), jnp.float32)
  pos = jnp.arange(5, dtype=jnp.int32)[None] + 3
  term = enc.content(None, q, k, pos)
  got = A.masked_scores(AC.spec(), AC.call(A.Branch(q, k, pos, pos),
                                           content=term),
                        jnp.ones((5, 5), bool))
  w_r, u, v = enc.w_r[...], enc.u[...], enc.v[...]
  r = P.txl_relative_sinusoid(pos[0][:, None] - pos[0][None, :], 8)   # i,j,c
  wr_r = np.einsum('chk,ijc->hijk', w_r, r)
  want = (np.einsum('ihk,jhk->hij', q[0], k[0])                        # (a)
          + np.einsum('ihk,hijk->hij', q[0], wr_r)                     # (b)
          + np.einsum('hk,jhk->hj', u, k[0])[:, None, :]               # (c)
          + np.einsum('hk,hijk->hij', v, wr_r)) / 2.0                  # (d)
  np.testing.assert_allclose(np.asarray(got)[0], want, atol=1e-4)


def test_txl_odd_dim_is_refused():
  cfg = _model_cfg('txl', num_heads=2, d_model=8)
  cfg.txl.dim = 5
  with pytest.raises(ConfigError, match='config.model.txl.dim'):
    P.TransformerXL.check(cfg)
