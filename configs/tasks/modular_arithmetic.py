"""An expression of n one-digit operands over + - * (``*`` first), mod 5: ``3+4*2=1``.

    python train.py --config=configs/tasks/modular_arithmetic.py
    python train.py --config=configs/tasks/modular_arithmetic.py \
        --config.model.position=rope --config.positions.train=randomized
    python train.py --config=configs/tasks/modular_arithmetic.py:size=tiny  # seconds

Trained on lengths 1..task.train_max_length, evaluated (teacher-forced exact
match, ``lmx.evaluation.task_accuracy``) at every length up to 5x that.
"""

from configs.tasks import task_config


def get_config(arg=None):
  return task_config('modular_arithmetic', arg, train_max_length=16, modulus=5)
