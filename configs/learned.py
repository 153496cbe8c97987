"""Learned absolute position embeddings on the built-in corpus.

The table has one row per training position (max_len follows
train.seq_len), so evaluating past the training length is impossible by
construction: eval.py skips the default lengths the table cannot cover and
refuses explicit ones with a message naming config.model.learned.max_len.

    python train.py --config=configs/learned.py
    python eval.py --workdir=runs/learned
"""

from configs import base


def get_config(arg=None):
  c = base.get_config(arg)
  c.name = 'learned'
  c.model.position = 'learned'
  c.model.learned.max_len = c.train.get_ref('seq_len')
  return c
