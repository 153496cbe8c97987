"""Binary multiplication (Deletang et al. 2023, context-sensitive):
``101*11=1111#0`` (5 * 3 = 15), least significant bit first; n counts both
numbers and ``*``, the answer is the product, ``#`` and ``0`` padding to n.

    python train.py --config=configs/tasks/binary_multiplication.py
    python train.py --config=configs/tasks/binary_multiplication.py \
        --config.model.position=rope --config.positions.train=randomized
    python train.py --config=configs/tasks/binary_multiplication.py:size=tiny  # seconds

Trained on lengths 1..task.train_max_length, evaluated (teacher-forced exact
match, ``lmx.evaluation.task_accuracy``) at every length up to 5x that.
"""

from configs.tasks import task_config


def get_config(arg=None):
  return task_config('binary_multiplication', arg, train_max_length=16)
