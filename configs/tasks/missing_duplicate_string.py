"""Missing duplicate string (Deletang et al. 2023, context-sensitive):
``0?_=0``, a bit string written twice with one bit hidden (``?``; ``_`` pads
an odd length); the answer is the hidden bit.

    python train.py --config=configs/tasks/missing_duplicate_string.py
    python train.py --config=configs/tasks/missing_duplicate_string.py \
        --config.model.position=rope --config.positions.train=randomized
    python train.py --config=configs/tasks/missing_duplicate_string.py:size=tiny  # seconds

Trained on lengths 1..task.train_max_length, evaluated (teacher-forced exact
match, ``lmx.evaluation.task_accuracy``) at every length up to 5x that.
"""

from configs.tasks import task_config


def get_config(arg=None):
  return task_config('missing_duplicate_string', arg, train_max_length=16)
