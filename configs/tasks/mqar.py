"""Multi-query associative recall (Arora et al. 2023, "Zoology"):
``pZnBuA|pnu=ZBA``, n pairs of distinct keys (a-z) and distinct values
(A-Z), then every key once in random order; the answer is their values in
that order. ``task.alphabet_size`` = 52 is split in halves, keys and
values, so n is at most 26.

    python train.py --config=configs/tasks/mqar.py
    python train.py --config=configs/tasks/mqar.py \
        --config.model.position=rope --config.positions.train=randomized
    python train.py --config=configs/tasks/mqar.py:size=tiny  # seconds

Trained on lengths 1..task.train_max_length, evaluated (teacher-forced exact
match, ``lmx.evaluation.task_accuracy``) at every length up to 5x that.
"""

from configs.tasks import task_config


def get_config(arg=None):
  return task_config('mqar', arg, train_max_length=5, alphabet_size=52)
