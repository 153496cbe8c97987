"""Reverse a string: ``cab=bac`` (alphabet of 8 letters).

    python train.py --config=configs/tasks/reverse.py
    python train.py --config=configs/tasks/reverse.py \
        --config.model.position=rope --config.positions.train=randomized
    python train.py --config=configs/tasks/reverse.py:size=tiny  # seconds

Trained on lengths 1..task.train_max_length, evaluated (teacher-forced exact
match, ``lmx.evaluation.task_accuracy``) at every length up to 5x that.
"""

from configs.tasks import task_config


def get_config(arg=None):
  return task_config('reverse', arg, train_max_length=16, alphabet_size=8)
