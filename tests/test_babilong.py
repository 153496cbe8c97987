"""BABILong-style tasks (lmx.data.babilong): every answer recomputed from the
prompt's text by a simulation written here, the bAbI rules and the
distractors checked, and one tiny run trained and evaluated."""

import importlib
import re
from collections import Counter

import numpy as np
import pytest

from lmx.data import tasks
from lmx.evaluation import task_accuracy
from lmx.training import run_state, trainer

NAMES = ('babilong_qa1', 'babilong_qa2', 'babilong_count')
FACT_RE = re.compile(r'([a-z]{4}) (moved to|picked up|discarded) the '
                     r'([a-z]+)\. ')
FILLERS = ('grass is green. ', 'sky is so blue. ', 'the sun shines. ',
           'here we go now. ', 'back and forth. ')
QUESTIONS = {
    'babilong_qa1': re.compile(r'where is ([a-z]{4})\? '),
    'babilong_qa2': re.compile(r'where is the ([a-z]{5})\? '),
    'babilong_count': re.compile(r'how many objects is ([a-z]{4}) '
                                 r'carrying\? '),
}
FACTS = {'babilong_qa1': 6, 'babilong_qa2': 8, 'babilong_count': 8}


def _config(name, **task_fields):
  c = importlib.import_module(f'configs.tasks.{name}').get_config('size=tiny')
  for key, value in task_fields.items():
    c.task[key] = value
  return c


def parse(name, prompt):
  """(facts [(person, verb, thing)], asked, the text before the question)."""
  m = re.search(QUESTIONS[name].pattern + '$', prompt)
  assert m is not None, prompt
  body = prompt[:m.start()]
  return FACT_RE.findall(body), m.group(1), body


def simulate(facts):
  """The world after the facts: (place of each person, holder of each
  object, place of each object), asserting bAbI's rules on the way."""
  place, holder, at = {}, {}, {}
  for who, verb, thing in facts:
    if verb == 'moved to':
      assert place.get(who) != thing, 'a move goes somewhere else'
      place[who] = thing
      for obj, h in holder.items():
        if h == who:
          at[obj] = thing
    else:
      assert who in place, 'a person moves before handling anything'
      if verb == 'picked up':
        assert holder.get(thing) is None, 'nobody holds what is picked up'
        assert at.get(thing, place[who]) == place[who], 'it is there'
        holder[thing], at[thing] = who, place[who]
      else:
        assert holder.get(thing) == who, 'one drops what one holds'
        holder[thing] = None
  return place, holder, at


def solve(name, prompt):
  """The answer to a BABILong prompt, from its text alone."""
  facts, asked, _ = parse(name, prompt)
  place, holder, at = simulate(facts)
  if name == 'babilong_qa1':
    return place[asked]
  if name == 'babilong_qa2':
    return at[asked]
  return str(sum(1 for h in holder.values() if h == asked))


def length_of(name, prompt):
  """n: the filler sentences left once the facts and question are cut."""
  _, _, body = parse(name, prompt)
  rest = FACT_RE.sub('', body)
  n = len(rest) // 16
  assert rest == ''.join(FILLERS[i % 5] for i in range(n)), prompt
  return n


def _check_story(name, prompt, answer):
  """The structure the generator promises: the fact count, 3 people, the
  person or object asked really needs more than one fact."""
  facts, asked, _ = parse(name, prompt)
  assert len(facts) == FACTS[name]
  people = {w for w, _, _ in facts}
  assert 2 <= len(people) <= 3
  moves = Counter(w for w, v, _ in facts if v == 'moved to')
  if name == 'babilong_qa1':
    assert all(v == 'moved to' for _, v, _ in facts)
    assert moves[asked] >= 2  # an earlier move is superseded
    places = [t for w, _, t in facts if w == asked]
    assert places[-1] == answer and len(set(places)) >= 2
    assert people - {asked}  # moves of others: distractors
  if name == 'babilong_qa2':
    handled = [w for w, v, t in facts if t == asked]
    assert handled, 'the object asked was picked up'
    assert moves[handled[-1]] >= 2
    assert people - {handled[-1]}
  if name == 'babilong_count':
    assert any(w == asked and v == 'picked up' for w, v, _ in facts)
    assert people - {asked}


@pytest.mark.parametrize('name', NAMES)
def test_answers_recomputed_from_the_text(name):
  """Many seeds and every length 1..30: the answer is the simulation's, the
  length is exactly ``per * n + extra``, the rules of bAbI hold."""
  tc = _config(name).task
  task = tasks.TASKS[name]
  answers = Counter()
  for n in range(1, 31):
    rng = np.random.default_rng([n, 11])
    for _ in range(10):
      prompt, answer = tasks.example(tc, n, rng)
      assert len(prompt + answer) == task.per * n + task.extra
      assert length_of(name, prompt) == n
      assert solve(name, prompt) == answer, (prompt, answer)
      _check_story(name, prompt, answer)
      answers[answer] += 1
  if name == 'babilong_count':
    assert {'0', '1', '2'} <= set(answers)
  else:  # every place is an answer, none most of the time
    assert len(answers) == 6 and max(answers.values()) < 0.3 * 300


@pytest.mark.parametrize('name', NAMES)
def test_facts_are_scattered_at_random_depths(name):
  """BABILong's slots: uniform among the n + 1 gaps, with replacement."""
  tc = _config(name).task
  rng = np.random.default_rng(4)
  n, gaps = 9, Counter()
  for _ in range(200):
    prompt, _ = tasks.example(tc, n, rng)
    for m in FACT_RE.finditer(prompt):
      gaps[len(re.findall('|'.join(re.escape(f) for f in FILLERS),
                          prompt[:m.start()]))] += 1
  assert set(gaps) == set(range(n + 1))  # every gap, first and last too
  total = sum(gaps.values())
  for g in range(n + 1):  # uniform: 1/10 each, within sampling noise
    assert abs(gaps[g] / total - 1 / (n + 1)) < 0.03


def _shortcuts(name, prompt):
  """Answers a model could give without combining the facts right."""
  facts, asked, _ = parse(name, prompt)
  last_place = [t for _, v, t in facts if v == 'moved to'][-1]
  if name == 'babilong_qa1':  # the last move of anyone; the asked one's first
    first = [t for w, _, t in facts if w == asked][0]
    return {'last move': last_place, 'first move': first}
  if name == 'babilong_qa2':  # the last move of anyone; where it was taken
    taken = None
    for w, v, t in facts:
      if v == 'picked up' and t == asked:
        taken = simulate(facts[:facts.index((w, v, t)) + 1])[0][w]
    return {'last move': last_place, 'where taken': taken}
  gets = sum(1 for w, v, _ in facts if w == asked and v == 'picked up')
  return {'pick-ups only': str(gets)}


@pytest.mark.parametrize('name', NAMES)
def test_shortcuts_fail_often(name):
  """The distractors and superseded facts matter: each shortcut is wrong on
  a good share of examples (and right on some, so they are real)."""
  tc = _config(name).task
  rng = np.random.default_rng(8)
  right = Counter()
  for _ in range(300):
    prompt, answer = tasks.example(tc, 4, rng)
    for what, guess in _shortcuts(name, prompt).items():
      right[what] += guess == answer
  for what, hits in right.items():
    assert 0 < hits < 0.8 * 300, (what, hits)


HAND = [  # worked by hand
    ('babilong_qa1',
     'mary moved to the garden. grass is green. john moved to the office. '
     'mary moved to the cellar. sky is so blue. where is mary? ', 'cellar'),
    ('babilong_qa1',
     'mary moved to the garden. john moved to the office. '
     'mary moved to the cellar. john moved to the garden. where is john? ',
     'garden'),
    ('babilong_qa2',  # carried: where the holder went last
     'mary moved to the garden. mary picked up the apple. '
     'john moved to the office. mary moved to the cellar. '
     'where is the apple? ', 'cellar'),
    ('babilong_qa2',  # dropped before the move: it stays
     'mary moved to the garden. mary picked up the apple. grass is green. '
     'mary discarded the apple. mary moved to the cellar. '
     'where is the apple? ', 'garden'),
    ('babilong_count',
     'mary moved to the garden. mary picked up the apple. '
     'mary picked up the knife. john moved to the garden. '
     'mary discarded the apple. john picked up the apple. '
     'how many objects is mary carrying? ', '1'),
    ('babilong_count',
     'mary moved to the garden. mary picked up the apple. '
     'mary discarded the apple. how many objects is mary carrying? ', '0'),
]


@pytest.mark.parametrize('name, prompt, answer', HAND)
def test_hand_worked(name, prompt, answer):
  assert solve(name, prompt) == answer


@pytest.mark.parametrize('name', NAMES)
def test_deterministic_per_seed_and_split(name):
  c = _config(name)
  a = tasks.eval_batch(c, length=5, count=4, seed=3)
  b = tasks.eval_batch(c, length=5, count=4, seed=3)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  other = tasks.eval_batch(c, length=5, count=4, seed=4)
  assert not np.array_equal(a['inputs'], other['inputs'])
  assert a['inputs'].shape[1] == tasks.sequence_length(c.task, 5)
  for row in a['inputs']:
    prompt, answer = tasks.split_answer(c.task, row)
    assert prompt.endswith('? ') and solve(name, prompt) == answer


def test_a_tiny_model_trains_and_is_scored():
  """The task's batches through the jitted train step, then the task
  evaluator's exact match on the trained parameters."""
  c = _config('babilong_qa2')
  tx = run_state.make_optimizer(c.train)
  graphdef, params = run_state.init_model(c)
  state = run_state.init_state(c, params, tx)
  step_fn = trainer.make_train_step(graphdef, tx, c)
  for step in range(2):
    batch = tasks.train_batch(c, step=step, batch=4)
    assert batch['weights'].sum() > 0
    state, m = step_fn(state, dict(batch))
    assert np.isfinite(float(m['loss']))
  assert int(state['step']) == 2
  r = task_accuracy.evaluate_task(c, run_state.apply_fn(graphdef),
                                  state['params'], lengths=[4])
  assert r['task'] == 'babilong_qa2' and r['results'][0]['length'] == 4
  x = r['results'][0]
  assert 0.0 <= x['accuracy'] <= x['token_accuracy'] <= 1.0
  assert x['examples'] == c.task.eval_examples and np.isfinite(x['loss'])
