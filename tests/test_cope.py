"""CoPE, contextual position encoding (lmx/positions/cope.py): positions
counted by the gates, the interpolation and its gradient by hand, the
module's term, and the backends it refuses."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmx import positions as P
from lmx.errors import ConfigError
from content_encodings import model_cfg, qk, tile


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
  cfg = model_cfg('cope', num_heads=2, d_model=8, cope__npos_max=4,
                   cope__per_head=per_head)
  enc = P.CoPE(cfg, rngs=nnx.Rngs(params=0))
  np.testing.assert_array_equal(enc.emb[...], 0.0)   # the released init
  assert enc.emb.shape == ((2, 4, 4) if per_head else (4, 4))
  rng = np.random.default_rng(3)
  enc.emb[...] = jnp.asarray(rng.normal(size=enc.emb.shape), jnp.float32)
  q, k = qk(1, 7, 2, 4, seed=2)
  pos = jnp.arange(7, dtype=jnp.int32)[None]
  term = enc.content(None, q, k, pos)
  assert not term.tiled
  got = np.asarray(term.fn(tile(term, q, k, pos)))
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
  cfg = model_cfg('cope')
  cfg.attention = backend
  with pytest.raises(ConfigError, match=f"attention='{backend}'"):
    P.CoPE.check(cfg)
  cfg.attention = 'auto'
  P.CoPE.check(cfg)


@pytest.mark.parametrize('field,value', [('npos_max', 1), ('npos_max', -3)])
def test_cope_bad_settings_are_refused(field, value):
  cfg = model_cfg('cope', **{f'cope__{field}': value})
  with pytest.raises(ConfigError, match=f'config.model.cope.{field}'):
    P.CoPE.check(cfg)
