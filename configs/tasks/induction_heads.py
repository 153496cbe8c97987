"""Induction heads (Gu & Dao 2023, "Mamba", Sec. 4.1.2; the synthetic of
Fu et al. 2023, "H3"): ``g=hk=`` then ``h``, n symbols of 14 (Mamba's
vocabulary of 16 less the two special tokens) with the trigger ``=`` before
one of them; the sequence ends with the trigger and the answer is the
symbol after the first one.

    python train.py --config=configs/tasks/induction_heads.py
    python train.py --config=configs/tasks/induction_heads.py \
        --config.model.position=rope --config.positions.train=randomized
    python train.py --config=configs/tasks/induction_heads.py:size=tiny  # seconds

Trained on lengths 1..task.train_max_length, evaluated (teacher-forced exact
match, ``lmx.evaluation.task_accuracy``) up to 64x that (Mamba tests far past its training
length), every 64th length (with 1 and the training length): about 20
lengths.
"""

from configs.tasks import task_config


def get_config(arg=None):
  return task_config('induction_heads', arg, train_max_length=16,
                     alphabet_size=14, eval_multiple=64, eval_stride=64)
