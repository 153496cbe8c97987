"""Effective length (lmx.evaluation.effective) on hand-made score curves."""

import math

import pytest

from lmx.evaluation import effective

LENGTHS = [32, 64, 128, 256, 512]  # training length 64


def _eff(scores, fraction=0.75, higher=True, lengths=LENGTHS, t=64):
  return effective.effective_length(lengths, scores, t, fraction, higher)


def test_a_curve_that_dips_then_recovers_ends_at_the_dip():
  # Reference max(0.8, 1.0) = 1.0, threshold 0.75: 128 passes, 256 dips to
  # 0.5, 512 recovers to 0.9.
  e = _eff([0.8, 1.0, 0.9, 0.5, 0.9])
  assert e['reference'] == 1.0 and e['reference_length'] == 64
  assert e['threshold'] == 0.75
  assert e['effective_length'] == 128
  assert e['longest_passing'] == 512
  assert effective.describe(e) == '128'


def test_a_curve_that_never_passes_beyond_the_reference_length():
  # Reference 1.0 at 32; the first gated length, 64, already fails.
  e = _eff([1.0, 0.7, 0.6, 0.5, 0.4])
  assert e['effective_length'] is None and e['first_gated'] == 64
  assert e['longest_passing'] is None
  assert effective.describe(e) == '<64'


def test_a_curve_that_always_passes():
  e = _eff([0.9, 0.9, 0.8, 0.76, 0.9])
  assert e['effective_length'] == 512 == e['longest_passing']


def test_a_score_exactly_at_the_threshold_passes():
  # 0.75 * 1.0 is exact in binary: 0.75 passes, the next below fails.
  e = _eff([0.5, 1.0, 0.75, 0.7499, 1.0])
  assert e['effective_length'] == 128 and e['longest_passing'] == 512


def test_lower_is_better_allows_a_rise_by_one_over_the_fraction():
  # Perplexity: reference min over lengths <= 64 = 3.0 (at 64); at 0.75 a
  # length passes up to 3.0 / 0.75 = 4.0 (a tie passes), 4.5 fails.
  e = _eff([3.5, 3.0, 4.0, 4.5, 3.2], higher=False)
  assert e['reference'] == 3.0 and e['threshold'] == 4.0
  assert e['effective_length'] == 128 and e['longest_passing'] == 512
  # Shorter in-distribution lengths are not gated: 32's 5.0 is worse than
  # the threshold but the effective length still runs from 64.
  e = _eff([5.0, 3.0, 3.1, 3.2, 3.3], higher=False)
  assert e['effective_length'] == 512


def test_no_in_distribution_length_and_missing_scores():
  e = _eff([0.9, 0.8], lengths=[128, 256])
  assert e['reference'] is None and effective.describe(e) == 'n/a'
  # None / NaN (LongPPL without key tokens) count as not evaluated.
  e = _eff([None, float('nan'), 2.0, 2.2, 9.0], higher=False)
  assert e['reference'] is None
  # 2.3 * 0.85 = 1.955 <= 2.0 passes; 128 (no score) is skipped.
  e = effective.effective_length([64, 128, 256], [2.0, None, 2.3], 64,
                                 0.85, False)
  assert e['effective_length'] == 256
  # 2.4 * 0.85 = 2.04 > 2.0 fails.
  e = effective.effective_length([64, 256], [2.0, 2.4], 64, 0.85, False)
  assert e['effective_length'] == 64


def test_of_results_covers_every_length_dependent_score():
  results = {
      'kind': 'task', 'train_length': 4,
      'results': [{'length': n, 'accuracy': a, 'loss': 0.1}
                  for n, a in ((2, 1.0), (4, 0.9), (8, 0.8), (16, 0.2))],
      'passkey': {'lengths': [2, 4, 8, 16], 'depths': [0.0, 1.0],
                  'accuracy': [[1.0, 1.0, 1.0, 1.0],
                               [1.0, 0.5, 1.0, 1.0]]}}
  eff = effective.of_results(results, 0.85)
  # Pooled: reference 1.0 (length 2), threshold 0.85: 4 passes, 8 fails.
  assert eff['accuracy']['effective_length'] == 4
  assert eff['accuracy depth 0']['effective_length'] == 16
  assert effective.describe(eff['accuracy depth 1']) == '<4'
  assert 'perplexity' not in eff  # a task's answer loss is not gated
  text = effective.format_table(eff)
  assert '| accuracy | 1 (2) | >= 0.85 | 4 | 4 |' in text


def test_lm_results_use_perplexity_and_longppl():
  results = {
      'train_length': 8,
      'results': [{'length': 8, 'loss': math.log(2.0)},
                  {'length': 16, 'loss': math.log(2.2)},
                  {'length': 32, 'loss': math.log(3.0)}],
      'sliding': [],
      'longppl': [{'length': 8, 'longppl': None},
                  {'length': 16, 'longppl': 5.0}]}
  eff = effective.of_results(results, 0.85)
  assert eff['perplexity']['effective_length'] == 16  # 2.2*.85 <= 2 < 2.55
  assert 'sliding perplexity' not in eff
  # LongPPL is undefined at the training length (no key tokens): n/a.
  assert effective.describe(eff['LongPPL']) == 'n/a'


@pytest.mark.parametrize('fraction', [0.0, 1.5])
def test_a_fraction_outside_0_1_is_refused(fraction):
  with pytest.raises(ValueError, match='fraction'):
    _eff([1.0] * 5, fraction=fraction)


@pytest.mark.parametrize('value', [0.0, 1.2])
def test_the_config_field_is_checked(value):
  from lmx.config import defaults, validate
  c = defaults.get_config()
  c.eval.effective_fraction = value
  with pytest.raises(validate.ConfigError, match='effective_fraction'):
    validate.validate(c)
