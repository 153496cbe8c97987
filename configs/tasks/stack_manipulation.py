"""Stack manipulation (Deletang et al. 2023, deterministic context-free):
``01b=110#``, a stack of bits (bottom first), then actions ``-`` (pop), ``a``
and ``b`` (push 0, 1); the answer is the final stack top first, ``#`` and
``0`` padding to n + 1.

    python train.py --config=configs/tasks/stack_manipulation.py
    python train.py --config=configs/tasks/stack_manipulation.py \
        --config.model.position=rope --config.positions.train=randomized
    python train.py --config=configs/tasks/stack_manipulation.py:size=tiny  # seconds

Trained on lengths 1..task.train_max_length, evaluated (teacher-forced exact
match, ``lmx.evaluation.task_accuracy``) at every length up to 5x that.
"""

from configs.tasks import task_config


def get_config(arg=None):
  return task_config('stack_manipulation', arg, train_max_length=16)
