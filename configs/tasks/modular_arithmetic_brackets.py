"""Modular arithmetic with brackets (Deletang et al. 2023, deterministic
context-free): ``(1-3)=3``, a bracketed ``+ -`` expression of n characters,
mod 5.

    python train.py --config=configs/tasks/modular_arithmetic_brackets.py
    python train.py --config=configs/tasks/modular_arithmetic_brackets.py \
        --config.model.position=rope --config.positions.train=randomized
    python train.py --config=configs/tasks/modular_arithmetic_brackets.py:size=tiny  # seconds

Trained on lengths 1..task.train_max_length, evaluated (teacher-forced exact
match, ``lmx.evaluation.task_accuracy``) at every length up to 5x that.
"""

from configs.tasks import task_config


def get_config(arg=None):
  return task_config('modular_arithmetic_brackets', arg, train_max_length=16,
                     modulus=5)
