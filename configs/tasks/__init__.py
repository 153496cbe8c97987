"""Algorithmic-task configs: one file per task of ``lmx.data.tasks``.

Each ``configs/tasks/<task>.py`` calls ``task_config`` with what differs:

    python train.py --config=configs/tasks/reverse.py
    python train.py --config=configs/tasks/reverse.py:size=tiny   # seconds
    python train.py --config=configs/tasks/reverse.py \
        --config.model.position=rope --config.positions.train=randomized

``train.seq_len`` and ``positions.max_position`` follow
``task.train_max_length`` (and ``task.eval_multiple``) through field
references, so ``--config.task.train_max_length=32`` needs no other change:
``seq_len`` is the token length of the longest training example and
``max_position`` that of the longest default evaluation example, which is
what randomized or shifted positions must cover.
"""

from configs import base
from lmx.data import tasks


def task_config(name: str, arg=None, *, steps: int | None = None,
                **task_fields):
  """The base config of ``arg`` turned into a run of task ``name``.

  ``size=tiny`` (tests) trains on lengths up to 4 (passkey: 2) and
  evaluates 8 examples per length; ``steps`` applies to the other sizes.
  """
  c = base.get_config(arg)
  c.name = name
  c.task.name = name
  for key, value in task_fields.items():
    c.task[key] = value
  if base.parse_arg(arg).get('size') == 'tiny':
    c.task.train_max_length = 2 if name == 'passkey' else 4
    c.task.eval_examples = 8
  elif steps is not None:
    c.train.steps = steps
  t = tasks.get_task(name)
  # Tokens the model reads at length n: per * n + extra (EOD included).
  length = c.task.get_ref('train_max_length')
  c.train.seq_len = length * t.per + t.extra
  c.positions.max_position = (length * c.task.get_ref('eval_multiple')
                              * t.per + t.extra)
  return c
