"""Multi-key needle in a haystack (RULER, Hsieh et al. 2024,
``niah_multikey_1``): n filler sentences (16 bytes each) with four lines
``the pass key of <name> is 12345. `` at RULER's random depths, then ``what
is the pass key of <name>? `` for one of them; the answer is its digits.

    python train.py --config=configs/tasks/multi_key_niah.py
    python train.py --config=configs/tasks/multi_key_niah.py \
        --config.model.position=rope --config.positions.train=randomized
    python train.py --config=configs/tasks/multi_key_niah.py:size=tiny  # seconds

Trained on lengths 1..task.train_max_length, evaluated (teacher-forced exact
match, ``lmx.evaluation.task_accuracy``) at every length up to 5x that.
"""

from configs.tasks import task_config


def get_config(arg=None):
  return task_config('multi_key_niah', arg, train_max_length=6,
                     eval_examples=16)
