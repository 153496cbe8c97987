"""Duplicate a string: ``cab=cabcab`` (alphabet of 8 letters).

    python train.py --config=configs/tasks/duplicate_string.py
    python train.py --config=configs/tasks/duplicate_string.py \
        --config.model.position=rope --config.positions.train=randomized
    python train.py --config=configs/tasks/duplicate_string.py:size=tiny  # seconds

Trained on lengths 1..task.train_max_length, evaluated (teacher-forced exact
match, ``lmx.evaluation.task_accuracy``) at every length up to 5x that.
"""

from configs.tasks import task_config


def get_config(arg=None):
  return task_config('duplicate_string', arg, train_max_length=16, alphabet_size=8)
