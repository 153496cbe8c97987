"""BABILong counting (Kuratov et al. 2024; bAbI qa7): n filler sentences
(16 bytes each) with 8 facts (moves, pick-ups, drops) scattered among
them in order, then ``how many objects is mary carrying? ``; the answer
is one digit.

    python train.py --config=configs/tasks/babilong_count.py
    python train.py --config=configs/tasks/babilong_count.py \
        --config.model.position=rope --config.positions.train=randomized
    python train.py --config=configs/tasks/babilong_count.py:size=tiny  # seconds

Trained on lengths 1..task.train_max_length, evaluated (teacher-forced exact
match, ``lmx.evaluation.task_accuracy``) at every length up to 5x that.
"""

from configs.tasks import task_config


def get_config(arg=None):
  return task_config('babilong_count', arg, train_max_length=8,
                     eval_examples=16)
