"""LongPPL (lmx.evaluation.longppl): the key-token rule on hand numbers,
the short-context windows against the rule they follow, and on a tiny
model the short losses against an independent per-token computation."""

import math

import numpy as np
import pytest

from lmx.data import windows
from lmx.evaluation import longppl
from lmx.evaluation import protocols
from lmx.training import run_state

NAN = float('nan')


def test_key_tokens_and_longppl_on_hand_numbers():
  # Per-token losses (nats); NaN short loss: fewer than K tokens of context.
  long_ = np.array([0.5, 1.0, 1.5, 2.5, 0.25, 1.75, 2.0])
  short = np.array([NAN, 3.6, 3.4, 5.0, 2.25, 4.0, 4.5])
  # LSD = short - long: -, 2.6, 1.9, 2.5, 2.0, 2.25, 2.5
  # LCL = -long:     -0.5, -1, -1.5, -2.5, -0.25, -1.75, -2.0
  # key (LSD > 2 and LCL > -2): 1 and 5. Token 3 fails LCL, 4 ties on LSD
  # (strict), 6 ties on LCL (strict), 2 has too small an LSD.
  key = longppl.key_tokens(long_, short, 2.0, -2.0)
  assert key.tolist() == [False, True, False, False, False, True, False]
  s = longppl.summarize(long_, short, 2.0, -2.0)
  assert s['key_tokens'] == 2 and s['tokens'] == 7 and s['candidates'] == 6
  assert s['key_fraction'] == pytest.approx(2 / 7)
  assert s['longppl'] == pytest.approx(math.exp((1.0 + 1.75) / 2))
  assert s['perplexity'] == pytest.approx(math.exp(9.5 / 7))
  assert s['lsd'] == pytest.approx((2.6 + 1.9 + 2.5 + 2.0 + 2.25 + 2.5) / 6)
  assert s['lsd_key'] == pytest.approx((2.6 + 2.25) / 2)
  # No key token: LongPPL is undefined, as the authors' code returns None.
  none = longppl.summarize(long_, short, 10.0, -2.0)
  assert none['longppl'] is None and none['key_tokens'] == 0


@pytest.mark.parametrize('length,short,stride', [
    (10, 3, 2), (10, 3, 1), (10, 3, 4), (9, 4, 100), (6, 6, 3), (16, 4, 5)])
def test_short_windows_score_each_token_once_with_its_last_tokens(
    length, short, stride):
  rng = np.random.default_rng(0)
  inputs = rng.integers(1, 50, (3, length))
  targets = rng.integers(1, 50, (3, length))
  x, y, scored, row, col = longppl.short_windows(inputs, targets, short,
                                                 stride)
  d = min(stride, length - short + 1)
  assert x.shape[1] == short + d - 1 <= length
  seen = np.zeros((3, length), int)
  w_idx, q_idx = np.nonzero(scored)
  for w, q, r, p in zip(w_idx, q_idx, row, col):
    seen[r, p] += 1
    context = q + 1  # the window's inputs 0..q precede target q
    # The code's rule: between K and K + d - 1 tokens of context, and
    # exactly K for the first target of each window (K alone with d = 1).
    assert short <= context <= short + d - 1
    assert context == short + (p - (short - 1)) % d
    np.testing.assert_array_equal(x[w, :q + 1],
                                  inputs[r, p - context + 1:p + 1])
    assert y[w, q] == targets[r, p]
  # Every target with at least K tokens of context, once; no other.
  expect = np.zeros((3, length), int)
  expect[:, short - 1:] = 1
  np.testing.assert_array_equal(seen, expect)


def test_no_window_when_the_length_is_below_the_short_context():
  z = np.zeros((2, 5), int)
  assert longppl.short_windows(z, z, 6, 2) is None
  s = longppl.short_losses(None, None, (2, 5))
  assert np.isnan(s).all()


def _tiny(tiny_config, **overrides):
  c = tiny_config('alibi', **{'eval.tokens': 96, **overrides})
  graphdef, params = run_state.init_model(c)
  stream = np.random.default_rng(1).integers(0, 256, 400)
  return c, graphdef, params, stream


def _naive_short(fn, params, inputs, targets, contexts):
  """The short-context loss of every target p, from a forward pass over
  exactly its last ``contexts[r, p]`` inputs (NaN where 0): each its own
  row, padded after its target (the model is causal) to one shape. A
  construction independent of ``short_windows``."""
  out = np.full(inputs.shape, np.nan)
  rs, ps = np.nonzero(contexts)
  cs = contexts[rs, ps]
  width = int(cs.max())
  x = np.zeros((len(rs), width), np.int32)
  y = np.zeros((len(rs), width), np.int32)
  for i, (r, p, c) in enumerate(zip(rs, ps, cs)):
    x[i, :c] = inputs[r, p - c + 1:p + 1]
    y[i, :c] = targets[r, p - c + 1:p + 1]
  pos = np.broadcast_to(np.arange(width, dtype=np.int32), x.shape)
  losses = np.asarray(fn(params, x, pos, y))
  out[rs, ps] = losses[np.arange(len(rs)), cs - 1]
  return out


def test_on_a_tiny_model_short_losses_key_tokens_and_perplexity(tiny_config):
  # An untrained model's losses are near log 256 and its LSD within about
  # +-1 nat: alpha = 0.1 and beta = -100 make some tokens key.
  c, graphdef, params, stream = _tiny(
      tiny_config, **{'eval.longppl_short': 8, 'eval.longppl_stride': 3,
                      'eval.longppl_alpha': 0.1, 'eval.longppl_beta': -100.0})
  fn = protocols.make_loss_fn(graphdef)
  length = 32
  row = protocols.loss_at_length(fn, params, c, stream, length)
  got = longppl.longppl_at_length(fn, params, c, stream, length, row)
  inputs, targets = windows.eval_windows(stream, length, c.eval.tokens)
  # Independently: the long losses from one pass over the windows, the short
  # ones from the code's rule (context K + (p - K + 1) mod d).
  pos = np.broadcast_to(np.arange(length, dtype=np.int32), inputs.shape)
  long_loss = np.asarray(fn(params, inputs, pos, targets), np.float64)
  p = np.arange(length)
  ctx = np.where(p >= 7, 8 + (p - 7) % 3, 0)
  short = _naive_short(fn, params, inputs, targets,
                       np.broadcast_to(ctx, inputs.shape))
  np.testing.assert_allclose(got['short_loss'], short, atol=2e-5)
  key = got['key_mask']
  assert 0 < key.sum() < (~np.isnan(short)).sum()
  # Key tokens are scored tokens with a short context, and follow the rule.
  assert not key[:, :7].any()
  lsd = np.nan_to_num(short - long_loss, nan=-1.0)
  clear = np.abs(lsd - 0.1) > 1e-4  # away from the threshold's rounding
  np.testing.assert_array_equal(key[clear], (lsd > 0.1)[clear])
  assert got['key_tokens'] == key.sum()
  assert got['tokens'] == long_loss.size
  assert got['longppl'] == pytest.approx(math.exp(long_loss[key].mean()),
                                         rel=1e-5)
  # The plain perplexity of the same tokens.
  assert got['perplexity'] == pytest.approx(math.exp(long_loss.mean()),
                                            rel=1e-5)
  assert got['perplexity'] == pytest.approx(row['perplexity'], rel=1e-12)


def test_with_the_short_context_as_long_as_the_window_nothing_is_key(
    tiny_config):
  c, graphdef, params, stream = _tiny(
      tiny_config, **{'eval.longppl_short': 16})
  fn = protocols.make_loss_fn(graphdef)
  row = protocols.loss_at_length(fn, params, c, stream, 16)
  got = longppl.longppl_at_length(fn, params, c, stream, 16, row)
  # Only the last target has 16 tokens of context: the same in both.
  assert got['candidates'] == row['windows'] and got['stride'] == 1
  assert abs(got['lsd']) < 1e-5
  assert got['key_tokens'] == 0 and got['longppl'] is None


@pytest.mark.parametrize('field,value', [('longppl_short', -1),
                                         ('longppl_stride', -2)])
def test_a_negative_short_context_or_stride_is_refused(field, value):
  from lmx.config import defaults, validate
  c = defaults.get_config()
  c.eval[field] = value
  with pytest.raises(validate.ConfigError, match=field):
    validate.validate(c)
