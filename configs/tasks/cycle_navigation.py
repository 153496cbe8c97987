"""Cycle navigation (Deletang et al. 2023, regular): ``-0-=3``, the final
state after moves ``-`` ``0`` ``+`` (left, stay, right) on a cycle of 5
starting at 0.

    python train.py --config=configs/tasks/cycle_navigation.py
    python train.py --config=configs/tasks/cycle_navigation.py \
        --config.model.position=rope --config.positions.train=randomized
    python train.py --config=configs/tasks/cycle_navigation.py:size=tiny  # seconds

Trained on lengths 1..task.train_max_length, evaluated (teacher-forced exact
match, ``lmx.evaluation.task_accuracy``) at every length up to 5x that.
"""

from configs.tasks import task_config


def get_config(arg=None):
  return task_config('cycle_navigation', arg, train_max_length=16)
