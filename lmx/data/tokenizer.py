"""Tokenizers: what turns document bytes into model ids and back.

The byte tokenizer (``config.data.tokenizer='bytes'``, the default): ids
0..255 are bytes, 256 ends a document. A subword tokenizer
(``'sentencepiece'``, ``lmx.data.subword``) has the same interface.

Every tokenizer has:

- ``vocab_size`` and ``eod`` (the end-of-document id, which joins
  documents in a token stream and starts a prompt-less generation);
- ``encode(text)``: a str (or bytes) as int32 ids, every byte kept;
- ``encode_documents(docs)``: uint8 documents as id arrays;
- ``decode_bytes(ids)`` / ``decode(ids)``: ids back to bytes / text, EOD
  as a newline (invalid UTF-8 reads as U+FFFD in ``decode``);
- ``byte_lengths``: ``[vocab_size]`` int64, how many bytes each id decodes
  to (EOD: one, its newline). Bits per byte divide by these, so runs with
  different tokenizers compare.
"""

from collections.abc import Sequence

import numpy as np

EOD = 256
VOCAB_SIZE = 257
KINDS = ('bytes', 'sentencepiece')


def as_bytes(text) -> bytes:
  """str, bytes or a uint8 array as bytes. A str from the command line
  that is not valid UTF-8 holds its bytes as lone surrogates (Python's
  surrogateescape): they are those bytes again."""
  if isinstance(text, str):
    return text.encode('utf-8', 'surrogateescape')
  if isinstance(text, np.ndarray):
    return text.astype(np.uint8).tobytes()
  return bytes(text)


def encode(text) -> np.ndarray:
  """UTF-8 bytes of ``text`` (str, bytes, or uint8 array) as int32 ids."""
  return np.frombuffer(as_bytes(text), dtype=np.uint8).astype(np.int32)


def decode(ids) -> str:
  """Ids back to text; EOD becomes a newline, invalid UTF-8 is replaced."""
  ids = np.asarray(ids)
  out = bytes(int(i) if i < 256 else 10 for i in ids.reshape(-1))
  return out.decode('utf-8', errors='replace')


class Bytes:
  """The byte tokenizer as an object (the module functions above)."""

  kind = 'bytes'
  vocab_size = VOCAB_SIZE
  eod = EOD
  byte_lengths = np.ones((VOCAB_SIZE,), np.int64)

  def encode(self, text) -> np.ndarray:
    return encode(text)

  def encode_documents(self, docs: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(d, np.uint8).astype(np.int32).reshape(-1) for d in docs]

  def decode_bytes(self, ids) -> bytes:
    return bytes(int(i) if i < 256 else 10 for i in np.asarray(ids).ravel())

  def decode(self, ids) -> str:
    return decode(ids)

  def describe(self) -> dict:
    return {'kind': self.kind, 'vocab_size': self.vocab_size}


BYTES = Bytes()
