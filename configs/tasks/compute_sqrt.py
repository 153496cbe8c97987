"""Compute sqrt (Deletang et al. 2023, context-sensitive): ``111=010``, the
floor square root of an n-bit number, most significant bit first, in n
bits.

    python train.py --config=configs/tasks/compute_sqrt.py
    python train.py --config=configs/tasks/compute_sqrt.py \
        --config.model.position=rope --config.positions.train=randomized
    python train.py --config=configs/tasks/compute_sqrt.py:size=tiny  # seconds

Trained on lengths 1..task.train_max_length, evaluated (teacher-forced exact
match, ``lmx.evaluation.task_accuracy``) at every length up to 5x that.
"""

from configs.tasks import task_config


def get_config(arg=None):
  return task_config('compute_sqrt', arg, train_max_length=16)
