"""BABILong-style reasoning in a haystack: bAbI-like stories in filler text.

Kuratov et al. 2024 ("BABILong: Testing the Limits of LLMs with Long
Context Reasoning-in-a-Haystack", NeurIPS 2024 Datasets and Benchmarks)
take the facts of a bAbI question (Weston et al. 2015) and scatter them,
in their order, among sentences of unrelated background text (PG19 books);
the question comes after the text. In their code (booydar/babilong,
``babilong/babilong_utils.py``, ``NoiseInjectionDataset.__getitem__``) the
facts go between background sentences at slots drawn uniformly, with
replacement, among the ``len(background) + 1`` gaps, then sorted, so
several facts may share a gap and their order is kept.

Here the stories are generated, not read from the bAbI files, over small
fixed vocabularies (``PEOPLE``, ``PLACES``, ``OBJECTS``), and the
background is the passkey filler (``lmx.data.tasks.FILLER``, 16 bytes a
sentence); n counts those filler sentences, as for passkey. The slots are
drawn as BABILong draws them. Three sub-tasks, one registered task each
(their fact count fixes the length, and a task's length must be linear in
n):

- ``babilong_qa1`` (bAbI qa1, single supporting fact): ``QA1_FACTS``
  moves of 3 people; ``where is <person>? ``; the answer is the place of
  that person's last move. The person asked moves at least twice, so an
  earlier move is superseded, and someone else moves too (distractors).
- ``babilong_qa2`` (bAbI qa2, two supporting facts): ``QA2_FACTS`` moves,
  pick-ups and drops of 3 people and 3 objects; ``where is the <object>?
  ``; the answer is the place of the object: where its holder last moved
  while it holds it, or where it was dropped. The object asked was picked
  up, and whoever handled it last moved at least twice, so the answer
  always joins a pick-up or drop with a move, among superseded moves and
  someone else's facts.
- ``babilong_count`` (bAbI qa7, counting): the same kind of story
  (``COUNT_FACTS`` facts); ``how many objects is <person> carrying? ``; the
  answer is a digit, the person's pick-ups less their drops (the person
  asked picked something up; someone else has facts too). bAbI answers
  in words (``none``, ``one``...); a digit keeps the answer's width fixed.

The story's rules are bAbI's world: a person's first fact is a move; a move
goes to another place than the current one; a person picks up only an
object nobody holds that is at their place (or that has not been placed
yet); they drop only what they hold, and it stays where they are. Every
fact sentence has ``FACT_BYTES`` = 26 bytes (names of 4 letters, places
of 6, objects of 5), so ``len(prompt + answer)`` is ``16 n + extra``.
``depth`` is ignored (the facts' depths are drawn, as in BABILong).
"""

from __future__ import annotations

import numpy as np

PEOPLE = ('mary', 'john', 'fred', 'anna', 'bill', 'jeff', 'kate', 'paul')
PLACES = ('garden', 'office', 'garage', 'cellar', 'pantry', 'lounge')
OBJECTS = ('apple', 'bread', 'knife', 'spoon', 'towel', 'watch')
MOVE = '{} moved to the {}. '
GET = '{} picked up the {}. '
DROP = '{} discarded the {}. '
FACT_BYTES = 26
CAST = 3           # people in a story
PROPS = 3          # objects in a story (qa2, count)
QA1_FACTS = 6
QA2_FACTS = 8
COUNT_FACTS = 8
QA1_QUESTION = 'where is {}? '
QA2_QUESTION = 'where is the {}? '
COUNT_QUESTION = 'how many objects is {} carrying? '


def _story(rng, facts: int, objects: bool):
  """``facts`` (kind, person, what) in bAbI's rules, and the final world.

  Each fact picks one of the ``CAST`` people uniformly, then one of the
  actions allowed to them uniformly: a move (to another place, uniform),
  a pick-up of an object they may take, a drop of one they hold. Returns
  (facts, people, props, trace) where trace lists, per fact, the state
  after it: (place of each person, holder of each object, place of each
  object).
  """
  people = [str(p) for p in rng.choice(PEOPLE, size=CAST, replace=False)]
  props = ([str(o) for o in rng.choice(OBJECTS, size=PROPS, replace=False)]
           if objects else [])
  where = {p: None for p in people}
  holder = {o: None for o in props}
  placed = {o: None for o in props}
  story = []
  for _ in range(facts):
    p = people[int(rng.integers(0, CAST))]
    options = [('move', None)]
    if where[p] is not None:
      options += [('get', o) for o in props if holder[o] is None
                  and placed[o] in (None, where[p])]
      options += [('drop', o) for o in props if holder[o] == p]
    kinds = sorted({k for k, _ in options})
    kind = kinds[int(rng.integers(0, len(kinds)))]
    if kind == 'move':
      choices = [x for x in PLACES if x != where[p]]
      what = choices[int(rng.integers(0, len(choices)))]
      where[p] = what
      for o in props:
        if holder[o] == p:
          placed[o] = what
    else:
      some = [o for k, o in options if k == kind]
      what = some[int(rng.integers(0, len(some)))]
      if kind == 'get':
        holder[what], placed[what] = p, where[p]
      else:
        holder[what] = None
    story.append((kind, p, what))
  return story, people, props, (where, holder, placed)


def sentence(kind: str, person: str, what: str) -> str:
  return {'move': MOVE, 'get': GET, 'drop': DROP}[kind].format(person, what)


def _moves(story, person) -> int:
  return sum(1 for k, p, _ in story if k == 'move' and p == person)


def _others(story, person) -> bool:
  """Whether someone else has a fact: a distractor."""
  return any(p != person for _, p, _ in story)


def qa1(rng):
  """(fact sentences, question, answer) of a qa1 story (see the module)."""
  while True:
    story, people, _, (where, _, _) = _story(rng, QA1_FACTS, objects=False)
    asked = [p for p in people if _moves(story, p) >= 2
             and _others(story, p)]
    if asked:
      p = asked[int(rng.integers(0, len(asked)))]
      return ([sentence(*f) for f in story], QA1_QUESTION.format(p),
              where[p])


def qa2(rng):
  """(fact sentences, question, answer) of a qa2 story (see the module)."""
  while True:
    story, _, props, (_, _, placed) = _story(rng, QA2_FACTS, objects=True)
    asked = []
    for o in props:
      handlers = [p for k, p, w in story if w == o]  # gets and drops
      if (handlers and _moves(story, handlers[-1]) >= 2
          and _others(story, handlers[-1])):
        asked.append(o)
    if asked:
      o = asked[int(rng.integers(0, len(asked)))]
      return ([sentence(*f) for f in story], QA2_QUESTION.format(o),
              placed[o])


def count(rng):
  """(fact sentences, question, answer) of a counting story."""
  while True:
    story, people, props, (_, holder, _) = _story(rng, COUNT_FACTS,
                                                   objects=True)
    asked = [p for p in people if _others(story, p)
             and any(k == 'get' and q == p for k, q, _ in story)]
    if asked:
      p = asked[int(rng.integers(0, len(asked)))]
      held = sum(1 for o in props if holder[o] == p)
      return ([sentence(*f) for f in story], COUNT_QUESTION.format(p),
              str(held))


SUBTASKS = {  # name: (story maker, facts, question with a name, answer bytes)
    'babilong_qa1': (qa1, QA1_FACTS, QA1_QUESTION.format('mary'), 6),
    'babilong_qa2': (qa2, QA2_FACTS, QA2_QUESTION.format('apple'), 6),
    'babilong_count': (count, COUNT_FACTS, COUNT_QUESTION.format('mary'), 1),
}


def extra(name: str) -> int:
  """Bytes of an example besides its n filler sentences."""
  _, facts, question, answer = SUBTASKS[name]
  return facts * FACT_BYTES + len(question) + answer


def make(name: str, haystack):
  """The task's ``make(rng, n, tc, depth)``: the story's facts among n
  filler sentences (``haystack(n, slots, lines)``), at slots drawn as
  BABILong draws them, then the question."""
  story_of = SUBTASKS[name][0]

  def _make(rng, n, tc, depth=None):
    del tc, depth
    lines, question, answer = story_of(rng)
    slots = np.sort(rng.integers(0, n + 1, size=len(lines)))
    return haystack(n, [int(s) for s in slots], lines) + question, answer
  return _make
