"""BABILong qa1 (Kuratov et al. 2024; bAbI qa1, single supporting fact):
n filler sentences (16 bytes each) with 6 facts ``mary moved to the
garden. `` of 3 people scattered among them in order, then ``where is
mary? ``; the answer is the place of that person's last move.

    python train.py --config=configs/tasks/babilong_qa1.py
    python train.py --config=configs/tasks/babilong_qa1.py \
        --config.model.position=rope --config.positions.train=randomized
    python train.py --config=configs/tasks/babilong_qa1.py:size=tiny  # seconds

Trained on lengths 1..task.train_max_length, evaluated (teacher-forced exact
match, ``lmx.evaluation.task_accuracy``) at every length up to 5x that.
"""

from configs.tasks import task_config


def get_config(arg=None):
  return task_config('babilong_qa1', arg, train_max_length=8,
                     eval_examples=16)
