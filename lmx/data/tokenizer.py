"""Byte-level tokenizer: ids 0..255 are bytes, 256 ends a document."""

import numpy as np

EOD = 256
VOCAB_SIZE = 257


def encode(text) -> np.ndarray:
  """UTF-8 bytes of ``text`` (str, bytes, or uint8 array) as int32 ids.

  A str from the command line that is not valid UTF-8 holds its bytes as
  lone surrogates (Python's surrogateescape): they are those bytes again."""
  if isinstance(text, str):
    text = text.encode('utf-8', 'surrogateescape')
  return np.frombuffer(bytes(text), dtype=np.uint8).astype(np.int32)


def decode(ids) -> str:
  """Ids back to text; EOD becomes a newline, invalid UTF-8 is replaced."""
  ids = np.asarray(ids)
  out = bytes(int(i) if i < 256 else 10 for i in ids.reshape(-1))
  return out.decode('utf-8', errors='replace')
