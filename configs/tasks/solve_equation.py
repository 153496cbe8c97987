"""Solve equation (Deletang et al. 2023, deterministic context-free):
``(x-1)=3|x=4``, the digit x of a bracketed ``+ -`` equation mod 5; n counts
the equation's characters.

    python train.py --config=configs/tasks/solve_equation.py
    python train.py --config=configs/tasks/solve_equation.py \
        --config.model.position=rope --config.positions.train=randomized
    python train.py --config=configs/tasks/solve_equation.py:size=tiny  # seconds

Trained on lengths 1..task.train_max_length, evaluated (teacher-forced exact
match, ``lmx.evaluation.task_accuracy``) at every length up to 5x that.
"""

from configs.tasks import task_config


def get_config(arg=None):
  return task_config('solve_equation', arg, train_max_length=16, modulus=5)
