"""LM-Infinite's out-of-distribution factors (lmx.evaluation.ood), checked
against numbers recomputed independently in numpy."""

import numpy as np
import pytest

from lmx.model import attention
from lmx.evaluation import runner as evaluation
from lmx.evaluation import ood as ood_diagnostics
from lmx.training import run_state
from lmx.errors import ConfigError
from lmx.positions.alibi import alibi_slopes

T = 24


def _rms(x, scale, eps=1e-6):
  return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * scale


@pytest.fixture(scope='module')
def captured(cache_dir):
  from configs import base
  c = base.get_config('size=tiny')
  c.model.position = 'alibi'
  c.data.cache_dir = cache_dir
  graphdef, params = run_state.init_model(c)
  tokens = np.random.default_rng(0).integers(0, 256, (1, T)).astype(np.int32)
  logits, hidden = ood_diagnostics.make_capture_fn(graphdef, T)(
      params, tokens, np.arange(T)[None])
  return c, graphdef, params, tokens, logits, hidden


def _layer0_logits(c, params, tokens):
  """q.k / sqrt(head dim) - m_h (i - j) of block 0, from the parameters."""
  p = {k: np.asarray(v) for k, v in {
      'E': params['embed']['embedding'],
      's': params['blocks'][0]['attn_norm']['scale'],
      'W': params['blocks'][0]['attn']['qkv']['kernel']}.items()}
  d, h = c.model.d_model, c.model.num_heads
  x = _rms(p['E'][tokens[0]].astype(np.float64), p['s'])
  qkv = x @ p['W']
  q = qkv[:, :d].reshape(T, h, d // h)
  k = qkv[:, d:2 * d].reshape(T, h, d // h)
  out = np.einsum('ihk,jhk->hij', q, k) / np.sqrt(d // h)
  dist = np.arange(T)[:, None] - np.arange(T)[None, :]
  out -= alibi_slopes(h)[:, None, None] * dist[None]
  return out, dist


def test_layer_logits_are_q_dot_k_plus_the_bias(captured):
  c, _, params, tokens, logits, _ = captured
  want, dist = _layer0_logits(c, params, tokens)
  got = np.asarray(logits[0])
  causal = dist >= 0
  np.testing.assert_allclose(got[:, causal], want[:, causal], rtol=1e-4,
                             atol=1e-4)
  assert np.all(got[:, ~causal] <= attention.NEG_INF / 2)


def test_distance_profile_against_a_loop(captured):
  c, _, params, tokens, _, _ = captured
  want, _ = _layer0_logits(c, params, tokens)
  rows = 5
  edges = [(0, 3), (3, 10), (10, 24)]
  query_index = np.arange(T - rows, T)
  masked = np.where(np.arange(T)[None, :] <= query_index[:, None],
                    want[:, -rows:], attention.NEG_INF)
  prof = ood_diagnostics.distance_profile(masked, query_index, edges, head=1)
  for b, (a, e) in enumerate(edges):
    head, top = [], []
    for qi, i in enumerate(query_index):
      for j in range(T):
        if a <= i - j < e:
          head.append(want[1, T - rows + qi, j])
          top.append(want[:, T - rows + qi, j].max())
    assert prof['head_mean'][b] == pytest.approx(np.mean(head))
    assert prof['head_max'][b] == pytest.approx(np.max(head))
    assert prof['max_heads_mean'][b] == pytest.approx(np.mean(top))
    assert prof['max_heads_max'][b] == pytest.approx(np.max(top))
  # A bucket no visible key falls in (distances past the last query).
  prof = ood_diagnostics.distance_profile(masked, query_index, [(30, 40)], 0)
  assert prof['head_mean'] == [None] and prof['max_heads_max'] == [None]


def test_the_last_hidden_state_gives_the_models_logits(captured):
  c, graphdef, params, tokens, _, hidden = captured
  assert len(hidden) == c.model.num_layers
  x = _rms(np.asarray(hidden[-1], np.float64),
           np.asarray(params['final_norm']['scale']))
  logits = run_state.apply_fn(graphdef)(params, tokens, np.arange(T)[None])
  np.testing.assert_allclose(x @ np.asarray(params['head']['kernel']),
                             np.asarray(logits[0]), rtol=1e-4, atol=1e-4)


def test_pca_agrees_with_the_covariance_eigenvectors():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(50, 6)) * np.array([5, 3, 1, 1, 0.5, 0.1])
  got = ood_diagnostics.pca_2d(x)
  xc = x - x.mean(0)
  w, v = np.linalg.eigh(xc.T @ xc)
  order = np.argsort(w)[::-1]
  assert got['explained'] == pytest.approx(list(w[order[:2]] / w.sum()))
  want = xc @ v[:, order[:2]]
  np.testing.assert_allclose(np.abs(got['points']), np.abs(want), rtol=1e-8,
                             atol=1e-8)


def test_diagnose_and_its_bad_input(captured, tmp_path):
  c, graphdef, params, _, _, _ = captured
  c = c.copy_and_resolve_references()
  c.eval.ood_query_rows = 8
  stream = np.random.default_rng(3).integers(0, 256, 200)
  diag = ood_diagnostics.diagnose(graphdef, params, c, stream, 32,
                                  evaluation.bucket_edges(32, 8))
  assert len(diag['layers']) == c.model.num_layers
  assert len(diag['layers'][0]['head_mean']) == 8
  assert np.asarray(diag['pca']['points']).shape == (32, 2)
  ood_diagnostics.plot(diag, str(tmp_path / 'ood.png'))
  assert (tmp_path / 'ood.png').read_bytes()[:4] == b'\x89PNG'
  # No length the dense path reaches: refused before any checkpoint is read.
  c.eval.ood = True
  c.model.chunk_threshold = 16
  with pytest.raises(ConfigError, match='chunk_threshold=16'):
    evaluation.evaluate(c, str(tmp_path / 'no_run'), lengths=[32, 64])
  c.eval.ood_head = c.model.num_heads
  with pytest.raises(ConfigError, match='ood_head'):
    evaluation.evaluate(c, str(tmp_path / 'no_run'), lengths=[32])
