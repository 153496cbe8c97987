"""Passkey retrieval: n filler sentences (16 bytes each) with ``the pass key
is 12345. `` at depth round(depth * n), then ``what is the pass key?
12345``. Evaluated at every length and at depths 0, 0.25, 0.5, 0.75, 1.

    python train.py --config=configs/tasks/passkey.py
    python train.py --config=configs/tasks/passkey.py \
        --config.model.position=rope --config.positions.train=randomized
    python train.py --config=configs/tasks/passkey.py:size=tiny  # seconds

Trained on lengths 1..task.train_max_length, evaluated (teacher-forced exact
match, ``lmx.evaluation.task_accuracy``) at every length up to 5x that.
"""

from configs.tasks import task_config


def get_config(arg=None):
  return task_config('passkey', arg, train_max_length=6, eval_examples=16)
