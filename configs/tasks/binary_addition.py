"""Add two n-bit numbers, least significant bit first: ``110+011=1001``
(3 + 6 = 9; the sum has n + 1 bits).

    python train.py --config=configs/tasks/binary_addition.py
    python train.py --config=configs/tasks/binary_addition.py \
        --config.model.position=rope --config.positions.train=randomized
    python train.py --config=configs/tasks/binary_addition.py:size=tiny  # seconds

Trained on lengths 1..task.train_max_length, evaluated (teacher-forced exact
match, ``lmx.evaluation.task_accuracy``) at every length up to 5x that.
"""

from configs.tasks import task_config


def get_config(arg=None):
  return task_config('binary_addition', arg, train_max_length=16)
