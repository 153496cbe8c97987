"""Frequent-word extraction (RULER's ``fwe``, Hsieh et al. 2024): 16 (n + 4)
words of 4 letters whose counts follow Zipf's law (alpha = 2), the most
frequent being the noise ``....``, shuffled, then ``what are the 3 most
frequent words? ``; the answer is ranks 2, 3, 4, the most frequent first.

    python train.py --config=configs/tasks/frequent_words.py
    python train.py --config=configs/tasks/frequent_words.py \
        --config.model.position=rope --config.positions.train=randomized
    python train.py --config=configs/tasks/frequent_words.py:size=tiny  # seconds

Trained on lengths 1..task.train_max_length, evaluated (teacher-forced exact
match, ``lmx.evaluation.task_accuracy``) at every length up to 5x that.
"""

from configs.tasks import task_config


def get_config(arg=None):
  return task_config('frequent_words', arg, train_max_length=8,
                     eval_examples=16)
