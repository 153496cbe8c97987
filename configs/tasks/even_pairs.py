"""Even pairs (Deletang et al. 2023, regular): ``011=1``, ``1`` iff the bits
have an odd number of unequal neighbours (``01`` or ``10``).

    python train.py --config=configs/tasks/even_pairs.py
    python train.py --config=configs/tasks/even_pairs.py \
        --config.model.position=rope --config.positions.train=randomized
    python train.py --config=configs/tasks/even_pairs.py:size=tiny  # seconds

Trained on lengths 1..task.train_max_length, evaluated (teacher-forced exact
match, ``lmx.evaluation.task_accuracy``) at every length up to 5x that.
"""

from configs.tasks import task_config


def get_config(arg=None):
  return task_config('even_pairs', arg, train_max_length=16)
