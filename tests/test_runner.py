"""The two perplexity protocols and the attention diagnostics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lmx.training import run_state
from lmx.model import attention
from lmx.evaluation import runner as evaluation
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


@settings(max_examples=60, deadline=None)
@given(length=st.integers(1, 5000), buckets=st.integers(1, 80))
def test_log_buckets_tile_the_window_and_widen(length, buckets):
  edges = evaluation.log_bucket_edges(length, buckets)
  assert edges[0][0] == 0 and edges[-1][1] == length
  assert all(a < b for a, b in edges)
  assert all(b == a2 for (_, b), (a2, _) in zip(edges, edges[1:]))
  assert len(edges) <= min(buckets, length)
  widths = [b - a for a, b in edges]
  # Widths grow (up to rounding by one position).
  assert all(w2 >= w1 - 1 for w1, w2 in zip(widths, widths[1:]))


def test_log_buckets_start_with_single_positions():
  # 64 ranges over 1024: the ends grow by 1025 ** (1 / 64) ~ 1.114 each,
  # less than one position at first, so the first ranges are one token.
  edges = evaluation.log_bucket_edges(1024, 64)
  assert edges[:3] == [(0, 1), (1, 2), (2, 3)]
  assert edges[-1][1] - edges[-1][0] > 64  # and the last ones are wide


def test_position_profile_band_is_the_interquartile_range_over_windows():
  # Four windows of 6 tokens, every token of window i with loss i, except
  # that the last window's second half is 7: in positions 3..5 the window
  # means are 0, 1, 2, 7.
  per_window = np.repeat(np.arange(4.0)[:, None], 6, axis=1)
  per_window[3, 3:] = 7.0
  first, second = evaluation.position_profile(per_window, [(0, 3), (3, 6)])
  assert (first['start'], first['end'], second['end']) == (0, 3, 6)
  # Percentiles of 0, 1, 2, 3 by linear interpolation: q25 at rank 0.75.
  assert first == {'start': 0, 'end': 3, 'loss': 1.5, 'q25': 0.75,
                   'median': 1.5, 'q75': 2.25}
  assert second['loss'] == 2.5 and second['median'] == 1.5
  assert second['q25'] == 0.75 and second['q75'] == 3.25  # 2 + 0.25 * 5


def test_tensorboard_tags_name_the_metric_length_and_overrides():
  results = {'results': [{'length': 16, 'loss': 1.0, 'bits_per_byte': 1.5,
                          'perplexity': 2.7},
                         {'length': 32, 'accuracy': 0.5}],
             'sliding': [{'length': 16, 'loss': 0.9}]}
  tags = evaluation.tensorboard_scalars(results, 'eval')
  assert tags == {'eval/loss_len16': 1.0, 'eval/bits_per_byte_len16': 1.5,
                  'eval/perplexity_len16': 2.7, 'eval/accuracy_len32': 0.5,
                  'eval/sliding_loss_len16': 0.9}
  assert evaluation.tag_prefix({}) == 'eval'
  assert evaluation.folder_name({'model.rope.scaling': 'yarn'}) == (
      'eval_model.rope.scaling=yarn')
  assert evaluation.tag_prefix({'model.rope.scaling': 'yarn',
                                'eval.tokens': '64'}) == (
      'eval_model.rope.scaling_yarn_eval.tokens_64')


def test_eval_plots_draw_synthetic_results_with_overrides(tmp_path):
  from PIL import Image
  overrides = {'model.rope.scaling': 'yarn'}
  results = {'position': 'rope', 'step': 5, 'train_length': 16,
             'overrides': overrides, 'sliding_stride': 0,
             'results': [{'length': n, 'loss': 2 + n / 100}
                         for n in (16, 32, 64)],
             'sliding': [{'length': n, 'loss': 1.9 + n / 100}
                         for n in (16, 32, 64)]}
  per_window = np.random.default_rng(0).uniform(1, 3, (5, 64))
  row = {'length': 64, 'per_window': per_window}
  from configs import base
  c = base.get_config('size=tiny')
  c.train.seq_len = 16
  pp = evaluation.per_position_result(row, c)
  assert pp['windows'] == 5 and pp['log_buckets'][0] == {
      **pp['log_buckets'][0], 'start': 0, 'end': 1}
  assert sum(b['end'] - b['start'] for b in pp['buckets']) == 64
  old = {'length': 64, 'train_length': 16,  # a file from before the band
         'buckets': [{'start': a, 'end': b, 'loss': 2.0}
                     for a, b in evaluation.bucket_edges(64, 8)]}
  diag = {'length': 64, 'train_length': 16, 'windows': 2,
          'buckets': [{'start': 0, 'end': 32}, {'start': 32, 'end': 64}],
          'layers': [{'layer': 0, 'entropy': [1.0, 2.0],
                      'max_logit': [3.0, 4.0]}]}
  for name, draw in (
      ('loss.png', lambda p: evaluation.plot_loss_vs_length(results, p)),
      ('pp.png', lambda p: evaluation.plot_per_position(pp, 'rope', p,
                                                        overrides)),
      ('old.png', lambda p: evaluation.plot_per_position(old, 'rope', p)),
      ('attn.png', lambda p: evaluation.plot_attention(diag, 'rope', p,
                                                       overrides))):
    draw(str(tmp_path / name))
    with Image.open(tmp_path / name) as im:
      assert im.format == 'PNG'
