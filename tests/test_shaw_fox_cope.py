"""The content-term encodings (Shaw et al. 2018, FoX, CoPE): their math
against numbers worked out by hand (the working is in the comments), each
module's term against a direct computation from the paper's formula, and
their bad settings. The model-level properties (causality, shift
invariance), chunked == dense, decoding == full pass and training are the
generic suites' (tests/test_model.py, test_attention.py, test_decoding.py,
test_train.py), which take every registered encoding."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from lmx import positions as P
from lmx.errors import ConfigError
from lmx.positions.base import Tile
from lmx.positions import far as F
import attention_calls as AC
from helpers import decode_steps


def _model_cfg(position, num_heads=2, d_model=8, **fields):
  c = ml_collections.ConfigDict()
  c.position = position
  c.num_heads = num_heads
  c.d_model = d_model
  c.attention = 'dense'
  for name, encoding in P.REGISTRY.items():
    c[name] = encoding.default_config()
  for path, value in fields.items():
    section, key = path.split('__')
    c[section][key] = value
  return c


def _qk(b, t, h, k, seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(b, t, h, k)), jnp.float32)
  kk = jnp.asarray(rng.normal(size=(b, t, h, k)), jnp.float32)
  return q, kk


def _tile(term, q, k, pos, k_idx=None):
  """The whole sequence as one tile (what the dense backend passes)."""
  t = q.shape[1]
  logits = jnp.einsum('bthk,bshk->bhts', q, k) * q.shape[-1] ** -0.5
  visible = jnp.tril(jnp.ones((t, t), bool))
  idx = jnp.arange(t, dtype=jnp.int32) if k_idx is None else k_idx
  return Tile(q, k, pos, pos, term.q_side, term.k_side, logits, visible, idx)


# ------------------------------------------------------------------- Shaw


def test_shaw_distances_clip_at_k_and_at_zero():
  # Query at 5, keys at 0 3 4 5 7, k = 2: i - j = 5 2 1 0 -2 -> 2 2 1 0 0
  # (the future key, masked anyway, reads row 0).
  got = P.shaw_distances(jnp.array([[5]]), jnp.array([[0, 3, 4, 5, 7]]), 2)
  np.testing.assert_array_equal(got, [[[2, 2, 1, 0, 0]]])


def test_shaw_query_table_and_scores_by_hand():
  # K = 4, q = (1, 0, 2, 0); a0 = (1, 1, 1, 1), a1 = (0, 0, 1, 0),
  # a2 = (-1, 0, 0, 3): q.a = 3, 2, -1, divided by sqrt(4) = 2:
  # 1.5, 1.0, -0.5.
  q = jnp.array([1.0, 0.0, 2.0, 0.0]).reshape(1, 1, 1, 4)
  table = jnp.array([[1.0, 1, 1, 1], [0, 0, 1, 0], [-1, 0, 0, 3]])
  qt = P.shaw_query_table(q, table)
  np.testing.assert_allclose(qt, [[[[1.5, 1.0, -0.5]]]], rtol=1e-6)
  # Query at 5, keys at 0 3 4 5: clipped distances 2 2 1 0.
  got = P.shaw_scores(qt, jnp.array([[5]]), jnp.array([[0, 3, 4, 5]]))
  np.testing.assert_allclose(got, [[[[-0.5, -0.5, 1.0, 1.5]]]], rtol=1e-6)


def test_shaw_term_is_eq4_with_the_embeddings_added_to_the_keys():
  # Eq. 4 directly: e_ij = q_i (k_j + a^K_ij)^T / sqrt(d), a^K_ij the row of
  # clip(i - j, 0, k), built as a [T, S, K] array; minus q k^T / sqrt(d).
  cfg = _model_cfg('shaw', num_heads=2, d_model=16, shaw__max_distance=3)
  enc = P.Shaw(cfg, rngs=nnx.Rngs(params=0))
  assert enc.table.shape == (4, 8)
  assert enc.value_table is None   # the value embeddings are off by default
  q, k = _qk(2, 9, 2, 8)
  pos = jnp.asarray([[0, 1, 2, 4, 5, 9, 10, 11, 20],
                     [3, 4, 5, 6, 7, 8, 9, 10, 11]], jnp.int32)
  term = enc.content(None, q, k, pos)
  assert term.tiled
  got = term.fn(_tile(term, q, k, pos))
  table = np.asarray(enc.table[...])
  d = np.clip(np.asarray(pos)[:, :, None] - np.asarray(pos)[:, None, :], 0, 3)
  a_BxTxSxK = table[d]
  keys_BxTxSxHxK = np.asarray(k)[:, None] + a_BxTxSxK[:, :, :, None]
  full = np.einsum('bthk,btshk->bhts', np.asarray(q), keys_BxTxSxHxK) / (
      math.sqrt(8))
  plain = np.einsum('bthk,bshk->bhts', np.asarray(q), np.asarray(k)) / (
      math.sqrt(8))
  np.testing.assert_allclose(got, full - plain, atol=1e-5)


def test_shaw_term_depends_only_on_the_distance():
  cfg = _model_cfg('shaw')
  enc = P.Shaw(cfg, rngs=nnx.Rngs(params=1))
  q, k = _qk(1, 6, 2, 4)
  pos = jnp.asarray([[0, 2, 3, 7, 8, 30]], jnp.int32)
  term = enc.content(None, q, k, pos)
  a = term.fn(_tile(term, q, k, pos))
  b = term.fn(_tile(term, q, k, pos + 1000))
  np.testing.assert_array_equal(a, b)
  # Distances 0..16 have rows of their own: moving one key changes its term.
  moved = pos.at[0, 2].set(4)
  c = term.fn(_tile(term, q, k, moved))
  assert float(jnp.abs(c - a)[..., 2].max()) > 1e-4


def test_shaw_weight_sums_and_values_by_hand():
  # Query at 5, keys at 0 3 4 5, k = 2: clipped distances 2 2 1 0. Weights
  # .1 .2 .3 .4: per distance 0, 1, 2: .4, .3, .1 + .2 = .3. Rows a^V_0 =
  # (1, 0), a^V_1 = (0, 2), a^V_2 = (-1, 1): .4 (1, 0) + .3 (0, 2) + .3 (-1,
  # 1) = (.1, .9).
  p = jnp.array([0.1, 0.2, 0.3, 0.4]).reshape(1, 1, 1, 4)
  sums = P.shaw_weight_sums(p, jnp.array([[5]]), jnp.array([[0, 3, 4, 5]]), 2)
  np.testing.assert_allclose(sums, [[[[0.4, 0.3, 0.3]]]], rtol=1e-6)
  table = jnp.array([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]])
  np.testing.assert_allclose(P.shaw_values(sums, table), [[[[0.1, 0.9]]]],
                             rtol=1e-6)


def _shaw_values_layer(t=11, seed=0, max_distance=3):
  cfg = _model_cfg('shaw', num_heads=2, d_model=16,
                   shaw__value_embeddings=True,
                   shaw__max_distance=max_distance)
  P.Shaw.check(cfg)
  enc = P.Shaw(cfg, rngs=nnx.Rngs(params=seed))
  rng = np.random.default_rng(seed)
  q, k = _qk(2, t, 2, 8, seed)
  v = jnp.asarray(rng.normal(size=(2, t, 2, 8)), jnp.float32)
  pos = jnp.asarray(np.stack([np.sort(rng.choice(3 * t, t, replace=False))
                              for _ in range(2)]), jnp.int32)
  return enc, q, k, v, pos


def test_shaw_values_are_eq3_in_dense_and_chunked():
  # Eq. 3 and 4 directly, with [T, S, K] arrays of embeddings:
  # e_ij = q_i (k_j + a^K_ij) / sqrt(d), alpha = causal softmax of e,
  # z_i = sum_j alpha_ij (v_j + a^V_ij).
  from lmx.model import attention as A
  enc, q, k, v, pos = _shaw_values_layer()
  d = np.clip(np.asarray(pos)[:, :, None] - np.asarray(pos)[:, None, :], 0, 3)
  a_k = np.asarray(enc.table[...])[d]
  a_v = np.asarray(enc.value_table[...])[d]
  qn, kn, vn = (np.asarray(x, np.float64) for x in (q, k, v))
  e = np.einsum('bthk,btshk->bhts', qn, kn[:, None] + a_k[:, :, :, None])
  e = e / math.sqrt(8) + np.where(np.tril(np.ones((11, 11))), 0, -np.inf)
  alpha = np.exp(e - e.max(-1, keepdims=True))
  alpha /= alpha.sum(-1, keepdims=True)
  want = np.einsum('bhts,btshk->bthk', alpha, vn[:, None] + a_v[:, :, :, None])
  near = A.Branch(q, k, pos, pos)
  for backend in ('dense', 'chunked'):
    got = AC.run(backend, near, v, block=4,
                 content=enc.content(None, q, k, pos))
    np.testing.assert_allclose(got, want, atol=2e-5, err_msg=backend)


@pytest.mark.parametrize('window', [0, 5])
def test_shaw_values_chunked_equals_dense_with_every_gradient(window):
  # Odd length, tiles of 4; window 5: a distance clamp (ReRoPE's), whose
  # far pairs take the value row of the clamped distance.
  from lmx.model import attention as A
  enc, q, k, v, pos = _shaw_values_layer(max_distance=6, seed=1)
  graphdef, state = nnx.split(enc)
  clamp = F.Clamp(window) if window else None
  cot = jnp.asarray(np.random.default_rng(3).normal(size=q.shape),
                    jnp.float32)

  def loss(state, q, k, v, backend):
    e = nnx.merge(graphdef, state)
    near = A.Branch(q, k, pos, pos)
    far = None
    if clamp is not None:
      fq, fk = clamp.far_positions(pos, pos)
      far = A.Branch(q, k, fq, fk)
    out = AC.run(backend, near, v, block=4, far=far, window=window,
                 content=e.content(None, q, k, pos))
    return jnp.sum(out * cot)

  dense = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(
      state, q, k, v, 'dense')
  chunked = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(
      state, q, k, v, 'chunked')
  np.testing.assert_allclose(chunked[0], dense[0], atol=1e-4, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(chunked[1]), jax.tree.leaves(dense[1])):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
  # The value table is learned: its gradient is not zero.
  assert float(jnp.abs(dense[1][0]['value_table'][...]).max()) > 1e-3


@pytest.mark.parametrize('value', [0, -1])
def test_shaw_bad_max_distance_is_refused(value):
  cfg = _model_cfg('shaw', shaw__max_distance=value)
  with pytest.raises(ConfigError, match='config.model.shaw.max_distance'):
    P.Shaw.check(cfg)


def test_shaw_values_on_another_encoding_is_refused():
  from configs import base
  from lmx.config import validate as config_lib
  c = base.get_config('size=tiny')
  c.model.position = 'alibi'
  c.model.shaw.value_embeddings = True
  with pytest.raises(ConfigError,
                     match="shaw.value_embeddings=True.*'alibi'"):
    config_lib.validate(c)


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
  cfg = _model_cfg('fox', num_heads=2, d_model=8)
  enc = P.FoX(cfg, rngs=nnx.Rngs(params=0))
  assert enc.gate_w.shape == (8, 2) and enc.gate_b.shape == (2,)
  np.testing.assert_array_equal(enc.gate_b[...], [0.0, 0.0])
  # Initialised as the authors': N(0, 0.02) weights.
  assert 0.005 < float(jnp.std(enc.gate_w[...])) < 0.05
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(1, 5, 8)), jnp.float32)
  q, k = _qk(1, 5, 2, 4)
  pos = jnp.arange(5, dtype=jnp.int32)[None]
  term = enc.content(x, q, k, pos)
  assert term.tiled
  got = term.fn(_tile(term, q, k, pos))
  z = np.asarray(x) @ np.asarray(enc.gate_w[...])
  log_f = np.log(1 / (1 + np.exp(-z)))
  f_cum = np.cumsum(log_f, axis=1)
  want = np.transpose(f_cum[:, :, None] - f_cum[:, None, :], (0, 3, 1, 2))
  np.testing.assert_allclose(got, want, atol=1e-6)
  moved = term.fn(_tile(term, q, k, pos * 3 + 40))
  np.testing.assert_array_equal(moved, got)


@pytest.mark.parametrize('field,value', [('init_std', -0.1),
                                         ('bias_init', float('nan')),
                                         ('bias_init', float('inf'))])
def test_fox_bad_settings_are_refused(field, value):
  cfg = _model_cfg('fox', **{f'fox__{field}': value})
  with pytest.raises(ConfigError, match=f'config.model.fox.{field}'):
    P.FoX.check(cfg)


# ------------------------------------------------------------------- CoPE


def test_cope_positions_count_the_gates_back_to_each_key():
  # One query seeing 3 of 4 keys, logits 0, ln 3, 0, 5 -> gates 1/2, 3/4,
  # 1/2 and 0 (the masked key). p_j = sum of the gates from j on:
  # 1.75, 1.25, 0.5, 0. npos_max = 2 clamps at 1: 1, 1, 0.5, 0.
  logits = jnp.array([0.0, math.log(3.0), 0.0, 5.0]).reshape(1, 1, 1, 4)
  visible = jnp.array([[True, True, True, False]])
  idx = jnp.arange(4)
  np.testing.assert_allclose(P.cope_positions(logits, visible, idx, 10),
                             [[[[1.75, 1.25, 0.5, 0.0]]]], rtol=1e-6)
  np.testing.assert_allclose(P.cope_positions(logits, visible, idx, 2),
                             [[[[1.0, 1.0, 0.5, 0.0]]]], rtol=1e-6)


def test_cope_positions_follow_token_order_not_slot_order():
  # A ring cache: slot s holds token k_idx[s] = 2, 0, 3, 1 (one empty
  # slot would be -1). The same keys as above in these slots give the
  # same counts, in slot order.
  logits = jnp.array([0.0, math.log(3.0), 0.0, 5.0])
  visible = jnp.array([True, True, True, False])
  k_idx = jnp.array([2, 0, 3, 1])
  got = P.cope_positions(logits[k_idx].reshape(1, 1, 1, 4),
                         visible[k_idx][None], k_idx, 10)
  np.testing.assert_allclose(got[0, 0, 0],
                             np.array([1.75, 1.25, 0.5, 0.0])[k_idx],
                             rtol=1e-6)


def test_cope_interpolation_by_hand():
  # z = q.e = 10, 20, 40 at positions 0, 1, 2. p = 0, 0.25, 1.5, 2:
  # 10; 0.75*10 + 0.25*20 = 12.5; 0.5*20 + 0.5*40 = 30; 40.
  z = jnp.array([10.0, 20.0, 40.0]).reshape(1, 1, 1, 3)
  p = jnp.array([0.0, 0.25, 1.5, 2.0]).reshape(1, 1, 1, 4)
  np.testing.assert_allclose(P.cope_interpolate(z, p),
                             [[[[10.0, 12.5, 30.0, 40.0]]]], rtol=1e-6)


def test_cope_gradient_reaches_the_gates_by_hand():
  # z = 10, 20, 40; one query sees keys 0 and 1 with logits ln 3, 0: gates
  # 3/4, 1/2, so p = 1.25, 0.5 and the term is 0.75*20 + 0.25*40 = 25,
  # 0.5*10 + 0.5*20 = 15. d term_j / d p_j = z[ceil] - z[floor] = 20, 10,
  # and d p_j / d logit_t = g_t (1 - g_t) for t >= j (3/16, 1/4):
  # d term_0 = (20 * 3/16, 20 * 1/4) = (3.75, 5); d term_1 = (0, 10 / 4).
  z = jnp.array([10.0, 20.0, 40.0]).reshape(1, 1, 1, 3)
  visible = jnp.array([[True, True]])

  def term(logits):
    p = P.cope_positions(logits.reshape(1, 1, 1, 2), visible, jnp.arange(2), 3)
    return P.cope_interpolate(z, p)[0, 0, 0]

  logits = jnp.array([math.log(3.0), 0.0])
  np.testing.assert_allclose(term(logits), [25.0, 15.0], rtol=1e-6)
  np.testing.assert_allclose(jax.jacobian(term)(logits),
                             [[3.75, 5.0], [0.0, 2.5]], rtol=1e-5)


def test_cope_query_table_by_hand():
  # K = 4, q = (2, 0, 0, 0); e0 = 0, e1 = (1, 0, 0, 0), e2 = (3, 1, 1, 1):
  # q.e = 0, 2, 6, over sqrt(4): 0, 1, 3. Per head: head 1's table doubled.
  q = jnp.array([2.0, 0, 0, 0]).reshape(1, 1, 1, 4)
  e = jnp.array([[0.0, 0, 0, 0], [1, 0, 0, 0], [3, 1, 1, 1]])
  np.testing.assert_allclose(P.cope_query_table(q, e), [[[[0.0, 1.0, 3.0]]]])
  q2 = jnp.concatenate([q, q], axis=2)
  got = P.cope_query_table(q2, jnp.stack([e, 2 * e]))
  np.testing.assert_allclose(got, [[[[0.0, 1.0, 3.0], [0.0, 2.0, 6.0]]]])


@pytest.mark.parametrize('per_head', [False, True])
def test_cope_module_term_is_the_counted_interpolation(per_head):
  # Brute force per pair, from the definitions: g = sigmoid(q.k / sqrt d),
  # p_ij = sum_{t=j..i} g_it clamped at npos_max - 1, then the embedding
  # interpolated at p and dotted with q, over sqrt d.
  cfg = _model_cfg('cope', num_heads=2, d_model=8, cope__npos_max=4,
                   cope__per_head=per_head)
  enc = P.CoPE(cfg, rngs=nnx.Rngs(params=0))
  np.testing.assert_array_equal(enc.emb[...], 0.0)   # the released init
  assert enc.emb.shape == ((2, 4, 4) if per_head else (4, 4))
  rng = np.random.default_rng(3)
  enc.emb[...] = jnp.asarray(rng.normal(size=enc.emb.shape), jnp.float32)
  q, k = _qk(1, 7, 2, 4, seed=2)
  pos = jnp.arange(7, dtype=jnp.int32)[None]
  term = enc.content(None, q, k, pos)
  assert not term.tiled
  got = np.asarray(term.fn(_tile(term, q, k, pos)))
  qn, kn, e = np.asarray(q)[0], np.asarray(k)[0], np.asarray(enc.emb[...])
  for h in range(2):
    eh = e[h] if per_head else e
    for i in range(7):
      g = 1 / (1 + np.exp(-(kn[:i + 1, h] @ qn[i, h]) / 2.0))
      for j in range(i + 1):
        p = min(g[j:i + 1].sum(), 3.0)
        lo, hi = math.floor(p), math.ceil(p)
        emb = (1 - (p - lo)) * eh[lo] + (p - lo) * eh[hi]
        assert got[0, h, i, j] == pytest.approx(qn[i, h] @ emb / 2.0,
                                                abs=1e-5)


@pytest.mark.parametrize('backend', ['chunked', 'flash'])
def test_cope_refuses_tiled_backends(backend):
  cfg = _model_cfg('cope')
  cfg.attention = backend
  with pytest.raises(ConfigError, match=f"attention='{backend}'"):
    P.CoPE.check(cfg)
  cfg.attention = 'auto'
  P.CoPE.check(cfg)


@pytest.mark.parametrize('field,value', [('npos_max', 1), ('npos_max', -3)])
def test_cope_bad_settings_are_refused(field, value):
  cfg = _model_cfg('cope', **{f'cope__{field}': value})
  with pytest.raises(ConfigError, match=f'config.model.cope.{field}'):
    P.CoPE.check(cfg)


# ------------------------------------------------ through the whole model
# The generic suites build every encoding at its initialisation, where
# CoPE's embeddings are zero (its term is 0). These give them values, and
# run FoX and CoPE through the ring cache of the Lambda mask, whose slots
# are not in token order.


def _built(position, seed=0, **fields):
  from configs import base
  from lmx.config import validate as config_lib
  from lmx.model import transformer as model_lib
  c = base.get_config('size=tiny')
  c.model.position = position
  c.update_from_flattened_dict(
      {'model.' + k.replace('__', '.'): v for k, v in fields.items()})
  config_lib.validate(c)
  model = model_lib.build(c.model, seed=0)
  if position == 'cope':
    rng = np.random.default_rng(seed)
    for block in model.blocks:
      emb = block.attn.position.emb
      emb[...] = jnp.asarray(rng.normal(size=emb.shape), jnp.float32)
  return model


def _tokens(b, t, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(0, 257, (b, t)), jnp.int32)


@pytest.mark.parametrize('position,fields,table', [
    ('cope', {}, 'emb'),
    ('shaw', {'shaw__value_embeddings': True, 'shaw__max_distance': 3},
     'value_table')])
def test_content_tables_are_causal_shift_invariant_and_act(position, fields,
                                                          table):
  # CoPE's embeddings (given values, see _built) and Shaw's value table.
  model = _built(position, **fields)
  tokens = _tokens(2, 12)
  pos = jnp.asarray(P.sample_positions('randomized', 2, 12, 200,
                                       np.random.default_rng(1)))
  logits = model(tokens, pos)
  for j in (1, 6, 11):
    new = model(tokens.at[:, j].set((tokens[:, j] + 100) % 257), pos)
    np.testing.assert_allclose(new[:, :j], logits[:, :j], atol=1e-5, rtol=0)
    assert float(jnp.abs(new[:, j] - logits[:, j]).max()) > 1e-3
  np.testing.assert_allclose(model(tokens, pos + 17), logits, atol=1e-4,
                             rtol=0)
  # The table acts: zero it and the logits change.
  for block in model.blocks:
    param = getattr(block.attn.position, table)
    param[...] = jnp.zeros(param.shape, jnp.float32)
  assert float(jnp.abs(model(tokens, pos) - logits).max()) > 1e-3


def _decode_all(model, tokens, n_prompt):
  """(logits decoded with the cache, the full pass's logits)."""
  decoded, _ = decode_steps(model, tokens, n_prompt)
  pos = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None]
  return decoded, model(tokens, pos)


@pytest.mark.parametrize('position', ['cope', 'fox', 'shaw_values'])
@pytest.mark.parametrize('mask', ['causal', 'lambda'])
def test_decoding_matches_the_full_pass(position, mask):
  # Lambda: 2 global + 5 local slots, so after 7 tokens the ring holds its
  # keys out of token order (CoPE counts in token order; FoX continues F
  # from the latest token, not the latest slot; Shaw's value rows follow the
  # cached keys' positions).
  fields = ({'lm_infinite__n_global': 2, 'lm_infinite__n_local': 5}
            if mask == 'lambda' else {})
  if position == 'shaw_values':
    position, fields = 'shaw', {**fields, 'shaw__value_embeddings': True,
                                'shaw__max_distance': 3}
  model = _built(position, **fields)
  got, want = _decode_all(model, _tokens(1, 13), n_prompt=4)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize('position', ['shaw', 'fox'])
def test_flash_is_refused_where_the_config_asks_for_it(position):
  # The fused kernel computes no content term: asked for by name, the
  # config says so before anything compiles (a call outside a config
  # falls back to another backend instead).
  from configs import base
  from lmx.config import validate as config_lib
  c = base.get_config('size=tiny')
  c.model.position = position
  c.model.attention = 'flash'
  with pytest.raises(ConfigError, match="attention='flash'.*content"):
    config_lib.validate(c)


def test_fox_chunked_equals_dense_at_100_tokens_of_strong_decay():
  # bias_init -1: log f ~ -1.3 per token, F ~ -130 at the end, where a
  # float32 step is 1.5e-5; the term is F_i - F_j from the two-float F.
  models = [_built('fox', fox__bias_init=-1.0, attention=backend,
                   attention_block=16) for backend in ('dense', 'chunked')]
  tokens = _tokens(1, 101)
  pos = jnp.arange(101, dtype=jnp.int32)[None]
  dense, chunked = (m(tokens, pos) for m in models)
  np.testing.assert_allclose(chunked, dense, atol=1e-5 * max(
      1.0, float(jnp.abs(dense).max())), rtol=0)
