"""Parity of a bit string: ``101=0`` (1 iff an odd number of ones).

    python train.py --config=configs/tasks/parity.py
    python train.py --config=configs/tasks/parity.py \
        --config.model.position=rope --config.positions.train=randomized
    python train.py --config=configs/tasks/parity.py:size=tiny  # seconds

Trained on lengths 1..task.train_max_length, evaluated (teacher-forced exact
match, ``lmx.evaluation.task_accuracy``) at every length up to 5x that.
"""

from configs.tasks import task_config


def get_config(arg=None):
  return task_config('parity', arg, train_max_length=16)
