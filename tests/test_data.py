"""Tokenizer, local tfds corpora, and the train/eval windows."""

import os

import numpy as np
import pytest

from lmx.config import defaults
from lmx.data import corpus, tokenizer, windows


def _data_cfg(source, cache_dir, fraction=0.5):
  """``config.data`` as lmx/config/defaults.py sets it, with these fields."""
  c = defaults.get_config().data
  c.update(source=source, cache_dir=cache_dir, validation_fraction=fraction)
  return c


def _write(folder, name, data: bytes):
  path = os.path.join(folder, name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(data)


def test_tokenizer_round_trip_and_eod():
  ids = tokenizer.encode('héllo')
  assert ids.tolist() == list('héllo'.encode('utf-8'))
  assert tokenizer.decode(ids) == 'héllo'
  assert tokenizer.decode([104, 105, tokenizer.EOD]) == 'hi\n'
  assert tokenizer.VOCAB_SIZE == tokenizer.EOD + 1


def test_folder_corpus_split_is_by_path_and_keeps_bytes(tmp_path):
  src, cache = str(tmp_path / 'texts'), str(tmp_path / 'cache')
  contents = {f'd{i:02d}.txt': f'doc {i} '.encode() * (i + 1)
              for i in range(20)}
  contents['bad.txt'] = b'\xff\xfe not utf-8 \xc3'
  contents['empty.txt'] = b''
  for name, data in contents.items():
    _write(src, name, data)
  cfg = _data_cfg(src, cache)
  train = corpus.load_documents(cfg, 'train')
  val = corpus.load_documents(cfg, 'validation')
  got = sorted(bytes(d) for d in train + val)
  # Every non-empty file lands in exactly one split, byte for byte.
  assert got == sorted(v for v in contents.values() if v)
  expected_val = sorted(v for k, v in contents.items()
                        if v and corpus.is_validation(k, 0.5))
  assert sorted(bytes(d) for d in val) == expected_val
  assert 0 < len(val) < len(train) + len(val)
  # Loading again reuses the prepared dataset and gives the same order.
  again = corpus.load_documents(cfg, 'train')
  assert [bytes(d) for d in again] == [bytes(d) for d in train]


def test_glob_source(tmp_path):
  src = str(tmp_path / 'g')
  _write(src, 'a/x.md', b'alpha' * 10)
  _write(src, 'b/y.md', b'beta' * 10)
  _write(src, 'b/z.txt', b'not matched')
  root, files = corpus.list_files(os.path.join(src, '**', '*.md'))
  assert files == ['a/x.md', 'b/y.md']
  assert root == os.path.abspath(src)


def test_empty_folder_is_a_clear_error(tmp_path):
  empty = tmp_path / 'nothing'
  empty.mkdir()
  with pytest.raises(corpus.DataError, match='matches no files'):
    corpus.load_documents(_data_cfg(str(empty), str(tmp_path / 'c')), 'train')


def test_stdlib_corpus_excludes_site_packages():
  root, files = corpus.list_files('stdlib')
  assert files and all(f.endswith('.py') for f in files)
  assert not any('site-packages' in f for f in files)
  assert 'os.py' in files


def test_token_stream_separates_documents():
  docs = [np.frombuffer(b'ab', np.uint8), np.frombuffer(b'c', np.uint8)]
  assert corpus.token_stream(docs).tolist() == [97, 98, 256, 99, 256]


def test_train_batch_is_a_function_of_seed_and_step():
  stream = np.arange(10_000, dtype=np.int32) % 257
  kw = dict(batch=4, seq_len=16, sampling='randomized', max_position=64)
  a = windows.train_batch(stream, seed=3, step=7, **kw)
  b = windows.train_batch(stream, seed=3, step=7, **kw)
  c = windows.train_batch(stream, seed=3, step=8, **kw)
  for k in ('inputs', 'targets', 'positions'):
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a['inputs'], c['inputs'])
  # Targets are inputs shifted by one token of the stream.
  np.testing.assert_array_equal(a['inputs'][:, 1:], a['targets'][:, :-1])
  assert a['inputs'].shape == (4, 16) and a['positions'].max() < 64


def test_eval_windows_score_the_same_tokens_at_every_length():
  stream = np.arange(5000, dtype=np.int32)
  scored = {}
  for length in (16, 64, 256):
    x, y = windows.eval_windows(stream, length, tokens=1024)
    assert x.shape == (1024 // length, length)
    # Non-overlapping, contiguous from offset 0.
    np.testing.assert_array_equal(x.reshape(-1), stream[:1024])
    scored[length] = y.reshape(-1)
  np.testing.assert_array_equal(scored[16], scored[256])


def test_eval_windows_too_short_stream_is_a_clear_error():
  with pytest.raises(corpus.DataError, match='too few'):
    windows.eval_windows(np.arange(10, dtype=np.int32), 64, tokens=1024)


