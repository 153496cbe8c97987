"""CoPE (Golovneva et al. 2024): positions counted by the gates
sigmoid(q.k) back from each query, with interpolated learned embeddings;
the dense attention backend only (a count needs every key at once).

    python train.py --config=configs/cope.py
    python eval.py --workdir=runs/cope

cope.npos_max is train.seq_len + 1, so counts up to the training length
have embeddings of their own; at longer lengths the counts past it share
the last one.
"""

from configs import base


def get_config(arg=None):
  c = base.encoding_config('cope', arg)
  # The released code's default: the training length + 1 embeddings
  # (follows --config.train.seq_len overrides).
  c.model.cope.npos_max = c.train.get_ref('seq_len') + 1
  return c
