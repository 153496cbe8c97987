"""Bucket sort (Deletang et al. 2023, context-sensitive): ``402=024``, n
digits 0-4 sorted.

    python train.py --config=configs/tasks/bucket_sort.py
    python train.py --config=configs/tasks/bucket_sort.py \
        --config.model.position=rope --config.positions.train=randomized
    python train.py --config=configs/tasks/bucket_sort.py:size=tiny  # seconds

Trained on lengths 1..task.train_max_length, evaluated (teacher-forced exact
match, ``lmx.evaluation.task_accuracy``) at every length up to 5x that.
"""

from configs.tasks import task_config


def get_config(arg=None):
  return task_config('bucket_sort', arg, train_max_length=16)
