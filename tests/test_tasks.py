"""Algorithmic tasks (lmx.data.tasks), their configs and lmx.evaluation.task_accuracy."""

import importlib
import math
import os
import re
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmx.evaluation import task_accuracy as task_eval
from lmx.data import tasks, tokenizer
import test_aggregation
import test_babilong

EOD = tokenizer.EOD
NAMES = sorted(tasks.TASKS)
KEY_RE = re.compile(r'the pass key is (\d{5})\. ')
QUESTION = 'what is the pass key? '


def _config(name, **task_fields):
  c = importlib.import_module(f'configs.tasks.{name}').get_config('size=tiny')
  for key, value in task_fields.items():
    c.task[key] = value
  return c


def _split(text):
  """(prompt, answer) of an example's text, parsed here, not by lmx."""
  # A haystack task's prompt ends with a question ('? '), and
  # variable_tracking's has '=' in it; solve_equation's and
  # induction_heads' prompts have an '=' before the last.
  cut = (text.rindex('? ') + 2 if '? ' in text else text.rindex('=') + 1)
  return text[:cut], text[cut:]


def _solve(name, prompt, tc):
  """The answer to a prompt, computed independently of lmx."""
  body = prompt[:-1]
  if name == 'copy':
    return body
  if name == 'reverse':
    return body[::-1]
  if name == 'duplicate_string':
    return body * 2
  if name == 'sort':
    return ''.join(sorted(body))
  if name == 'binary_addition':
    a, b = body.split('+')
    total = int(a[::-1], 2) + int(b[::-1], 2)
    return format(total, 'b')[::-1].ljust(len(a) + 1, '0')
  if name == 'parity':
    return str(body.count('1') % 2)
  if name == 'modular_arithmetic':
    return str(eval(body) % tc.modulus)  # pylint: disable=eval-used
  if name == 'associative_recall':
    pairs, key = body.split('|')
    return dict(zip(pairs[::2], pairs[1::2]))[key]
  if name == 'passkey':
    return KEY_RE.search(prompt).group(1)
  if name in CHOMSKY:
    return _solve_chomsky(name, body, tc)
  if name in RECALL:
    return _solve_recall(name, prompt)
  if name in test_babilong.NAMES:  # solved there, from the text alone
    return test_babilong.solve(name, prompt)
  if name in test_aggregation.NAMES:
    return test_aggregation.solve(name, prompt)
  raise AssertionError(name)


CHOMSKY = ('even_pairs', 'cycle_navigation', 'odds_first',
           'missing_duplicate_string', 'solve_equation',
           'binary_multiplication', 'compute_sqrt', 'bucket_sort',
           'stack_manipulation', 'modular_arithmetic_brackets')


def _solve_chomsky(name, body, tc):
  """The tasks of Deletang et al. 2023, solved from the prompt's text."""
  n = len(body)
  if name == 'even_pairs':
    pairs = sum(1 for i in range(n - 1) if body[i] != body[i + 1])
    return '1' if pairs % 2 else '0'
  if name == 'cycle_navigation':
    state = 0
    for c in body:
      state = (state + {'-': -1, '0': 0, '+': 1}[c]) % 5
    return str(state)
  if name == 'odds_first':
    odd = [body[i] for i in range(n) if i % 2 == 1]
    even = [body[i] for i in range(n) if i % 2 == 0]
    return ''.join(odd + even)
  if name == 'missing_duplicate_string':
    if body == '1':
      return '1'
    ww = body.rstrip('_')
    i, half = ww.index('?'), len(ww) // 2
    return ww[(i + half) % len(ww)]  # the same place in the other copy
  if name == 'solve_equation':
    equation = body[:-len('|x')]
    if 'x' not in equation:
      return '0'
    lhs, rhs = equation.split('=')
    hits = [v for v in range(tc.modulus)
            if eval(lhs.replace('x', str(v))) % tc.modulus == int(rhs)]
    assert len(hits) == 1, body
    return str(hits[0])
  if name == 'binary_multiplication':
    if '*' not in body:
      return '0' * (n - 1) + '#'
    a, b = body.split('*')
    product = int(a[::-1], 2) * int(b[::-1], 2)
    return (bin(product)[2:][::-1] + '#').ljust(n, '0')
  if name == 'compute_sqrt':
    return bin(math.isqrt(int(body, 2)))[2:].zfill(n)
  if name == 'bucket_sort':
    return ''.join(sorted(body))
  if name == 'stack_manipulation':
    k = len(body) - len(body.lstrip('01'))  # the stack: the leading bits
    stack = list(body[:k])
    for act in body[k:]:
      if act == '-':
        if stack:
          stack.pop()
      else:
        stack.append({'a': '0', 'b': '1'}[act])
    return (''.join(reversed(stack)) + '#').ljust(n + 1, '0')
  if name == 'modular_arithmetic_brackets':
    return str(eval(body) % tc.modulus)  # pylint: disable=eval-used
  raise AssertionError(name)


RECALL = ('induction_heads', 'mqar', 'flip_flop', 'multi_key_niah',
          'variable_tracking')
NIAH_RE = re.compile(r'the pass key of ([a-z]{3}) is (\d{5})\. ')
VT_RE = re.compile(r'VAR ([A-Z]{5}) = (\d{5}|VAR [A-Z]{5})\. ')


def _solve_recall(name, prompt):
  """The recall and state-tracking tasks, solved from the prompt's text."""
  body = prompt[:-1]
  if name == 'induction_heads':
    return body[body.index('=') + 1]  # what followed the first trigger
  if name == 'mqar':
    pairs, queries = body.split('|')
    table = {pairs[i]: pairs[i + 1] for i in range(0, len(pairs), 2)}
    return ''.join(table[q] for q in queries)
  if name == 'flip_flop':
    memory = None
    for i in range(0, len(body) - 1, 2):
      if body[i] == 'w':
        memory = body[i + 1]
    return memory
  if name == 'multi_key_niah':
    asked = re.fullmatch(r'.*what is the pass key of ([a-z]{3})\? ',
                         prompt).group(1)
    return dict(NIAH_RE.findall(prompt))[asked]
  if name == 'variable_tracking':
    value = re.fullmatch(r'.*which variables are assigned the value '
                         r'(\d{5})\? ', prompt).group(1)
    bound = dict(VT_RE.findall(prompt))

    def resolve(var, hops=0):  # (value, hops from the number)
      rhs = bound[var]
      return (rhs, hops) if rhs.isdigit() else resolve(rhs[4:], hops + 1)
    found = sorted((resolve(v)[1], v) for v in bound
                   if resolve(v)[0] == value)
    return ' '.join(v for _, v in found)
  raise AssertionError(name)


def _length_of(name, prompt, tc):
  """The task length n of a prompt, counted independently."""
  body = prompt[:-1]
  if name in ('copy', 'reverse', 'duplicate_string', 'sort', 'parity'):
    return len(body)
  if name == 'binary_addition':
    return len(body.split('+')[0])
  if name == 'modular_arithmetic':
    return len(re.findall(r'\d', body))
  if name == 'associative_recall':
    return len(body.split('|')[0]) // 2
  if name == 'passkey':
    return len(KEY_RE.sub('', prompt[:-len(QUESTION)])) // 16
  if name == 'solve_equation':
    return len(body.split('|')[0])
  if name in CHOMSKY:
    return len(body)
  if name == 'induction_heads':
    return len(body) - 1  # less the trigger inside
  if name == 'mqar':
    return len(body.split('|')[0]) // 2
  if name == 'flip_flop':
    return len(body) // 2  # the instructions before the final 'r'
  if name == 'multi_key_niah':
    return len(NIAH_RE.sub('', prompt[:prompt.index('what is')])) // 16
  if name == 'variable_tracking':
    return len(VT_RE.sub('', prompt[:prompt.index('which')])) // 16
  if name in test_babilong.NAMES:
    return test_babilong.length_of(name, prompt)
  if name in test_aggregation.NAMES:
    return test_aggregation.length_of(name, prompt)
  raise AssertionError(name)


def _examples(batch):
  """Texts of the real tokens of each row (inputs plus the last target)."""
  out = []
  for x, y in zip(batch['inputs'], batch['targets']):
    ids = list(x[:1]) + list(y)
    ids = ids[:ids.index(EOD)] if EOD in ids else ids
    out.append(tokenizer.decode(ids))
  return out


def _check_batch(name, tc, batch, lengths=None):
  """Answers right, weights exactly on the answer targets, shift by one."""
  x, y, w = batch['inputs'], batch['targets'], batch['weights']
  assert x.dtype == y.dtype == batch['positions'].dtype == np.int32
  assert w.dtype == np.float32 and x.shape == y.shape == w.shape
  for i, text in enumerate(_examples(batch)):
    prompt, answer = _split(text)
    assert answer == _solve(name, prompt, tc), text
    n = _length_of(name, prompt, tc)
    if lengths is not None:
      assert n == lengths[i]
    t = tasks.sequence_length(tc, n)
    assert t == len(text)  # prompt + answer + EOD, minus the shift
    np.testing.assert_array_equal(x[i, 1:t], y[i, :t - 1])
    expect = np.zeros(x.shape[1], np.float32)
    expect[len(prompt) - 1:t] = 1.0
    np.testing.assert_array_equal(w[i], expect)
    assert y[i, t - 1] == EOD
    assert tokenizer.decode(y[i][w[i] > 0][:-1]) == answer
  return x.shape[1]


@pytest.mark.parametrize('name', NAMES)
def test_eval_answers_are_correct_and_deterministic(name):
  c = _config(name)
  for n in (1, 2, 5, 11):
    a = tasks.eval_batch(c, length=n, count=6, seed=3, depth=0.5)
    b = tasks.eval_batch(c, length=n, count=6, seed=3, depth=0.5)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
    width = _check_batch(name, c.task, a, [n] * 6)
    assert width == tasks.sequence_length(c.task, n)
  a = tasks.eval_batch(c, length=12, count=8, seed=3)
  b = tasks.eval_batch(c, length=12, count=8, seed=4)
  assert not np.array_equal(a['inputs'], b['inputs'])


@pytest.mark.parametrize('name', NAMES)
def test_train_batch_pure_in_range_and_correct(name):
  c = _config(name, train_min_length=2, train_max_length=6)
  c.train.seq_len = tasks.sequence_length(c.task, 6) + 3  # some padding
  a = tasks.train_batch(c, step=5, batch=16)
  b = tasks.train_batch(c, step=5, batch=16)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert a['inputs'].shape == (16, c.train.seq_len)
  _check_batch(name, c.task, a)
  ns = [_length_of(name, _split(t)[0], c.task) for t in _examples(a)]
  assert min(ns) >= 2 and max(ns) <= 6 and len(set(ns)) > 1
  other = tasks.train_batch(c, step=6, batch=16)
  assert not np.array_equal(a['inputs'], other['inputs'])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), step=st.integers(0, 10**6),
       lo=st.integers(1, 9), span=st.integers(0, 9),
       name=st.sampled_from(NAMES))
def test_train_batch_property(seed, step, lo, span, name):
  c = _config(name, train_min_length=lo, train_max_length=lo + span,
              alphabet_size=52, eval_lengths=(1,))
  c.seed = seed
  c.positions.train = 'randomized'
  c.train.seq_len = tasks.sequence_length(c.task, lo + span)
  c.positions.max_position = 2 * c.train.seq_len
  assert tasks.check(c) is None
  a = tasks.train_batch(c, step=step, batch=4)
  b = tasks.train_batch(c, step=step, batch=4)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  _check_batch(name, c.task, a)
  for text, pos in zip(_examples(a), a['positions']):
    n = _length_of(name, _split(text)[0], c.task)
    assert lo <= n <= lo + span
    t = tasks.sequence_length(c.task, n)
    assert np.all(np.diff(pos[:t]) > 0) and pos.max() < c.positions.max_position
    assert np.all(pos[t:] == pos[t - 1])


@pytest.mark.parametrize('depth', [0.0, 0.25, 0.5, 0.75, 1.0])
def test_passkey_key_at_requested_depth(depth):
  c = _config('passkey')
  for n in (1, 4, 7, 10):
    batch = tasks.eval_batch(c, length=n, count=4, seed=0, depth=depth)
    for text in _examples(batch):
      prompt, answer = _split(text)
      where = KEY_RE.search(prompt).start()
      assert where == 16 * int(np.floor(depth * n + 0.5))
      assert len(KEY_RE.findall(prompt)) == 1 and answer == KEY_RE.search(
          prompt).group(1)


def test_formats_read_as_documented():
  rng = np.random.default_rng(0)
  c = _config('binary_addition')
  prompt, answer = tasks.example(c.task, 3, rng)
  assert re.fullmatch(r'[01]{3}\+[01]{3}=', prompt)
  assert re.fullmatch(r'[01]{4}', answer)
  assert tasks.modular_value([3, 4, 2], '+*', 5) == (3 + 4 * 2) % 5
  assert tasks.modular_value([3, 4, 2, 1], '-*-', 5) == (3 - 4 * 2 - 1) % 5
  c = _config('associative_recall', alphabet_size=52)
  prompt, answer = tasks.example(c.task, 5, rng)
  assert re.fullmatch(r'([a-zA-Z]\d){5}\|[a-zA-Z]=', prompt)
  keys = prompt[:10:2]
  assert len(set(keys)) == 5


# The input and answer alphabets of the Chomsky-hierarchy tasks.
FORMATS = {
    'even_pairs': (r'[01]+', r'[01]'),
    'cycle_navigation': (r'[-0+]+', r'[0-4]'),
    'odds_first': (r'[01]+', r'[01]+'),
    'missing_duplicate_string': (r'1|[01]*\?[01]*_?', r'[01]'),
    'solve_equation': (r'0{1,2}\|x|[0-4x()+-]+=[0-4]\|x', r'[0-4]'),
    'binary_multiplication': (r'[01]{1,2}|[01]+\*[01]+', r'[01]*#0*'),
    'compute_sqrt': (r'[01]+', r'[01]+'),
    'bucket_sort': (r'[0-4]+', r'[0-4]+'),
    'stack_manipulation': (r'[01]+[-ab]*', r'[01]*#0*'),
    'modular_arithmetic_brackets': (r'[0-4()+-]+', r'[0-4]'),
}


def _check_input_distribution(name, n, body):
  """What the reference code guarantees of its inputs, checked by hand."""
  if name == 'missing_duplicate_string' and n > 1:
    assert body.count('?') == 1 and body.count('_') == n % 2
    ww, half = body.rstrip('_'), n // 2
    assert len(ww) == 2 * half
    for i in range(half):
      if '?' not in (ww[i], ww[i + half]):
        assert ww[i] == ww[i + half], body
  if name == 'solve_equation' and n >= 3:
    lhs, rhs = body[:-2].split('=')
    assert len(lhs) == n - 2 and lhs.count('x') == 1 and '*' not in lhs
    assert len(rhs) == 1
  if name == 'binary_multiplication':
    if n <= 2:
      assert body != '1' * n  # a number in [0, 2**n - 2]
    else:
      a, b = body.split('*')
      assert a and b and len(a) + len(b) == n - 1
      assert int(a[::-1], 2) > 0 and int(b[::-1], 2) > 0
  if name == 'compute_sqrt':
    assert int(body, 2) >= 1
  if name == 'stack_manipulation' and n > 1:
    stack = len(body) - len(body.lstrip('01'))
    assert 1 <= stack <= n - 1
  if name == 'modular_arithmetic_brackets':
    depth = 0
    for c in body:
      depth += {'(': 1, ')': -1}.get(c, 0)
      assert depth >= 0
    assert depth == 0


@pytest.mark.parametrize('name', CHOMSKY)
def test_chomsky_answers_recomputed_independently(name):
  """Many examples of every length 1..40: the answer is recomputed from the
  prompt's text alone, the input alphabet and structure are the reference
  code's, and every length has ``per * n + extra`` characters."""
  tc = _config(name).task
  task = tasks.TASKS[name]
  rng = np.random.default_rng(sorted(tasks.TASKS).index(name))
  prompt_re, answer_re = (re.compile(f) for f in FORMATS[name])
  answers = Counter()
  for n in range(1, 41):
    for _ in range(12):
      prompt, answer = tasks.example(tc, n, rng)
      assert len(prompt + answer) == task.per * n + task.extra
      assert prompt.endswith('=') and '=' not in answer
      body = prompt[:-1]
      assert prompt_re.fullmatch(body), prompt
      assert answer_re.fullmatch(answer), (prompt, answer)
      assert _length_of(name, prompt, tc) == n
      assert answer == _solve(name, prompt, tc), (prompt, answer)
      _check_input_distribution(name, n, body)
      answers[answer] += 1
  if answer_re.pattern in (r'[01]', r'[0-4]'):  # classes: all of them occur
    assert len(answers) == (2 if answer_re.pattern == r'[01]' else 5)
  else:
    assert len(answers) > 100  # varied answers


# Worked by hand: the n = 3 examples of lmx.data.tasks' table (the
# generator must produce them, with exactly this answer), then longer ones,
# several the reference code's own docstring examples in lmx's characters.
HAND_N3 = [
    ('even_pairs', '011=', '1'),
    ('even_pairs', '010=', '0'),
    ('cycle_navigation', '-0-=', '3'),
    ('cycle_navigation', '+++=', '3'),
    ('odds_first', '011=', '101'),
    ('odds_first', '100=', '010'),
    ('missing_duplicate_string', '0?_=', '0'),
    ('missing_duplicate_string', '?1_=', '1'),
    ('solve_equation', 'x=3|x=', '3'),
    ('binary_multiplication', '1*1=', '1#0'),
    ('compute_sqrt', '111=', '010'),
    ('compute_sqrt', '100=', '010'),
    ('compute_sqrt', '011=', '001'),
    ('bucket_sort', '402=', '024'),
    ('stack_manipulation', '01b=', '110#'),
    ('stack_manipulation', '1--=', '#000'),
    ('stack_manipulation', '0a-=', '0#00'),
    ('modular_arithmetic_brackets', '(3)=', '3'),
]
HAND = HAND_N3 + [
    ('even_pairs', '001110=', '0'),    # reference: 1 '10' and 1 '01'
    ('even_pairs', '0101001=', '1'),   # reference: 2 '10' and 3 '01'
    ('cycle_navigation', '+0-00=', '0'),
    ('cycle_navigation', '+-0--=', '3'),  # reference: 1 -1 0 -1 -1 -> 3
    ('cycle_navigation', '-------=', '3'),  # -7 = 3 mod 5
    ('odds_first', '00110101=', '01110100'),  # x[1::2] + x[::2]
    ('odds_first', '1=', '1'),
    ('missing_duplicate_string', '01100?10=', '1'),  # reference: 01100210
    ('missing_duplicate_string', '1011?1_=', '0'),   # reference: 1011213
    ('missing_duplicate_string', '1=', '1'),
    ('solve_equation', '(x-1)=3|x=', '4'),
    ('solve_equation', '((2+x)-(-4))=0|x=', '4'),  # 2 + 4 + 4 = 10
    ('solve_equation', '00|x=', '0'),  # the reference's n < 3 input
    ('binary_multiplication', '101*11=', '1111#0'),  # 5 * 3 = 15
    # The reference's examples: 4 * 22 = 88 and 9 * 32 = 288.
    ('binary_multiplication', '001*01101=', '0001101#0'),
    ('binary_multiplication', '1001*000001=', '000001001#0'),
    ('binary_multiplication', '1=', '#'),
    ('binary_multiplication', '10=', '0#'),
    ('compute_sqrt', '100101=', '000110'),  # isqrt(37) = 6
    ('compute_sqrt', '1=', '1'),
    ('compute_sqrt', '11111111=', '00001111'),  # isqrt(255) = 15
    ('bucket_sort', '10204112=', '00111224'),  # the reference's example
    # The reference's: 0 1 1 0 PUSH 1 POP POP -> 1 1 0 2 0 0 0 0.
    ('stack_manipulation', '0110b--=', '110#0000'),
    ('stack_manipulation', '110---=', '#000000'),  # the stack emptied
    ('stack_manipulation', '1-----=', '#000000'),  # pops on empty: ignored
    ('stack_manipulation', '0=', '0#'),
    ('modular_arithmetic_brackets', '(1-3)=', '3'),
    ('modular_arithmetic_brackets', '((-2)-(4+-1))=', '0'),  # -2-3 = -5
    ('modular_arithmetic_brackets', '-4=', '1'),
]


@pytest.mark.parametrize('name, prompt, answer', HAND)
def test_chomsky_hand_worked(name, prompt, answer):
  tc = _config(name).task
  assert _solve(name, prompt, tc) == answer
  task = tasks.TASKS[name]
  n = _length_of(name, prompt, tc)
  assert len(prompt + answer) == task.per * n + task.extra


@pytest.mark.parametrize('name', sorted({h[0] for h in HAND_N3}))
def test_chomsky_generator_gives_the_hand_worked_examples(name):
  tc = _config(name).task
  rng = np.random.default_rng(1)
  seen = {}
  for _ in range(1500):
    prompt, answer = tasks.example(tc, 3, rng)
    assert seen.setdefault(prompt, answer) == answer
  for task_name, prompt, answer in HAND_N3:
    if task_name == name:
      assert seen.get(prompt) == answer, (prompt, answer)


FILLER_RE = ('(?:grass is green\\. |sky is so blue\\. |the sun shines\\. '
             '|here we go now\\. |back and forth\\. )')
# The input and answer alphabets of the recall and state-tracking tasks
# (with their configs: induction_heads 14 symbols, mqar keys a-z and
# values A-Z).
RECALL_FORMATS = {
    'induction_heads': (r'[a-n]*=[a-n]+=', r'[a-n]'),
    'mqar': (r'([a-z][A-Z])+\|[a-z]+=', r'[A-Z]+'),
    'flip_flop': (r'w[01]([wir][01])*r=', r'[01]'),
    'multi_key_niah': (
        f'({FILLER_RE}|the pass key of [a-z]{{3}} is \\d{{5}}\\. )*'
        r'what is the pass key of [a-z]{3}\? ', r'\d{5}'),
    'variable_tracking': (
        f'({FILLER_RE}|VAR [A-Z]{{5}} = (\\d{{5}}|VAR [A-Z]{{5}})\\. )*'
        r'which variables are assigned the value \d{5}\? ',
        r'[A-Z]{5}( [A-Z]{5}){4}'),
}
RULER_DEPTHS = [int(d) for d in np.round(np.linspace(0, 100, 40))]


def _fillers_before(prompt, at):
  """How many filler sentences precede character ``at`` of a prompt."""
  return len(re.findall(FILLER_RE, prompt[:at]))


def _check_recall_input(name, n, prompt):
  """What the reference generators guarantee of their inputs."""
  body = prompt[:-1]
  if name == 'induction_heads':
    assert prompt.count('=') == 2
    if n > 1:  # as in H3, a symbol follows the target
      assert len(body) - body.index('=') - 2 >= 1
  if name == 'mqar':
    pairs, queries = body.split('|')
    keys, values = pairs[::2], pairs[1::2]
    assert len(set(keys)) == len(set(values)) == n
    assert sorted(queries) == sorted(keys)  # every key once
  if name == 'flip_flop':
    memory = None
    for i in range(0, len(body) - 1, 2):
      op, bit = body[i], body[i + 1]
      if op == 'w':
        memory = bit
      if op == 'r':
        assert bit == memory, prompt  # a read shows the last write
  if name == 'multi_key_niah':
    keys = list(NIAH_RE.finditer(prompt))
    assert len(keys) == 4 and len({m.group(1) for m in keys}) == 4
    haystack = NIAH_RE.sub('', prompt[:prompt.index('what is')])
    assert haystack == ''.join(
        ('grass is green. ', 'sky is so blue. ', 'the sun shines. ',
         'here we go now. ', 'back and forth. ')[i % 5] for i in range(n))
    allowed = {n * d // 100 for d in RULER_DEPTHS}
    for m in keys:
      assert _fillers_before(prompt, m.start()) in allowed
  if name == 'variable_tracking':
    lines = list(VT_RE.finditer(prompt))
    assert len(lines) == 5 and len({m.group(1) for m in lines}) == 5
    assert lines[0].group(2).isdigit()
    assert 10000 <= int(lines[0].group(2)) <= 99998
    for a, b in zip(lines, lines[1:]):  # the chain in order
      assert b.group(2) == 'VAR ' + a.group(1)
    before = [_fillers_before(prompt, m.start()) for m in lines]
    if n >= 5:  # distinct filler sentences after each statement
      assert len(set(before)) == 5 and max(before) < n
    assert NIAH_RE.search(prompt) is None


@pytest.mark.parametrize('name', RECALL)
def test_recall_answers_recomputed_independently(name):
  """Examples of every length 1..26: the answer is recomputed from the
  prompt's text alone, the structure is the reference generator's, and
  every length has ``per * n + extra`` characters."""
  tc = _config(name).task
  task = tasks.TASKS[name]
  rng = np.random.default_rng(sorted(tasks.TASKS).index(name))
  prompt_re, answer_re = (re.compile(f) for f in RECALL_FORMATS[name])
  answers = Counter()
  for n in range(1, 27):
    for _ in range(8):
      prompt, answer = tasks.example(tc, n, rng)
      assert len(prompt + answer) == task.per * n + task.extra
      assert _split(prompt + answer) == (prompt, answer)
      assert prompt_re.fullmatch(prompt), prompt
      assert answer_re.fullmatch(answer), (prompt, answer)
      assert _length_of(name, prompt, tc) == n
      assert answer == _solve(name, prompt, tc), (prompt, answer)
      _check_recall_input(name, n, prompt)
      answers[answer] += 1
  if name == 'flip_flop':
    assert set(answers) == {'0', '1'}
  elif name == 'induction_heads':
    assert len(answers) == 14  # every symbol is a target
  else:
    assert len(answers) > 100


@pytest.mark.parametrize('name', RECALL)
def test_recall_split_answer(name):
  c = _config(name)
  batch = tasks.eval_batch(c, length=6, count=3, seed=2)
  for text, row in zip(_examples(batch), batch['inputs']):
    assert tasks.split_answer(c.task, row) == _split(text)  # EOD cut


@pytest.mark.parametrize('p', [0.8, 0.98, 0.1])
def test_flip_flop_mixes(p):
  """FFL(p): after the first write, ignore with probability p, write and
  read with (1 - p) / 2 each (the paper's 0.8, sparse 0.98, dense 0.1)."""
  tc = _config('flip_flop', flip_flop_p_ignore=p).task
  rng = np.random.default_rng(5)
  ops = Counter()
  for _ in range(100):
    prompt, _ = tasks.example(tc, 41, rng)
    assert prompt[0] == 'w'
    ops.update(prompt[2:-2:2])
  total = sum(ops.values())
  assert total == 100 * 40
  assert abs(ops['i'] / total - p) < 0.03
  assert abs(ops['w'] - ops['r']) / total < 0.03


# Worked by hand (the generator's examples and others), and the n = 3
# examples of lmx.data.tasks' table, which the generator gives for these
# seeds.
NIAH_N3 = ('the pass key of wqn is 56976. the pass key of hib is 55928. '
           'grass is green. the pass key of bae is 60385. sky is so blue. '
           'the pass key of vqx is 07781. the sun shines. '
           'what is the pass key of hib? ')
VT_N3 = ('VAR WQNHI = 87165. grass is green. VAR BBAEV = VAR WQNHI. '
         'sky is so blue. VAR QXNPZ = VAR BBAEV. VAR SQOOY = VAR QXNPZ. '
         'VAR HVRAK = VAR SQOOY. the sun shines. '
         'which variables are assigned the value 87165? ')
RECALL_N3 = [  # (name, seed, prompt, answer)
    ('induction_heads', 1, 'g=hk=', 'h'),
    ('mqar', 0, 'pZnBuA|pnu=', 'ZBA'),
    ('flip_flop', 184, 'w0w1i0r=', '1'),
    ('multi_key_niah', 0, NIAH_N3, '55928'),
    ('variable_tracking', 0, VT_N3, 'WQNHI BBAEV QXNPZ SQOOY HVRAK'),
]
RECALL_HAND = [(r[0], r[2], r[3]) for r in RECALL_N3] + [
    ('induction_heads', '=a=', 'a'),       # n = 1
    ('induction_heads', 'abca=bcab=', 'b'),  # the symbol after the trigger
    ('induction_heads', 'cc=ac=', 'a'),
    ('mqar', 'aB|a=', 'B'),
    ('mqar', 'aBcDeF|cea=', 'DFB'),
    # Zoology's docstring: keys 2 4, values 8 7, queries 4 then 2.
    ('mqar', 'bHdG|db=', 'GH'),
    ('flip_flop', 'w1r=', '1'),
    ('flip_flop', 'w0w1i1i0r=', '1'),  # the repository's w0w1i1i0r1
    ('flip_flop', 'w1i0i0w0r0i1r=', '0'),
    ('flip_flop', 'w0' + 'i1' * 20 + 'r=', '0'),  # sparse: ignores
    ('flip_flop', 'w0w1w0w1r1w0r=', '0'),         # dense: writes
    ('multi_key_niah',
     'the pass key of abc is 12345. grass is green. '
     'the pass key of xyz is 00000. the pass key of foo is 99999. '
     'the pass key of bar is 31415. what is the pass key of bar? ', '31415'),
    ('variable_tracking',
     'VAR AAAAA = 10000. grass is green. VAR BBBBB = VAR AAAAA. '
     'sky is so blue. VAR CCCCC = VAR BBBBB. the sun shines. '
     'VAR DDDDD = VAR CCCCC. here we go now. VAR EEEEE = VAR DDDDD. '
     'back and forth. which variables are assigned the value 10000? ',
     'AAAAA BBBBB CCCCC DDDDD EEEEE'),
]


@pytest.mark.parametrize('name, prompt, answer', RECALL_HAND)
def test_recall_hand_worked(name, prompt, answer):
  tc = _config(name).task
  assert _solve(name, prompt, tc) == answer
  task = tasks.TASKS[name]
  n = _length_of(name, prompt, tc)
  assert len(prompt + answer) == task.per * n + task.extra


@pytest.mark.parametrize('name, seed, prompt, answer', RECALL_N3)
def test_recall_generator_gives_the_documented_examples(name, seed, prompt,
                                                        answer):
  tc = _config(name).task
  got = tasks.example(tc, 3, np.random.default_rng(seed))
  assert got == (prompt, answer)


@pytest.mark.parametrize('name', NAMES)
def test_sequence_and_max_length_agree(name):
  tc = _config(name).task
  for seq_len in range(1, 120):
    n = tasks.max_length(tc, seq_len)
    assert n == 0 or tasks.sequence_length(tc, n) <= seq_len
    assert tasks.sequence_length(tc, n + 1) > seq_len


@pytest.mark.parametrize('name', NAMES)
def test_task_configs(name):
  c = importlib.import_module(f'configs.tasks.{name}').get_config()
  assert c.name == name and c.task.name == name
  assert tasks.check(c) is None
  longest = max(tasks.eval_lengths(c.task))
  multiple = 64 if name == 'induction_heads' else 5
  assert longest == multiple * c.task.train_max_length
  assert c.task.eval_multiple == multiple
  assert len(tasks.eval_lengths(c.task)) <= 25 or multiple == 5
  assert c.positions.max_position >= tasks.sequence_length(c.task, longest)
  c.task.train_max_length += 3  # seq_len and max_position follow
  assert c.train.seq_len == tasks.sequence_length(c.task,
                                                  c.task.train_max_length)
  assert c.positions.max_position == tasks.sequence_length(
      c.task, max(tasks.eval_lengths(c.task)))
  assert tasks.check(_config(name)) is None


def test_eval_lengths_default_grid():
  tc = _config('copy', train_max_length=6).task
  assert tasks.eval_lengths(tc) == list(range(1, 31))
  tc.eval_stride = 4
  assert tasks.eval_lengths(tc) == [1, 4, 6, 8, 12, 16, 20, 24, 28, 30]
  tc.eval_lengths = (9, 3, 9)
  assert tasks.eval_lengths(tc) == [3, 9]


@pytest.mark.parametrize('change, words', [
    ({'name': 'nope'}, ['Unknown task', 'reverse', 'passkey']),
    ({'alphabet_size': 60}, ['alphabet_size=60', '52']),
    ({'alphabet_size': 0}, ['alphabet_size', '>= 1']),
    ({'name': 'modular_arithmetic', 'modulus': 11}, ['modulus=11', '[2, 10]']),
    ({'name': 'solve_equation', 'modulus': 11},
     ['solve_equation', 'modulus=11', '[2, 10]']),
    ({'name': 'modular_arithmetic_brackets', 'modulus': 1},
     ['modular_arithmetic_brackets', 'modulus=1']),
    ({'name': 'associative_recall', 'alphabet_size': 10, 'train_max_length': 4},
     ['associative_recall', 'length 20', 'alphabet_size=10']),
    ({'name': 'associative_recall', 'alphabet_size': 3, 'train_max_length': 4,
      'eval_lengths': (2,)}, ['train_max_length', 'alphabet_size=3']),
    ({'train_max_length': 40}, ['train.seq_len >= 81', 'train_max_length']),
    ({'train_min_length': 5, 'train_max_length': 4}, ['train_min_length=5']),
    ({'eval_lengths': (3, 0)}, ['eval_lengths']),
    ({'eval_examples': 0}, ['eval_examples']),
    ({'name': 'passkey', 'depths': (0.5, 1.5)}, ['depths']),
    ({'name': 'flip_flop', 'flip_flop_p_ignore': 1.5},
     ['flip_flop_p_ignore', '[0, 1]']),
    ({'name': 'flip_flop', 'flip_flop_p_ignore': -0.1},
     ['flip_flop_p_ignore']),
    ({'name': 'mqar', 'alphabet_size': 20, 'train_max_length': 4},
     ['mqar', 'length 20', 'alphabet_size=20', 'only 10']),
])
def test_check_messages(change, words):
  c = _config('copy')
  c.train.seq_len = 64
  for key, value in change.items():
    c.task[key] = value
  msg = tasks.check(c)
  assert msg is not None
  for word in words:
    assert word in msg, msg


def _oracle(name, tc, shift=0):
  """apply_fn giving one-hot logits of the true next token (+ shift)."""
  def next_tokens(tokens):
    tokens = np.asarray(tokens)
    out = np.full(tokens.shape, EOD, np.int32)
    for i, row in enumerate(tokens):
      ids = list(row)
      ids = ids[:ids.index(EOD)] if EOD in ids else ids
      text = tokenizer.decode(ids)
      if '=' not in text and '? ' not in text:
        continue  # a padding row
      prompt, _ = _split(text)
      seq = list(tokenizer.encode(prompt + _solve(name, prompt, tc))) + [EOD]
      m = min(len(seq) - 1, out.shape[1])
      out[i, :m] = seq[1:m + 1]
    return (out + shift) % tokenizer.VOCAB_SIZE

  def apply_fn(params, tokens, positions):
    del params, positions
    nxt = jax.pure_callback(
        next_tokens, jax.ShapeDtypeStruct(tokens.shape, jnp.int32), tokens)
    return jax.nn.one_hot(nxt, tokenizer.VOCAB_SIZE) * 30.0
  return apply_fn


@pytest.mark.parametrize('name', ['reverse', 'binary_addition', 'passkey',
                                  'babilong_count', 'common_words'])
def test_evaluate_task_oracle_and_wrong(name):
  c = _config(name, eval_examples=5)
  c.eval.batch_tokens = 2 * tasks.sequence_length(c.task, 3)  # chunks, pads
  lengths = [1, 2, 3, 7]
  r = task_eval.evaluate_task(c, _oracle(name, c.task), None, lengths=lengths)
  assert r['kind'] == 'task' and r['task'] == name
  assert r['train_length'] == c.task.train_max_length
  assert [x['length'] for x in r['results']] == lengths
  depths = len(c.task.depths) if name == 'passkey' else 1
  for x in r['results']:
    assert x['accuracy'] == 1.0 and x['token_accuracy'] == 1.0
    assert x['loss'] < 1e-3 and x['examples'] == 5 * depths
  bad = task_eval.evaluate_task(c, _oracle(name, c.task, shift=1), None,
                                lengths=lengths)
  for x in bad['results']:
    assert x['accuracy'] == 0.0 and x['token_accuracy'] == 0.0
  if name == 'passkey':
    pk = r['passkey']
    assert pk['lengths'] == lengths and pk['depths'] == list(c.task.depths)
    assert np.array(pk['accuracy']).shape == (len(c.task.depths),
                                              len(lengths))
    assert np.all(np.array(pk['accuracy']) == 1.0)
  else:
    assert 'passkey' not in r


def test_table_and_plots(tmp_path):
  c = _config('passkey', eval_examples=2, depths=(0.0, 1.0))
  r = task_eval.evaluate_task(c, _oracle('passkey', c.task), None,
                              lengths=[1, 2, 4])
  table = task_eval.format_task_table(r)
  assert '| 4 |' in table and 'depth' in table and '1.000' in table
  task_eval.plot_accuracy_vs_length([r, r], str(tmp_path / 'acc.png'))
  task_eval.plot_passkey_heatmap(r, str(tmp_path / 'heat.png'))
  assert os.path.getsize(tmp_path / 'acc.png') > 1000
  assert os.path.getsize(tmp_path / 'heat.png') > 1000


def test_cape_task_batches_train_on_real_positions_and_evaluate_on_integers():
  # Training: each example's own CAPE draw (float32), padding repeating the
  # last; evaluation with positions.eval='train': contiguous integers.
  c = _config(NAMES[0], train_min_length=2, train_max_length=6)
  c.model.position = 'sinusoidal'
  c.positions.train = 'cape'
  c.train.seq_len = tasks.sequence_length(c.task, 6) + 3  # some padding
  a = tasks.train_batch(c, step=5, batch=8)
  pos = a['positions']
  assert pos.dtype == np.float32 and np.any(pos % 1 != 0)
  np.testing.assert_array_equal(pos, tasks.train_batch(c, step=5,
                                                       batch=8)['positions'])
  for text, p in zip(_examples(a), pos):
    t = tasks.sequence_length(c.task, _length_of(NAMES[0], _split(text)[0],
                                                 c.task))
    assert np.all(np.diff(p[:t]) >= 0) and np.all(p[t:] == p[t - 1])
  e = tasks.eval_batch(c, length=4, count=3, seed=0)['positions']
  width = tasks.sequence_length(c.task, 4)
  assert e.dtype == np.int32 and e.tolist() == [list(range(width))] * 3
