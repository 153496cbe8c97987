"""Bad data through the public loading path (list_files, build_local,
load_documents, token_stream, then the windows): every case either works in
a defined way or stops early with a DataError that names the source and says
what to change, never a tfds traceback."""

import os

import ml_collections
import numpy as np
import pytest

from lmx.data import corpus, tokenizer, windows


def _cfg(source, tmp_path, fraction=0.5):
  return ml_collections.ConfigDict({
      'source': str(source), 'cache_dir': str(tmp_path / 'cache'),
      'validation_fraction': fraction, 'text_key': 'text'})


def _write(folder, name, data: bytes):
  path = os.path.join(folder, name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(data)


def _names_in(fraction, validation, count=200):
  """File names that the path-hash split puts in the wanted split."""
  names = [f'f{i:03d}.txt' for i in range(count)]
  return [n for n in names if corpus.is_validation(n, fraction) == validation]


def _both_splits(tmp_path, contents):
  cfg = _cfg(tmp_path / 'texts', tmp_path)
  for name, data in contents.items():
    _write(cfg.source, name, data)
  return cfg, corpus.load_documents(cfg, 'train'), corpus.load_documents(
      cfg, 'validation')


# --------------------------------------------------------------------------
# Empty documents.


def test_empty_files_are_skipped(tmp_path):
  train_names = _names_in(0.5, False)[:4]
  val_names = _names_in(0.5, True)[:2]
  contents = {train_names[0]: b'first', train_names[1]: b'',
              train_names[2]: b'third', train_names[3]: b'',
              val_names[0]: b'held out', val_names[1]: b''}
  _, train, val = _both_splits(tmp_path, contents)
  assert [bytes(d) for d in train] == [b'first', b'third']
  assert [bytes(d) for d in val] == [b'held out']
  # No empty document reaches the stream: no doubled EOD.
  stream = corpus.token_stream(train)
  assert stream.tolist() == (list(b'first') + [tokenizer.EOD]
                             + list(b'third') + [tokenizer.EOD])


def test_empty_files_in_one_split_only(tmp_path):
  # Every validation file is empty: train loads, validation is a clear error
  # (before the fix tfds failed while writing: "No examples were yielded").
  train_names = _names_in(0.5, False)[:3]
  val_names = _names_in(0.5, True)[:3]
  contents = {n: b'text ' * 20 for n in train_names}
  contents.update({n: b'' for n in val_names})
  cfg = _cfg(tmp_path / 'texts', tmp_path)
  for name, data in contents.items():
    _write(cfg.source, name, data)
  assert len(corpus.load_documents(cfg, 'train')) == 3
  with pytest.raises(corpus.DataError) as info:
    corpus.load_documents(cfg, 'validation')
  message = str(info.value)
  assert 'validation split' in message and cfg.source in message
  assert 'validation_fraction' in message


def test_token_stream_ignores_empty_documents():
  docs = [np.zeros(0, np.uint8), np.frombuffer(b'ab', np.uint8),
          np.zeros(0, np.uint8)]
  assert corpus.token_stream(docs).tolist() == [97, 98, tokenizer.EOD]
  assert corpus.token_stream([np.zeros(0, np.uint8)]).size == 0
  assert corpus.token_stream([]).size == 0


def test_folder_of_only_empty_files_is_a_clear_error(tmp_path):
  src = tmp_path / 'blank'
  for i in range(3):
    _write(src, f'e{i}.txt', b'')
  for split in ('train', 'validation'):
    with pytest.raises(corpus.DataError) as info:
      corpus.load_documents(_cfg(src, tmp_path), split)
    message = str(info.value)
    assert str(src) in message           # names the folder
    assert 'all 3 files' in message and 'empty' in message
    assert 'config.data.source' in message   # says what to change
  # Refused before tfds prepared anything.
  assert not (tmp_path / 'cache').exists()


# --------------------------------------------------------------------------
# Documents shorter than the window.


def test_short_documents_join_the_stream(tmp_path):
  # 60 documents of 3 bytes each, far shorter than a 16-token window: each
  # still contributes, separated by EOD, and windows span several of them.
  contents = {f'f{i:03d}.txt': bytes([97 + i % 26]) * 3 for i in range(60)}
  _, train, val = _both_splits(tmp_path, contents)
  assert len(train) + len(val) == 60
  stream = corpus.token_stream(train)
  assert stream.size == 4 * len(train)
  assert int(np.sum(stream == tokenizer.EOD)) == len(train)
  batch = windows.train_batch(stream, seed=0, step=0, batch=8, seq_len=16,
                              sampling='contiguous', max_position=16)
  assert batch['inputs'].shape == (8, 16)
  # A 16-token window over 4-token documents holds 4 EODs.
  assert np.all(np.sum(batch['inputs'] == tokenizer.EOD, axis=1) == 4)
  x, _ = windows.eval_windows(corpus.token_stream(val), 8, tokens=64)
  assert x.shape[0] >= 1


def test_stream_shorter_than_one_window_is_a_clear_error(tmp_path):
  contents = {f'f{i:03d}.txt': b'ab' for i in range(6)}
  _, train, val = _both_splits(tmp_path, contents)
  stream = corpus.token_stream(train)
  assert stream.size == 3 * len(train) < 64
  with pytest.raises(corpus.DataError) as info:
    windows.train_batch(stream, seed=0, step=0, batch=2, seq_len=64,
                        sampling='contiguous', max_position=64)
  message = str(info.value)
  assert f'{stream.size} tokens' in message and 'config.train.seq_len' in message
  val_stream = corpus.token_stream(val)
  with pytest.raises(corpus.DataError) as info:
    windows.eval_windows(val_stream, 64, tokens=1024)
  message = str(info.value)
  assert f'{val_stream.size} tokens' in message
  assert 'validation_fraction' in message


# --------------------------------------------------------------------------
# Invalid UTF-8: the tokenizer is byte-level, so bytes pass through unchanged.


def test_invalid_utf8_is_kept_byte_for_byte(tmp_path):
  bad = {
      'lone_continuation.txt': b'a\x80b',
      'truncated.txt': b'caf\xc3',             # 'é' cut after its lead byte
      'overlong.txt': b'\xc0\xaf slash',       # overlong encoding of '/'
      'surrogate.txt': b'\xed\xa0\x80 half',   # UTF-16 surrogate in UTF-8
      'latin1.txt': 'naïve café'.encode('latin-1'),
      'binary.bin': bytes(range(256)),
  }
  for raw in bad.values():
    with pytest.raises(UnicodeDecodeError):
      raw.decode('utf-8')
  _, train, val = _both_splits(tmp_path, bad)
  assert sorted(bytes(d) for d in train + val) == sorted(bad.values())
  stream = corpus.token_stream(train + val)
  assert stream.min() >= 0 and stream.max() <= tokenizer.EOD
  assert stream.size == sum(len(v) + 1 for v in bad.values())
  # Decoding for display replaces, never raises.
  text = tokenizer.decode(corpus.token_stream(
      [np.frombuffer(bad['lone_continuation.txt'], np.uint8)]))
  assert text == 'a\ufffdb\n'


# --------------------------------------------------------------------------
# Missing sources.


def test_empty_folder_names_it(tmp_path):
  src = tmp_path / 'nothing'
  src.mkdir()
  with pytest.raises(corpus.DataError) as info:
    corpus.load_documents(_cfg(src, tmp_path), 'train')
  message = str(info.value)
  assert str(src) in message and 'holds no files' in message
  assert 'Give an existing folder' in message


def test_folder_with_only_subfolders_and_broken_links(tmp_path):
  src = tmp_path / 'hollow'
  (src / 'a' / 'b').mkdir(parents=True)
  os.symlink(tmp_path / 'missing.txt', src / 'a' / 'dangling.txt')
  with pytest.raises(corpus.DataError, match='holds no files'):
    corpus.list_files(str(src))
  # A broken link next to real files is ignored rather than crashing the
  # fingerprint's os.stat.
  _write(src, 'a/real.txt', b'real text')
  root, files = corpus.list_files(str(src))
  assert root == str(src) and files == ['a/real.txt']


def test_nonexistent_folder_names_it(tmp_path):
  src = tmp_path / 'does' / 'not' / 'exist'
  for split in ('train', 'validation'):
    with pytest.raises(corpus.DataError) as info:
      corpus.load_documents(_cfg(src, tmp_path), split)
    message = str(info.value)
    assert 'no such file or folder' in message and str(src) in message
    assert 'config.data.source' in message
  assert not (tmp_path / 'cache').exists()


def test_glob_matching_nothing_is_a_clear_error(tmp_path):
  _write(tmp_path / 'texts', 'a.md', b'markdown')
  source = str(tmp_path / 'texts' / '**' / '*.txt')
  with pytest.raises(corpus.DataError) as info:
    corpus.load_documents(_cfg(source, tmp_path), 'train')
  message = str(info.value)
  assert repr(source) in message and 'nothing matches the glob' in message


def test_split_with_no_files_is_a_clear_error(tmp_path):
  # One file lands in exactly one split; the other split has no file at all
  # (before the fix tfds failed while writing the empty split).
  name = _names_in(0.5, True)[0]
  src = tmp_path / 'single'
  _write(src, name, b'the only document')
  cfg = _cfg(src, tmp_path)
  assert [bytes(d) for d in corpus.load_documents(cfg, 'validation')] == [
      b'the only document']
  with pytest.raises(corpus.DataError) as info:
    corpus.load_documents(cfg, 'train')
  message = str(info.value)
  assert 'train split' in message and repr(str(src)) in message
  assert 'Add files, change the fraction' in message
  assert 'config.data.validation_source' in message


def test_single_file_source(tmp_path):
  name = _names_in(0.5, False)[0]
  _write(tmp_path / 'one', name, b'a single file as the source')
  cfg = _cfg(tmp_path / 'one' / name, tmp_path)
  docs = corpus.load_documents(cfg, 'train')
  assert [bytes(d) for d in docs] == [b'a single file as the source']


def test_eval_window_length_must_be_positive():
  with pytest.raises(ValueError, match='length >= 1'):
    windows.eval_windows(np.arange(100, dtype=np.int32), 0, tokens=64)
