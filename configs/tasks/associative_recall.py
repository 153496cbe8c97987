"""Recall the value of a key: ``a1b7c3|b=7`` (n distinct keys of a-z A-Z, digit values).

    python train.py --config=configs/tasks/associative_recall.py
    python train.py --config=configs/tasks/associative_recall.py \
        --config.model.position=rope --config.positions.train=randomized
    python train.py --config=configs/tasks/associative_recall.py:size=tiny  # seconds

Trained on lengths 1..task.train_max_length, evaluated (teacher-forced exact
match, ``lmx.evaluation.task_accuracy``) at every length up to 5x that.
"""

from configs.tasks import task_config


def get_config(arg=None):
  return task_config('associative_recall', arg, train_max_length=8, alphabet_size=52)
