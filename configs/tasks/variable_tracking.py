"""Variable tracking (RULER, Hsieh et al. 2024, ``vt``): n filler sentences
(16 bytes each) with the chain ``VAR ABCDE = 12345. ``, ``VAR FGHIJ = VAR
ABCDE. `` ... (4 hops, 5 variables) before random sentences, then ``which
variables are assigned the value 12345? ``; the answer is the 5 variables
in chain order, separated by spaces.

    python train.py --config=configs/tasks/variable_tracking.py
    python train.py --config=configs/tasks/variable_tracking.py \
        --config.model.position=rope --config.positions.train=randomized
    python train.py --config=configs/tasks/variable_tracking.py:size=tiny  # seconds

Trained on lengths 1..task.train_max_length, evaluated (teacher-forced exact
match, ``lmx.evaluation.task_accuracy``) at every length up to 5x that.
"""

from configs.tasks import task_config


def get_config(arg=None):
  return task_config('variable_tracking', arg, train_max_length=8,
                     eval_examples=16)
