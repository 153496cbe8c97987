"""Shaw et al. 2018's relative position representations (lmx/positions/shaw.py):
their math against numbers worked out by hand, the term against eq. 3 and
4 of the paper in the dense and chunked backends, and bad settings."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmx import positions as P
from lmx.errors import ConfigError
from lmx.positions import far as F
import attention_calls as AC
from content_encodings import model_cfg, qk, tile


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
  cfg = model_cfg('shaw', num_heads=2, d_model=16, shaw__max_distance=3)
  enc = P.Shaw(cfg, rngs=nnx.Rngs(params=0))
  assert enc.table.shape == (4, 8)
  assert enc.value_table is None   # the value embeddings are off by default
  q, k = qk(2, 9, 2, 8)
  pos = jnp.asarray([[0, 1, 2, 4, 5, 9, 10, 11, 20],
                     [3, 4, 5, 6, 7, 8, 9, 10, 11]], jnp.int32)
  term = enc.content(None, q, k, pos)
  assert term.tiled
  got = term.fn(tile(term, q, k, pos))
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
  cfg = model_cfg('shaw')
  enc = P.Shaw(cfg, rngs=nnx.Rngs(params=1))
  q, k = qk(1, 6, 2, 4)
  pos = jnp.asarray([[0, 2, 3, 7, 8, 30]], jnp.int32)
  term = enc.content(None, q, k, pos)
  a = term.fn(tile(term, q, k, pos))
  b = term.fn(tile(term, q, k, pos + 1000))
  np.testing.assert_array_equal(a, b)
  # Distances 0..16 have rows of their own: moving one key changes its term.
  moved = pos.at[0, 2].set(4)
  c = term.fn(tile(term, q, k, moved))
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
  cfg = model_cfg('shaw', num_heads=2, d_model=16,
                   shaw__value_embeddings=True,
                   shaw__max_distance=max_distance)
  P.Shaw.check(cfg)
  enc = P.Shaw(cfg, rngs=nnx.Rngs(params=seed))
  rng = np.random.default_rng(seed)
  q, k = qk(2, t, 2, 8, seed)
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
  cfg = model_cfg('shaw', shaw__max_distance=value)
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
