"""Flip-flop language modeling (Liu et al. 2023, "Exposing Attention
Glitches with Flip-Flop Language Modeling"): ``w0w1i0r=1``, n instructions
write / ignore / read with a bit (a read shows the last written bit), the
first a write, then a final read; the answer is its bit. Instructions after
the first are ignore with probability ``task.flip_flop_p_ignore`` (the
paper's FFL(p)), write and read with half the rest each.

    python train.py --config=configs/tasks/flip_flop.py   # FFL(0.8)
    python eval.py --workdir=runs/flip_flop \
        --config.task.flip_flop_p_ignore=0.98             # sparse FFL(0.98)
    python eval.py --workdir=runs/flip_flop \
        --config.task.flip_flop_p_ignore=0.1              # dense FFL(0.1)
    python train.py --config=configs/tasks/flip_flop.py:size=tiny  # seconds

Trained on lengths 1..task.train_max_length, evaluated (teacher-forced exact
match, ``lmx.evaluation.task_accuracy``) at every length up to 5x that.
"""

from configs.tasks import task_config


def get_config(arg=None):
  return task_config('flip_flop', arg, train_max_length=16,
                     flip_flop_p_ignore=0.8)
