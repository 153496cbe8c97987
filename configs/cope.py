"""CoPE (Golovneva et al. 2024): positions counted by the gates
sigmoid(q.k) back from each query, with interpolated learned embeddings;
the dense attention backend only (a count needs every key at once).

    python train.py --config=configs/cope.py
    python eval.py --workdir=runs/cope

cope.npos_max (65) covers counts up to the default training length of 64;
at longer lengths the counts past it share its last embedding.
"""

from configs import base


def get_config(arg=None):
  c = base.encoding_config('cope', arg)
  # The released code's default: the training length + 1 embeddings.
  c.model.cope.npos_max = c.train.seq_len + 1
  return c
