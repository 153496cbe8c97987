"""RULER's aggregation tasks (lmx.data.aggregation): every answer recounted
from the prompt's text, the word counts checked against the construction
(hand-worked Zipf counts included), lengths and the limit message."""

import importlib
import math
import re
from collections import Counter

import numpy as np
import pytest

from lmx.data import aggregation, tasks

NAMES = ('common_words', 'frequent_words')
CWE_RE = re.compile(r'(\d{4})\. ([a-z]{5}) ')
CWE_Q = 'what are the 4 most common words? '
FWE_Q = 'what are the 3 most frequent words? '
# zeta(2) summed here (lmx uses pi^2 / 6): the series to 10^6, plus the
# tail's integral.
ZETA2 = float(np.sum(1.0 / np.arange(1, 10**6, dtype=np.float64)[::-1]**2)
              + 1e-6)


def _config(name, **task_fields):
  c = importlib.import_module(f'configs.tasks.{name}').get_config('size=tiny')
  for key, value in task_fields.items():
    c.task[key] = value
  return c


def cwe_entries(prompt):
  """The list's words, checking the numbering runs 0001, 0002, ..."""
  assert prompt.endswith(CWE_Q)
  body = prompt[:-len(CWE_Q)]
  entries = CWE_RE.findall(body)
  assert ''.join(f'{i}. {w} ' for i, w in entries) == body
  assert [int(i) for i, _ in entries] == list(range(1, len(entries) + 1))
  return [w for _, w in entries]


def fwe_words(prompt):
  assert prompt.endswith(FWE_Q)
  words = prompt[:-len(FWE_Q)].split(' ')
  assert words[-1] == ''
  return words[:-1]


def solve(name, prompt):
  """The answer, counted from the prompt's text alone; asserts that the
  cutoff has no tie."""
  if name == 'common_words':
    words = cwe_entries(prompt)
    counts = Counter(words).most_common()
    assert counts[3][1] > (counts[4][1] if len(counts) > 4 else 0)
    top = {w for w, _ in counts[:4]}
    first = []
    for w in words:  # in the order of their first entry
      if w in top and w not in first:
        first.append(w)
    return ' '.join(first)
  counts = Counter(w for w in fwe_words(prompt) if w != '....')
  ranked = sorted(counts.items(), key=lambda kv: -kv[1])
  freq = [c for _, c in ranked] + [0]
  assert freq[0] > freq[1] > freq[2] > freq[3], freq[:5]
  return ' '.join(w for w, _ in ranked[:3])


def length_of(name, prompt):
  if name == 'common_words':
    return len(cwe_entries(prompt)) - 4 * 6
  words = len(fwe_words(prompt))
  assert words % 16 == 0
  return words // 16 - 4


def _check_counts(name, prompt):
  """The construction: RULER's repeats (CWE), Zipf's counts (FWE)."""
  if name == 'common_words':
    counts = sorted(Counter(cwe_entries(prompt)).values(), reverse=True)
    assert counts[:4] == [6] * 4 and set(counts[4:]) <= {1}
    return
  words = fwe_words(prompt)
  total = len(words)
  counts = sorted((c for w, c in Counter(words).items() if w != '....'),
                  reverse=True)
  expect = []
  for k in range(2, 10**6):
    c = math.floor(total / k**2 / ZETA2)
    if c < 1:
      break
    expect.append(c)
  assert counts == expect
  assert words.count('....') == total - sum(expect)
  assert all(len(w) == 4 for w in words)


@pytest.mark.parametrize('name', NAMES)
def test_answers_recounted_from_the_text(name):
  tc = _config(name).task
  task = tasks.TASKS[name]
  answers = set()
  for n in list(range(1, 41)) + [97, 250]:
    rng = np.random.default_rng([n, 5])
    for _ in range(4):
      prompt, answer = tasks.example(tc, n, rng)
      assert len(prompt + answer) == task.per * n + task.extra
      assert length_of(name, prompt) == n
      assert solve(name, prompt) == answer, (prompt, answer)
      _check_counts(name, prompt)
      answers.add(answer)
  assert len(answers) == 42 * 4  # fresh words every time


def test_zipf_counts_worked_by_hand():
  # N = 80 (n = 1): 80 / zeta(2) = 48.63; / k^2 for k = 1..7 gives 48.63,
  # 12.16, 5.40, 3.04, 1.95, 1.35, 0.99: floors 48 12 5 3 1 1 (sum 70),
  # the noise takes the other 10.
  assert aggregation.fwe_counts(80) == [58, 12, 5, 3, 1, 1]
  # N = 96: 58.36 14.59 6.48 3.65 2.33 1.62 1.19 0.91 -> 58 14 6 3 2 1 1.
  assert aggregation.fwe_counts(96) == [58 + 11, 14, 6, 3, 2, 1, 1]


def test_no_tie_at_the_cutoff_for_any_length():
  for n in range(1, 400):
    c = aggregation.fwe_counts(16 * (n + 4)) + [0, 0, 0, 0, 0]
    assert c[1] > c[2] > c[3] > c[4] and sum(c) == 16 * (n + 4)


@pytest.mark.parametrize('name', NAMES)
def test_deterministic_per_seed_and_split(name):
  c = _config(name)
  a = tasks.eval_batch(c, length=3, count=4, seed=3)
  b = tasks.eval_batch(c, length=3, count=4, seed=3)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  other = tasks.eval_batch(c, length=3, count=4, seed=4)
  assert not np.array_equal(a['inputs'], other['inputs'])
  assert a['inputs'].shape[1] == tasks.sequence_length(c.task, 3)
  for row in a['inputs']:
    prompt, answer = tasks.split_answer(c.task, row)
    assert solve(name, prompt) == answer


def test_common_words_refuses_lengths_its_numbers_cannot_write():
  c = _config('common_words', eval_lengths=(9976,))
  msg = tasks.check(c)
  assert msg is not None
  for word in ('common_words length 9976', '9999', 'up to 9975',
               'eval_lengths'):
    assert word in msg, msg
  assert tasks.alphabet_problem(c.task, 9975) is None
  assert 'up to 9975' in tasks.alphabet_problem(c.task, 9976)
  c.task.eval_lengths = (9975,)
  assert tasks.check(c) is None
