"""Learned absolute position embeddings, one row per training position.

    python train.py --config=configs/learned.py
    python eval.py --workdir=runs/learned

The table has one row per training position (max_len follows
train.seq_len), so it cannot be evaluated past the training length: eval.py
skips the default lengths it cannot cover and refuses explicit ones with a
message naming config.model.learned.max_len.

Measured (default size, seed 0, 1500 steps on a 2-core CPU): loss in
nats/byte at 1x 2x 4x 8x 16x the training length of 64:
    1.448 n/a n/a n/a n/a
"""

from configs import base


def get_config(arg=None):
  c = base.encoding_config('learned', arg)
  c.model.learned.max_len = c.train.get_ref('seq_len').identity()
  return c
