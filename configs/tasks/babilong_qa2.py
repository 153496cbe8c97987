"""BABILong qa2 (Kuratov et al. 2024; bAbI qa2, two supporting facts):
n filler sentences (16 bytes each) with 8 facts (moves, ``mary picked up
the apple. ``, ``mary discarded the apple. ``) scattered among them in
order, then ``where is the apple? ``; the answer is the object's place.

    python train.py --config=configs/tasks/babilong_qa2.py
    python train.py --config=configs/tasks/babilong_qa2.py \
        --config.model.position=rope --config.positions.train=randomized
    python train.py --config=configs/tasks/babilong_qa2.py:size=tiny  # seconds

Trained on lengths 1..task.train_max_length, evaluated (teacher-forced exact
match, ``lmx.evaluation.task_accuracy``) at every length up to 5x that.
"""

from configs.tasks import task_config


def get_config(arg=None):
  return task_config('babilong_qa2', arg, train_max_length=8,
                     eval_examples=16)
