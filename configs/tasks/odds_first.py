"""Odds first (Deletang et al. 2023, context-sensitive): ``011=101``, the
bits at odd 0-based indices, then those at even ones.

    python train.py --config=configs/tasks/odds_first.py
    python train.py --config=configs/tasks/odds_first.py \
        --config.model.position=rope --config.positions.train=randomized
    python train.py --config=configs/tasks/odds_first.py:size=tiny  # seconds

Trained on lengths 1..task.train_max_length, evaluated (teacher-forced exact
match, ``lmx.evaluation.task_accuracy``) at every length up to 5x that.
"""

from configs.tasks import task_config


def get_config(arg=None):
  return task_config('odds_first', arg, train_max_length=16)
