"""Property tests (hypothesis) for the position encodings, position sampling
and the data windows.

Formulas are checked against independent float64 NumPy references written
from the papers; shapes are fixed so that JAX compiles each op once and every
example after the first runs at eager speed. Causality (future tokens never
change earlier outputs) is a model property and lives in test_transformer.py.
"""

import functools
import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from lmx import positions as P
from lmx.positions import sampling
from lmx.data import corpus, windows

T = 6            # queries and keys per example (fixed: one compile per op)
HEADS = 2
HEAD_DIM = 8
FAST = settings(max_examples=25, deadline=None)

# Near positions reach T5's exact and log buckets, far ones its last bucket
# and the float32 rounding of RoPE's angles.
positions_T = st.lists(st.integers(0, 300), min_size=T, max_size=T) | st.lists(
    st.integers(0, 4095), min_size=T, max_size=T)
offsets = st.integers(1, 100_000)
seeds = st.integers(0, 2**32 - 1)


def _model_cfg(position):
  c = ml_collections.ConfigDict()
  c.position = position
  c.num_heads = HEADS
  c.d_model = HEADS * HEAD_DIM
  for name, encoding in P.REGISTRY.items():
    c[name] = encoding.default_config()
  return c


@functools.cache
def _encoding(position, kernel='log'):
  cfg = _model_cfg(position)
  cfg.kerple.kernel = kernel
  return P.get_encoding(position)(cfg, rngs=nnx.Rngs(params=0))


def _unit_qk(seed):
  """Unit-norm q and k, ``[1, T, HEADS, HEAD_DIM]`` each (float32)."""
  x = np.random.default_rng(seed).normal(size=(2, 1, T, HEADS, HEAD_DIM))
  x /= np.linalg.norm(x, axis=-1, keepdims=True)
  return x.astype(np.float32)


def _logits(enc, q, k, q_pos, k_pos):
  """What attention adds up before the softmax: ``[B, H, T, S]``."""
  qr, kr = enc.rotate(jnp.asarray(q), jnp.asarray(k), q_pos, k_pos)
  out = jnp.einsum('bthk,bshk->bhts', qr, kr)
  bias = enc.bias(q_pos, k_pos)
  return np.asarray(out if bias is None else out + bias, np.float64)


# --------------------------------------------------------------------------
# Every relative encoding: the logit of query i and key j depends on the
# positions only through i - j. Row 0 of the batch gets positions p, row 1
# gets p + offset; both rows must give the same logits.

# The encodings that say so (PositionEncoding.shift_invariant) and act
# through rotate or bias alone (a content term has tests of its own).
RELATIVE = [n for n, e in P.REGISTRY.items()
            if e.shift_invariant() and e.relative() and not e.has_content()]


@pytest.mark.parametrize('position', RELATIVE)
@FAST
@given(q_pos=positions_T, k_pos=positions_T, offset=offsets,
       seed=st.integers(0, 2**16))
def test_relative_logits_are_shift_invariant(position, q_pos, k_pos, offset,
                                             seed):
  if position == 'xpos':
    # xPos grows as zeta^(-(i - j)/512) for keys after the query: keep the
    # span where float32 logits are comparable at a fixed tolerance.
    q_pos = [p % 1024 for p in q_pos]
    k_pos = [p % 1024 for p in k_pos]
  enc = _encoding(position)
  q, k = _unit_qk(seed)
  q_pos = np.array([q_pos, q_pos], np.int32)
  k_pos = np.array([k_pos, k_pos], np.int32)
  q_pos[1] += offset
  k_pos[1] += offset
  logits = _logits(enc, np.concatenate([q, q]), np.concatenate([k, k]),
                   q_pos, k_pos)
  if enc.rotary:
    # float32 angles p * w_i carry a rounding error that grows with p.
    scale = max(1.0, float(np.abs(logits).max()))
    np.testing.assert_allclose(logits[1], logits[0], atol=2e-3 * scale)
  else:
    # Integer distances in, identical biases out.
    np.testing.assert_array_equal(logits[1], logits[0])


# --------------------------------------------------------------------------
# ALiBi (Press et al. 2022, Sec. 3): bias -m_h * (i - j) for i >= j; for n a
# power of two the slopes are 2^(-8h/n), h = 1..n (8 heads: 1/2 ... 1/256).


@settings(max_examples=12, deadline=None)
@given(log2_heads=st.integers(0, 7))
def test_alibi_slopes_are_the_papers_geometric_sequence(log2_heads):
  n = 2 ** log2_heads
  slopes = P.alibi_slopes(n).astype(np.float64)
  expected = [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]
  np.testing.assert_allclose(slopes, expected, rtol=1e-6)
  # First term and ratio are both 2^(-8/n); the last slope is always 2^-8.
  np.testing.assert_allclose(slopes[1:] / slopes[:-1], 2.0 ** (-8.0 / n),
                             rtol=1e-6)
  assert slopes[-1] == pytest.approx(2.0 ** -8)


@FAST
@given(n=st.integers(1, 100))
def test_alibi_slopes_for_any_head_count(n):
  # The paper's code: the 2^k slopes of the largest power of two 2^k <= n,
  # then every other slope of 2^(k+1) heads (starting with the first).
  slopes = P.alibi_slopes(n).astype(np.float64)
  k = 2 ** math.floor(math.log2(n))
  geometric = lambda m: [2.0 ** (-8.0 * h / m) for h in range(1, m + 1)]
  expected = geometric(k) + geometric(2 * k)[0::2][:n - k]
  np.testing.assert_allclose(slopes, expected, rtol=1e-6)
  assert len(set(slopes.tolist())) == n        # every head its own slope
  assert np.all((slopes > 0) & (slopes < 1))


@FAST
@given(q_pos=positions_T, k_pos=positions_T)
def test_alibi_bias_is_minus_slope_times_distance(q_pos, k_pos):
  enc = _encoding('alibi')
  q_pos = np.array([q_pos], np.int32)
  k_pos = np.array([k_pos], np.int32)
  bias = np.asarray(enc.bias(q_pos, k_pos), np.float64)[0]     # [H, T, S]
  dist = q_pos[0][:, None].astype(np.float64) - k_pos[0][None, :]
  slopes = np.asarray([2.0 ** (-8.0 * h / HEADS) for h in range(1, HEADS + 1)])
  expected = -slopes[:, None, None] * dist[None]
  causal = np.broadcast_to(dist >= 0, bias.shape)
  # Exactly -m_h (i - j) where causal attention reads it (slopes and
  # distances < 2^12 are exact in float32, so is their product).
  np.testing.assert_array_equal(bias[causal], expected[causal])
  # Future keys are masked anyway; ALiBi penalizes them by |i - j|.
  np.testing.assert_array_equal(bias[~causal], -np.abs(expected[~causal]))


# --------------------------------------------------------------------------
# KERPLE (Chi et al. 2022, Sec. 4): -r1 log(1 + r2 |i - j|) and -a |i - j|^p.


@pytest.mark.parametrize('kernel', ['log', 'power'])
@FAST
@given(q_pos=positions_T, k_pos=positions_T,
       first=st.lists(st.floats(0.01, 5.0), min_size=HEADS, max_size=HEADS),
       second=st.lists(st.floats(0.01, 2.0), min_size=HEADS, max_size=HEADS))
def test_kerple_bias_is_its_kernel_of_the_distance(kernel, q_pos, k_pos,
                                                   first, second):
  enc = _encoding('kerple', kernel)
  enc.scale[...] = jnp.asarray(first, jnp.float32)
  enc.shape[...] = jnp.asarray(second, jnp.float32)
  q_pos = np.array([q_pos], np.int32)
  k_pos = np.array([k_pos], np.int32)
  bias = np.asarray(enc.bias(q_pos, k_pos), np.float64)[0]
  d = np.abs(q_pos[0][:, None] - k_pos[0][None, :]).astype(np.float64)[None]
  a = np.float32(first).astype(np.float64)[:, None, None]
  b = np.float32(second).astype(np.float64)[:, None, None]
  expected = -a * (np.log1p(b * d) if kernel == 'log' else d ** b)
  np.testing.assert_allclose(bias, expected, rtol=2e-5, atol=1e-6)
  # A conditionally positive definite kernel as a penalty: never positive,
  # zero only at distance 0.
  assert np.all(bias <= 0)
  assert np.all((bias == 0) == (d == 0))


# --------------------------------------------------------------------------
# T5 (Raffel et al. 2020): reference bucket from the paper's Mesh TensorFlow
# code, in float64 Python; the table is looked up per (bucket, head).


def _t5_bucket_reference(relative_position, num_buckets=32, max_distance=128):
  n = max(-relative_position, 0)         # causal: only past keys count
  max_exact = num_buckets // 2
  if n < max_exact:
    return n, False
  value = (math.log(n / max_exact) / math.log(max_distance / max_exact)
           * (num_buckets - max_exact))
  near_integer = abs(value - round(value)) < 1e-4
  return min(max_exact + int(value), num_buckets - 1), near_integer


@FAST
@given(q_pos=positions_T, k_pos=positions_T, seed=st.integers(0, 2**16))
def test_t5_bias_is_the_table_row_of_the_bucket(q_pos, k_pos, seed):
  enc = _encoding('t5')
  table = np.random.default_rng(seed).normal(size=(32, HEADS))
  enc.table[...] = jnp.asarray(table, jnp.float32)
  q_arr = np.array([q_pos], np.int32)
  k_arr = np.array([k_pos], np.int32)
  bias = np.asarray(enc.bias(q_arr, k_arr))[0]                # [H, T, S]
  for t, i in enumerate(q_pos):
    for s, j in enumerate(k_pos):
      bucket, boundary = _t5_bucket_reference(j - i)
      if boundary:     # float32 rounding may pick either side of the edge
        continue
      np.testing.assert_array_equal(bias[:, t, s],
                                    table[bucket].astype(np.float32))


# --------------------------------------------------------------------------
# RoPE (Su et al. 2021) and xPos (Sun et al. 2023): the logit in closed form.
# For the pair (x_i, x_{i+K/2}) turned by p w_i (query) and s w_i (key):
#   <R(p w) q, R(s w) k> = (q1 k1 + q2 k2) cos((s - p) w)
#                          + (q2 k1 - q1 k2) sin((s - p) w),
# and xPos multiplies pair i by zeta_i^((p - s) / scale_base).


def _rotary_reference(q, k, q_pos, k_pos, theta=10000.0, zeta=None,
                      scale_base=512.0):
  """Float64 ``[H, T, S]`` logits from the closed form above."""
  half = HEAD_DIM // 2
  w = theta ** (-2.0 * np.arange(half) / HEAD_DIM)               # [K/2]
  q1, q2 = q[0, :, :, :half], q[0, :, :, half:]                  # [T, H, K/2]
  k1, k2 = k[0, :, :, :half], k[0, :, :, half:]
  rel = (np.asarray(k_pos, np.float64)[None, :]
         - np.asarray(q_pos, np.float64)[:, None])               # [T, S]
  angle = rel[:, :, None] * w                                    # [T, S, K/2]
  same = np.einsum('thi,shi->htsi', q1, k1) + np.einsum('thi,shi->htsi', q2, k2)
  cross = np.einsum('thi,shi->htsi', q2, k1) - np.einsum('thi,shi->htsi', q1, k2)
  per_pair = same * np.cos(angle)[None] + cross * np.sin(angle)[None]
  if zeta is not None:
    per_pair = per_pair * zeta ** (-rel[None, :, :, None] / scale_base)
  return per_pair.sum(-1)


@pytest.mark.parametrize('position', ['rope', 'xpos'])
@FAST
@given(q_pos=positions_T, k_pos=positions_T, seed=st.integers(0, 2**16))
def test_rotary_logits_match_the_closed_form(position, q_pos, k_pos, seed):
  enc = _encoding(position)
  zeta = None
  if position == 'xpos':
    q_pos = [p % 1024 for p in q_pos]
    k_pos = [p % 1024 for p in k_pos]
    zeta = (2.0 * np.arange(HEAD_DIM // 2) / HEAD_DIM + 0.4) / 1.4
  q, k = _unit_qk(seed)
  got = _logits(enc, q, k, np.array([q_pos], np.int32),
                np.array([k_pos], np.int32))[0]
  want = _rotary_reference(q.astype(np.float64), k.astype(np.float64), q_pos,
                           k_pos, zeta=zeta)
  scale = max(1.0, float(np.abs(want).max()))
  np.testing.assert_allclose(got, want, atol=2e-3 * scale)


@FAST
@given(pos=positions_T, seed=st.integers(0, 2**16))
def test_rope_preserves_norms(pos, seed):
  # A rotation: every channel pair keeps its length.
  enc = _encoding('rope')
  q, k = _unit_qk(seed)
  pos = np.array([pos], np.int32)
  qr, _ = enc.rotate(jnp.asarray(q), jnp.asarray(k), pos, pos)
  qr = np.asarray(qr, np.float64)
  half = HEAD_DIM // 2
  pair_norm = lambda x: np.hypot(x[..., :half], x[..., half:])
  np.testing.assert_allclose(pair_norm(qr), pair_norm(q.astype(np.float64)),
                             rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------
# Position sampling (lmx/positions/sampling.py; randomized from Ruoss et al.
# 2023). The integer kinds here; CAPE's real positions have their own tests
# (tests/test_positions.py).

INTEGER_KINDS = tuple(k for k in P.SAMPLING_KINDS
                      if k not in sampling.REAL_KINDS)


@FAST
@given(data=st.data(), kind=st.sampled_from(INTEGER_KINDS),
       batch=st.integers(1, 4), max_position=st.integers(1, 500), seed=seeds)
def test_sampled_positions_are_deterministic_sorted_and_in_range(
    data, kind, batch, max_position, seed):
  length = data.draw(st.integers(1, max_position), label='length')
  draw = lambda: P.sample_positions(kind, batch, length, max_position,
                                    np.random.default_rng(seed))
  pos = draw()
  assert pos.shape == (batch, length) and pos.dtype == np.int32
  np.testing.assert_array_equal(pos, draw())       # same seed, same draw
  assert np.all(np.diff(pos, axis=1) > 0)          # strictly increasing
  assert pos.min() >= 0 and pos.max() < max_position
  if kind == 'contiguous':
    assert pos.tolist() == [list(range(length))] * batch
  if kind == 'shift':
    assert np.all(np.diff(pos, axis=1) == 1)


@FAST
@given(max_position=st.integers(8, 64), seed=seeds)
def test_randomized_positions_reach_every_position(max_position, seed):
  # The point of randomized positions: training on 8 tokens at a time still
  # shows every position below max_position. Each position is missed by one
  # row with chance 1 - 8/max_position <= 7/8; by 400 rows with < 1e-23.
  pos = P.sample_positions('randomized', 400, 8, max_position,
                           np.random.default_rng(seed))
  assert set(pos.reshape(-1).tolist()) == set(range(max_position))


@FAST
@given(length=st.integers(1, 50), room=st.integers(0, 5), seed=seeds)
def test_shift_offsets_reach_both_ends(length, room, seed):
  # Offsets are uniform on [0, max_position - length]: both ends occur
  # (each missed by 300 rows with chance <= (5/6)^300 < 1e-23).
  max_position = length + room
  pos = P.sample_positions('shift', 300, length, max_position,
                           np.random.default_rng(seed))
  assert set(pos[:, 0].tolist()) == set(range(room + 1))
  assert pos.max() == max_position - 1


@FAST
@given(kind=st.sampled_from(['randomized', 'shift']), seed=seeds)
def test_sampling_depends_on_the_seed(kind, seed):
  # 64 rows of 16 of [0, 4096): two seeds agreeing is (practically) impossible.
  a = P.sample_positions(kind, 64, 16, 4096, np.random.default_rng(seed))
  b = P.sample_positions(kind, 64, 16, 4096, np.random.default_rng(seed + 1))
  assert not np.array_equal(a, b)


# --------------------------------------------------------------------------
# Training windows (lmx/data/windows.py).


def _stream(size, seed):
  """A stream of distinct ids, so a window's place in it is known."""
  return np.random.default_rng(seed).permutation(size).astype(np.int32)


@FAST
@given(data=st.data(), seq_len=st.integers(1, 64), batch=st.integers(1, 8),
       seed=seeds, step=st.integers(0, 10**9),
       sampling=st.sampled_from(INTEGER_KINDS))
def test_train_batch_windows_are_shifted_slices_of_the_stream(
    data, seq_len, batch, seed, step, sampling):
  size = data.draw(st.integers(seq_len + 2, 3000), label='stream size')
  stream = _stream(size, seed)
  where = np.argsort(stream)                   # id -> index in the stream
  kw = {'seed': seed, 'step': step, 'batch': batch, 'seq_len': seq_len,
        'sampling': sampling, 'max_position': 4 * seq_len}
  b = windows.train_batch(stream, **kw)
  for key in ('inputs', 'targets', 'positions'):
    assert b[key].shape == (batch, seq_len) and b[key].dtype == np.int32
    np.testing.assert_array_equal(b[key], windows.train_batch(stream, **kw)[key])
  starts = where[b['inputs'][:, 0]]
  span = starts[:, None] + np.arange(seq_len + 1)[None, :]
  assert span.min() >= 0 and span.max() < size    # inside the stream
  # Inputs are stream[s : s + T] and targets stream[s + 1 : s + T + 1].
  np.testing.assert_array_equal(b['inputs'], stream[span[:, :-1]])
  np.testing.assert_array_equal(b['targets'], stream[span[:, 1:]])
  np.testing.assert_array_equal(b['inputs'][:, 1:], b['targets'][:, :-1])
  assert b['positions'].min() >= 0 and b['positions'].max() < 4 * seq_len


@FAST
@given(seq_len=st.integers(1, 64), batch=st.integers(1, 4), seed=seeds,
       first_step=st.integers(0, 10**9), extra=st.integers(0, 2000))
def test_train_batches_differ_across_steps_and_seeds(seq_len, batch, seed,
                                                     first_step, extra):
  # >= 1000 possible starts: two steps share a batch with chance <= 1e-3, so
  # 16 steps give at least 12 distinct batches except with chance ~1e-5.
  stream = _stream(seq_len + 1001 + extra, 0)
  kw = {'batch': batch, 'seq_len': seq_len, 'sampling': 'contiguous',
        'max_position': seq_len}
  batches = {windows.train_batch(stream, seed=seed, step=s, **kw)
             ['inputs'].tobytes()
             for s in range(first_step, first_step + 16)}
  assert len(batches) >= 12
  other_seed = {windows.train_batch(stream, seed=seed + 1, step=s, **kw)
                ['inputs'].tobytes()
                for s in range(first_step, first_step + 16)}
  assert len(batches & other_seed) <= 4


@FAST
@given(data=st.data(), seq_len=st.integers(1, 256), seed=seeds)
def test_too_short_training_stream_is_a_data_error(data, seq_len, seed):
  size = data.draw(st.integers(0, seq_len + 1), label='stream size')
  with pytest.raises(corpus.DataError) as info:
    windows.train_batch(_stream(size, seed), seed=seed, step=0, batch=2,
                        seq_len=seq_len, sampling='contiguous',
                        max_position=seq_len)
  message = str(info.value)
  assert f'has {size} tokens' in message
  assert f'{seq_len + 2}' in message and 'config.train.seq_len' in message


# --------------------------------------------------------------------------
# Evaluation windows.


@settings(max_examples=40, deadline=None)
@given(size=st.integers(0, 3000), length=st.integers(1, 300),
       tokens=st.integers(1, 4000), seed=seeds)
def test_eval_windows_tile_the_stream_from_offset_zero(size, length, tokens,
                                                       seed):
  stream = _stream(size, seed)
  n = windows.num_eval_windows(size, length, tokens)
  if n < 1:
    with pytest.raises(corpus.DataError) as info:
      windows.eval_windows(stream, length, tokens)
    assert f'has {size} tokens' in str(info.value)
    assert f'window of {length}' in str(info.value)
    # Really too short: one window needs length + 1 tokens (and budget).
    assert size < length + 1 or tokens < length
    return
  x, y = windows.eval_windows(stream, length, tokens)
  assert x.shape == y.shape == (n, length)
  assert x.dtype == y.dtype == np.int32
  # Non-overlapping, consecutive, from offset 0; targets one token later.
  np.testing.assert_array_equal(x.reshape(-1), stream[:n * length])
  np.testing.assert_array_equal(y.reshape(-1), stream[1:n * length + 1])
  # As many windows as the token budget and the stream allow, and no more.
  assert n * length <= tokens and n * length + 1 <= size
  assert (n + 1) * length > tokens or (n + 1) * length + 1 > size


@FAST
@given(length=st.integers(2, 40), room=st.integers(0, 60), seed=seeds)
def test_pose_positions_are_two_chunks_with_a_skip(length, room, seed):
  # PoSE as its released code draws them: chunk 1 at 0 .. l - 1 with
  # 1 <= l <= (T + 1) // 2, chunk 2 consecutive after one skip u in
  # [0, max_position - T].
  max_position = length + room
  pos = P.sample_positions('pose', 200, length, max_position,
                           np.random.default_rng(seed))
  assert np.all(pos[:, 0] == 0) and pos.max() < max_position
  steps = np.diff(pos, axis=1)
  for d in steps:
    jumps = np.flatnonzero(d != 1)
    assert len(jumps) <= 1
    first = int(jumps[0]) + 1 if len(jumps) else None
    if first is not None:
      assert 1 <= first <= (length + 1) // 2
      assert 1 < d[jumps[0]] <= room + 1
  # The last position is T - 1 + u: with a small room every skip occurs
  # (each value missed by 200 rows with chance <= (5/6)^200 < 1e-15).
  last = set(pos[:, -1].tolist())
  assert min(last) >= length - 1
  if room <= 5:
    assert last == set(range(length - 1, max_position))


@FAST
@given(length=st.integers(4, 40), room=st.integers(0, 60),
       chunks=st.integers(1, 4), seed=seeds)
def test_pose_n_chunks(length, room, chunks, seed):
  # The paper's N-chunk form: at most N - 1 skips, non-decreasing, all
  # positions below max_position, the first at 0.
  from lmx.positions import sampling
  pos = sampling.pose_positions(
      50, length, length + room, np.random.default_rng(seed), chunks)
  assert np.all(pos[:, 0] == 0) and pos.max() < length + room
  d = np.diff(pos, axis=1)
  assert np.all(d >= 1) and np.all((d != 1).sum(axis=1) <= chunks - 1)


def test_pose_evaluates_with_contiguous_positions():
  from configs import base as base_cfg
  from lmx.config import validate as config_lib
  c = base_cfg.get_config('size=tiny')
  c.positions.train = 'pose'
  c.positions.max_position = 256
  config_lib.validate(c)
  assert config_lib.resolve_eval_sampling(c) == 'contiguous'
  c.positions.eval = 'shift'
  assert config_lib.resolve_eval_sampling(c) == 'shift'
