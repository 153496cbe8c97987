"""Common-word extraction (RULER's ``cwe``, Hsieh et al. 2024): a numbered
list ``0001. abcde 0002. ...`` of 4 common words 6 times each and n other
words once each, shuffled, then ``what are the 4 most common words? ``;
the answer is the 4 words in the order of their first entry.

    python train.py --config=configs/tasks/common_words.py
    python train.py --config=configs/tasks/common_words.py \
        --config.model.position=rope --config.positions.train=randomized
    python train.py --config=configs/tasks/common_words.py:size=tiny  # seconds

Trained on lengths 1..task.train_max_length, evaluated (teacher-forced exact
match, ``lmx.evaluation.task_accuracy``) at every length up to 5x that.
"""

from configs.tasks import task_config


def get_config(arg=None):
  return task_config('common_words', arg, train_max_length=16,
                     eval_examples=16)
