"""bench/long_peer.py: the lmx side of the long evaluation against
x-transformers, at a tiny length and model (the torch side needs the bench
extra, which the suite does not install)."""

import json

import numpy as np
import pytest

from bench import long_peer
from lmx import flops as lmx_flops
from lmx.evaluation import runner as evaluation
from lmx.training import run_state

LENGTH = 256


@pytest.fixture(scope='module')
def result():
  # Tile 64: the chunked backend really tiles the 256 tokens (4 x 4 tiles).
  return long_peer.run([LENGTH], repeats=2, warmup=0, size='tiny',
                       attention='chunked', block=64, log=lambda _: None)


def test_the_row_has_the_medians_the_backend_and_the_flops(result):
  row = result['results'][str(LENGTH)]
  lmx = row['lmx']
  assert lmx['backends'] == ['chunked']
  assert len(lmx['seconds']) == 2 and lmx['compile_s'] > 0
  assert lmx['median_s'] == pytest.approx(np.median(lmx['seconds']))
  assert lmx['tokens_per_s'] == pytest.approx(LENGTH / lmx['median_s'])
  model = {k: result['model'][k] for k in long_peer.DIMS}
  assert model == {'d_model': 32, 'num_layers': 2, 'num_heads': 2,
                   'mlp_dim': 64, 'vocab_size': 257}
  f = row['flops_per_token']
  assert f['total'] == lmx_flops.forward_flops_per_token(model, LENGTH)
  assert f['total'] == f['dense'] + f['attention']
  assert lmx['gflops'] == pytest.approx(
      LENGTH * f['total'] / lmx['median_s'] / 1e9)
  # No torch child: no x-transformers row and no ratio.
  assert 'x_transformers' not in row and 'ratio' not in row
  text = long_peer.table(result)
  assert '### 256 tokens' in text and '| lmx (JAX) | chunked |' in text
  assert 'x-transformers (PyTorch)' not in text
  assert json.loads(json.dumps(result)) == result


def test_the_losses_are_eval_pys_and_chunked_matches_dense(result):
  # The benchmark's chunked function against eval.py's as it runs at this
  # length by default (config.model.attention='auto': dense at 256 keys),
  # on the same bytes, positions 0..T-1 and next-byte targets.
  bench = long_peer.LmxEval(
      long_peer.lmx_config('tiny', 'chunked', block=64), LENGTH)
  bench()
  config = long_peer.lmx_config('tiny', 'auto')
  graphdef, params = run_state.init_model(config)
  x, y = long_peer.tokens(LENGTH)
  t = np.random.default_rng(0).integers(0, 256, LENGTH + 1)
  np.testing.assert_array_equal(x[0], t[:-1])
  np.testing.assert_array_equal(y[0], t[1:])
  pos = np.arange(LENGTH, dtype=np.int32)[None]
  expected = np.asarray(evaluation.make_loss_fn(graphdef)(params, x, pos, y))
  assert bench.losses.shape == (1, LENGTH)
  np.testing.assert_allclose(bench.losses, expected, rtol=1e-5, atol=1e-5)
  assert result['results'][str(LENGTH)]['lmx']['loss'] == pytest.approx(
      float(expected.mean()), rel=1e-5)


def test_a_missing_torch_is_said_and_skipped(monkeypatch):
  real = long_peer.importlib.util.find_spec
  monkeypatch.setattr(long_peer.importlib.util, 'find_spec',
                      lambda name: None if name == 'torch' else real(name))
  why = long_peer.torch_missing()
  assert why and 'torch is not installed' in why and 'lmx only' in why
