"""The two perplexity protocols and the attention diagnostics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lmx import run_state
from lmx import attention, evaluation
from lmx.data import windows
from lmx.positions.alibi import alibi_slopes


@settings(max_examples=40, deadline=None)
@given(length=st.integers(1, 40), stride_frac=st.floats(0.01, 1.0),
       more=st.integers(0, 400), extra=st.integers(0, 50))
def test_sliding_windows_score_the_same_tokens_once_with_context(
    length, stride_frac, more, extra):
  stride = max(1, int(length * stride_frac))
  tokens = length + more  # at least one window
  stream = np.arange(tokens + 1 + extra)
  n = windows.num_eval_windows(stream.size, length, tokens)
  inputs, targets, scored = windows.sliding_windows(stream, length, tokens,
                                                    stride)
  _, plain_targets = windows.eval_windows(stream, length, tokens)
  # Exactly the targets of the non-overlapping protocol, each once.
  assert sorted(targets[scored].tolist()) == sorted(
      plain_targets.ravel().tolist())
  assert targets[scored].size == n * length
  np.testing.assert_array_equal(targets, inputs + 1)
  # Outside the first window, each scored token has >= length - stride
  # tokens of context before it in its window.
  context = np.broadcast_to(np.arange(length), inputs.shape)
  assert (context[1:][scored[1:]] >= length - stride).all()


def _tiny(tiny_config, position, **overrides):
  c = tiny_config(position, **overrides)
  graphdef, params = run_state.init_model(c)
  return c, graphdef, params


def test_sliding_with_stride_equal_to_length_is_the_plain_protocol(
    tiny_config):
  c, graphdef, params = _tiny(tiny_config, 'alibi',
                              **{'eval.sliding_stride': 32})
  stream = np.random.default_rng(0).integers(0, 256, 1000)
  fn = evaluation.make_loss_fn(graphdef)
  plain = evaluation.loss_at_length(fn, params, c, stream, 32)
  sliding = evaluation.sliding_loss_at_length(fn, params, c, stream, 32)
  assert sliding['stride'] == 32 and sliding['tokens'] == plain['tokens']
  np.testing.assert_allclose(sliding['loss'], plain['loss'], rtol=1e-12)


def test_sliding_gives_context_and_changes_the_loss(tiny_config):
  c, graphdef, params = _tiny(tiny_config, 'alibi')
  stream = np.random.default_rng(0).integers(0, 256, 1000)
  fn = evaluation.make_loss_fn(graphdef)
  plain = evaluation.loss_at_length(fn, params, c, stream, 32)
  sliding = evaluation.sliding_loss_at_length(fn, params, c, stream, 32)
  assert sliding['stride'] == 8 and sliding['tokens'] == plain['tokens']
  assert sliding['windows'] > plain['windows']
  assert abs(sliding['loss'] - plain['loss']) > 1e-6


def test_attention_stats_of_known_distributions():
  mask = attention.causal_mask(4, 4)
  # Equal logits: uniform over the i + 1 visible keys.
  stats = attention.attention_stats(jnp.zeros((1, 2, 4, 4)), mask)
  np.testing.assert_allclose(stats['entropy'][0], np.log(np.arange(1, 5)),
                             rtol=1e-6)
  np.testing.assert_allclose(stats['max_logit'][0], 0.0)
  # One key far above the others: entropy near 0, max logit that value;
  # a larger logit on a masked (future) key is ignored.
  logits = np.zeros((1, 1, 4, 4), np.float32)
  logits[0, 0, :, 0] = 50.0
  logits[0, 0, 1, 3] = 99.0  # future key of query 1
  stats = attention.attention_stats(jnp.asarray(logits), mask)
  np.testing.assert_allclose(stats['entropy'][0], 0.0, atol=1e-6)
  np.testing.assert_allclose(stats['max_logit'][0], 50.0)


def _alibi_entropy(heads, length):
  """Entropy of softmax(-m (i - j)) over j <= i, mean over the heads."""
  out = np.zeros(length)
  for m in alibi_slopes(heads):
    for i in range(length):
      logits = -m * (i - np.arange(i + 1.0))
      p = np.exp(logits - logits.max())
      p /= p.sum()
      out[i] += -(p * np.log(p)).sum() / heads
  return out


@pytest.mark.parametrize('position', ['none', 'alibi', 'rope'])
def test_diagnostics_of_a_model_with_zero_queries_and_keys(tiny_config,
                                                           position):
  """With q = k = 0 every logit is the encoding's bias: NoPE and RoPE attend
  uniformly (entropy log(i + 1), max logit 0); ALiBi's bias is at most 0,
  reached at distance 0, so its max logit is 0 and its entropy lower."""
  c, graphdef, params = _tiny(tiny_config, position,
                              **{'eval.position_buckets': 64})

  def zero_qk(path, x):
    if any(getattr(k, 'key', None) == 'qkv' for k in path):
      return x.at[:, :2 * x.shape[1] // 3].set(0.0)
    return x

  params = jax.tree_util.tree_map_with_path(zero_qk, params)
  stream = np.random.default_rng(0).integers(0, 256, 200)
  diag = evaluation.attention_diagnostics(graphdef, params, c, stream, 48, 2)
  assert diag['windows'] == 2 and len(diag['layers']) == c.model.num_layers
  assert [b['start'] for b in diag['buckets']] == list(range(48))
  uniform = np.log(np.arange(1, 49))
  for layer in diag['layers']:
    np.testing.assert_allclose(layer['max_logit'], 0.0, atol=1e-5)
    if position == 'alibi':
      np.testing.assert_allclose(layer['entropy'],
                                 _alibi_entropy(c.model.num_heads, 48),
                                 rtol=1e-4)
      assert np.all(np.asarray(layer['entropy'])[1:] < uniform[1:])
    else:
      np.testing.assert_allclose(layer['entropy'], uniform, rtol=1e-5,
                                 atol=1e-6)


def test_stats_are_only_collected_when_asked(tiny_config):
  """The training forward pass is unchanged and sows nothing."""
  c, graphdef, params = _tiny(tiny_config, 'alibi')
  tokens = np.zeros((1, 16), np.int32)
  pos = np.arange(16)[None]
  logits = run_state.apply_fn(graphdef)(params, tokens, pos)
  stats = evaluation.make_stats_fn(graphdef)(params, tokens, pos)
  assert logits.shape == (1, 16, c.model.vocab_size)
  assert len(stats) == c.model.num_layers
  assert stats[0]['entropy'].shape == (1, 16)
