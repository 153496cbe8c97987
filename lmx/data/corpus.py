"""Documents and token streams held in memory, for small text.

Research-scale runs read their corpus through the token store
(``lmx.data.store``: tokenized once, memory-mapped). This module keeps the
in-memory forms that small uses and the tests want: a split's documents as
uint8 arrays (``load_documents``, read from the same ``lmx.data.sources``
and split by the same hash as the store) and ``token_stream``, the stream
the store is tested equal to.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lmx.data import tokenizer
from lmx.data.sources import (is_validation, list_files,  # noqa: F401
                              printable_path, stdlib_root)
from lmx.errors import DataError  # noqa: F401


def load_documents(data_cfg, split: str) -> list[np.ndarray]:
  """The split's documents as uint8 arrays, in store order. Holds the whole
  split in memory: for small corpora; training reads ``lmx.data.store``."""
  from lmx.data import store  # pylint: disable=g-import-not-at-top
  stream = store.open_split(data_cfg, split)
  return [np.asarray(d, np.uint8) for d in stream.documents()]


def check_splits(data_cfg, tok=tokenizer.BYTES) -> None:
  """DataError unless the source has both a train and a validation split:
  a run that could train but never be evaluated is refused before
  training."""
  from lmx.data import store  # pylint: disable=g-import-not-at-top
  store.check_splits(data_cfg, tok)


def token_stream(docs: Sequence[np.ndarray], tok=tokenizer.BYTES
                 ) -> np.ndarray:
  """All documents as one int32 id stream of ``tok`` (default: bytes),
  each followed by its end-of-document id.

  An empty document adds nothing (not even an EOD).
  """
  pieces = []
  docs = [d for d in docs if np.size(d)]
  for ids in tok.encode_documents(docs):
    pieces.append(ids.astype(np.int32))
    pieces.append(np.array([tok.eod], np.int32))
  if not pieces:
    return np.zeros((0,), np.int32)
  return np.concatenate(pieces)
