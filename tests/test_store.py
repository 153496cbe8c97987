"""The token store (lmx.data.store), its sources and the prefetching loop.

The reference for every stream is built here independently: files read
directly, split by the documented hash, sorted by path, each document's
ids followed by EOD (``corpus.token_stream``).
"""

import errno
import gzip
import json
import os

import numpy as np
import pytest

from lmx import memory
from lmx.config import defaults
from lmx.data import corpus, prefetch, sources, store, tokenizer, windows
from lmx.errors import DataError


def _cfg(source, cache, fraction=0.5, **kw):
  c = defaults.get_config().data
  kw.setdefault('prepare_workers', 1)
  c.update(source=str(source), cache_dir=str(cache),
           validation_fraction=fraction, **kw)
  return c


def _texts(folder, n=12, big=None):
  os.makedirs(folder, exist_ok=True)
  docs = {}
  for i in range(n):
    data = (f'doc {i}: ' + 'abc é\n' * (3 + 7 * i)).encode()
    if i == 3:
      data += b'\xff\xfe not utf-8'
    docs[f'sub{i % 3}/d{i:02d}.txt'] = data
  docs['empty.txt'] = b''
  if big is not None:
    docs['big.txt'] = big
  for name, data in docs.items():
    path = os.path.join(folder, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
      f.write(data)
  return docs


def _reference(docs, fraction, split, tok=tokenizer.BYTES):
  names = sorted((n for n, d in docs.items() if d), key=sources.printable_path)
  chosen = [np.frombuffer(docs[n], np.uint8) for n in names
            if sources.is_validation(n, fraction) == (split == 'validation')]
  return corpus.token_stream(chosen, tok)


@pytest.mark.parametrize('unit_bytes', [None, 200])
def test_store_stream_equals_the_in_memory_stream(tmp_path, monkeypatch,
                                                  unit_bytes):
  """Both splits, one shard or many (a large file cut at line boundaries
  into several units): the same ids, the smallest dtype, slices, integer
  indexing and training rows as numpy on the reference."""
  big = b''.join(f'line {i} of the big file\n'.encode() for i in range(120))
  docs = _texts(tmp_path / 'src', big=big)
  if unit_bytes:
    monkeypatch.setattr(sources, 'UNIT_BYTES', unit_bytes)
  cfg = _cfg(tmp_path / 'src', tmp_path / 'cache')
  for split in store.SPLITS:
    ref = _reference(docs, 0.5, split)
    s = store.open_split(cfg, split)
    assert s.dtype == np.uint16 and s.size == ref.size
    if unit_bytes:
      assert len(s.records) > 3
    np.testing.assert_array_equal(np.asarray(s), ref)
    np.testing.assert_array_equal(s[5:ref.size - 3], ref[5:ref.size - 3])
    idx = np.random.default_rng(0).integers(0, ref.size - 20, (6, 1))
    idx = idx + np.arange(17)
    np.testing.assert_array_equal(s[idx], ref[idx])
    np.testing.assert_array_equal(s.rows(idx[:, 0], 17), ref[idx])
    assert int(s[-1]) == tokenizer.EOD
    # Documents come back without their EOD, in order.
    ends = np.flatnonzero(ref == tokenizer.EOD)
    assert len(s.documents()) == ends.size
    np.testing.assert_array_equal(s.documents()[1], ref[ends[0] + 1:ends[1]])
    batch = windows.train_batch(s, seed=3, step=7, batch=4, seq_len=16,
                                sampling='contiguous', max_position=64)
    want = windows.train_batch(ref, seed=3, step=7, batch=4, seq_len=16,
                               sampling='contiguous', max_position=64)
    for k in want:
      np.testing.assert_array_equal(batch[k], want[k])


def test_two_workers_write_the_same_store(tmp_path, monkeypatch):
  _texts(tmp_path / 'src', n=20)
  monkeypatch.setattr(sources, 'UNIT_BYTES', 300)  # several units
  # Workers start for any size (a real source needs megabytes per worker).
  monkeypatch.setattr(store, '_BYTES_PER_WORKER', {'bytes': 1})
  one = store.open_split(_cfg(tmp_path / 'src', tmp_path / 'c1'), 'train')
  two = store.open_split(_cfg(tmp_path / 'src', tmp_path / 'c2',
                              prepare_workers=2), 'train')
  assert len(two.records) > 2
  np.testing.assert_array_equal(np.asarray(one), np.asarray(two))
  assert [r['sha256'] for r in one.records] == [r['sha256'] for r in
                                                two.records]


def test_sentencepiece_store_and_cut_documents(tmp_path, monkeypatch):
  """A subword store equals encoding each whole document, also where a
  large document was cut at line boundaries into units."""
  from lmx.data import subword  # pylint: disable=import-outside-toplevel
  big = ''.join(f'def f{i}(x):\n    return x + {i}  # note\n'
                for i in range(300)).encode()
  docs = _texts(tmp_path / 'src', big=big)
  cfg = _cfg(tmp_path / 'src', tmp_path / 'cache', tokenizer='sentencepiece')
  cfg.sentencepiece.vocab_size = 300
  tok = subword.trained(cfg)
  monkeypatch.setattr(sources, 'UNIT_BYTES', 1000)
  for split in store.SPLITS:
    s = store.open_split(cfg, split, tok)
    assert s.dtype == np.uint16
    np.testing.assert_array_equal(np.asarray(s),
                                  _reference(docs, 0.5, split, tok))


def test_sentencepiece_trains_on_a_bounded_sample(tmp_path):
  from lmx.data import subword  # pylint: disable=import-outside-toplevel
  _texts(tmp_path / 'src', n=40)
  cfg = _cfg(tmp_path / 'src', tmp_path / 'cache')
  whole = subword.training_sample(cfg)
  cfg.sentencepiece.train_bytes = 2000
  sample = subword.training_sample(cfg)
  assert sum(map(len, whole)) > 2000 >= sum(map(len, sample[:-1]))
  assert sum(map(len, sample)) >= 2000 or len(sample) < len(whole)
  assert sample == subword.training_sample(cfg)  # deterministic
  assert set(sample) <= set(whole)


def _jsonl_lines(n, start=0):
  return [json.dumps({'text': f'record {i} ' * (i % 5 + 1), 'id': i})
          for i in range(start, start + n)]


def test_record_sources(tmp_path):
  """jsonl, jsonl.gz, jsonl.zst and parquet: one document per record, split
  by (file, place); a bad line is skipped and counted with file and line."""
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  import zstandard  # pylint: disable=import-outside-toplevel
  src = tmp_path / 'src'
  src.mkdir()
  lines = _jsonl_lines(30)
  (src / 'a.jsonl').write_text('\n'.join(lines[:10] + ['{not json'])
                               + '\n')
  with gzip.open(src / 'b.jsonl.gz', 'wt') as f:
    f.write('\n'.join(lines[10:20]) + '\n')
  (src / 'c.jsonl.zst').write_bytes(zstandard.ZstdCompressor().compress(
      ('\n'.join(lines[20:25]) + '\n').encode()))
  pq.write_table(pa.table({'text': [json.loads(x)['text'] for x in lines[25:]],
                           'n': list(range(5))}), src / 'd.parquet',
                 row_group_size=2)
  cfg = _cfg(src, tmp_path / 'cache', fraction=0.3)
  got = []
  for split in store.SPLITS:
    got += [bytes(np.asarray(d, np.uint8))
            for d in store.open_split(cfg, split).documents()]
  want = [json.loads(x)['text'].encode() for x in lines]
  assert sorted(got) == sorted(want)
  manifest = store.open_store(cfg, str(src), 0.3, tokenizer.BYTES)
  assert manifest['skipped_records'] == 1
  # The validation records are those the hash holds out, wherever they are.
  val = [bytes(np.asarray(d, np.uint8))
         for d in store.open_split(cfg, 'validation').documents()]
  assert 0 < len(val) < len(want)


def test_record_sources_bad_input(tmp_path, capsys):
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  src = tmp_path / 'src'
  src.mkdir()
  good = _jsonl_lines(20)
  (src / 'a.jsonl').write_text('\n'.join(good + ['[1, 2]', 'nope']) + '\n')
  cfg = _cfg(src, tmp_path / 'cache', fraction=0.2)
  store.open_split(cfg, 'train')
  out = capsys.readouterr().out
  assert 'skipped 2 records' in out and 'a.jsonl line 21' in out
  # Past the threshold: refused, naming the file and a line.
  (src / 'a.jsonl').write_text('\n'.join(['{"body": 1}'] * 40) + '\n')
  with pytest.raises(DataError, match=r"40 of 40 records of a.jsonl.*line 1"):
    store.open_split(cfg, 'train')
  os.remove(src / 'a.jsonl')
  pq.write_table(pa.table({'body': ['x' * 50] * 4}), src / 'b.parquet')
  with pytest.raises(DataError, match=r"no column config.data.text_key='text'"
                     r".*columns are \['body'\]"):
    store.open_split(cfg, 'train')


class _TinyCatalog:
  """A tfds dataset prepared here, as a catalog dataset would be."""

  @staticmethod
  def prepare(cache):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    class LmxTinyCatalog(tfds.core.GeneratorBasedBuilder):
      VERSION = tfds.core.Version('1.0.0')

      def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict(
                {'text': tfds.features.Text()}))

      def _split_generators(self, dl_manager):
        del dl_manager
        return {'train': self._generate_examples(0, 9),
                'validation': self._generate_examples(9, 12)}

      def _generate_examples(self, a, b):  # pylint: disable=arguments-differ
        for i in range(a, b):
          yield i, {'text': f'catalog document {i} ' * (i + 1)}

    LmxTinyCatalog(data_dir=cache, file_format='array_record'
                   ).download_and_prepare()
    return 'lmx_tiny_catalog'


def test_tfds_catalog_source(tmp_path):
  cache = str(tmp_path / 'cache')
  name = _TinyCatalog.prepare(cache)
  cfg = _cfg(f'tfds:{name}', cache)
  docs = sorted(bytes(np.asarray(d, np.uint8))
                for d in store.open_split(cfg, 'train').documents())
  assert docs == sorted(f'catalog document {i} '.encode() * (i + 1)
                        for i in range(9))
  assert len(store.open_split(cfg, 'validation').documents()) == 3
  cfg.text_key = 'body'
  with pytest.raises(DataError, match=r"features are \['text'\]"):
    store.open_split(cfg, 'train')
  cfg.source = 'tfds:no_such_dataset_here'
  with pytest.raises(DataError, match='tfds catalog dataset'):
    store.open_split(cfg, 'train')


def test_changed_source_is_prepared_again_once(tmp_path, capsys):
  docs = _texts(tmp_path / 'src')
  cfg = _cfg(tmp_path / 'src', tmp_path / 'cache')
  first = store.open_split(cfg, 'train')
  assert 'Preparing the token store' in capsys.readouterr().out
  store.open_split(cfg, 'train')
  assert capsys.readouterr().out == ''  # opened, not prepared again
  name = next(n for n in sorted(docs) if docs[n]
              and not sources.is_validation(n, 0.5))
  with open(tmp_path / 'src' / name, 'ab') as f:
    f.write(b'more text')
  again = store.open_split(cfg, 'train')
  out = capsys.readouterr().out
  assert out.count('has changed since its token store was prepared') == 1
  assert again.size == first.size + len(b'more text')
  assert again.folder != first.folder and not os.path.exists(first.folder)


@pytest.mark.parametrize('damage,part', [('flip', '.bin'),
                                         ('truncate', '.bin'),
                                         ('truncate', '.docs.npy')])
def test_damaged_shard_is_rebuilt_never_read(tmp_path, capsys, damage, part):
  docs = _texts(tmp_path / 'src')
  cfg = _cfg(tmp_path / 'src', tmp_path / 'cache')
  s = store.open_split(cfg, 'train')
  path = os.path.join(s.folder, 'train', s.records[0]['file'][:-4] + part)
  del s
  with open(path, 'r+b') as f:
    if damage == 'flip':
      f.seek(10)
      f.write(b'\x07\x07')
    else:
      f.truncate(20)
  capsys.readouterr()
  again = store.open_split(cfg, 'train')
  assert 'damaged shard' in capsys.readouterr().out
  ref = _reference(docs, 0.5, 'train')
  np.testing.assert_array_equal(np.asarray(again), ref)
  assert len(again.documents()) == np.sum(ref == tokenizer.EOD)


def test_killed_preparation_resumes_and_keeps_finished_shards(
    tmp_path, monkeypatch, capsys):
  docs = _texts(tmp_path / 'src', n=20)
  monkeypatch.setattr(sources, 'UNIT_BYTES', 300)
  cfg = _cfg(tmp_path / 'src', tmp_path / 'cache')
  calls = []
  real = store.prepare_unit

  def dies_at_third(args):
    if len(calls) == 2:
      raise KeyboardInterrupt  # as a kill would stop it
    calls.append(args[0])
    return real(args)

  monkeypatch.setattr(store, 'prepare_unit', dies_at_third)
  with pytest.raises(KeyboardInterrupt):
    store.open_split(cfg, 'train')
  folder = store.Plan(cfg, cfg.source, 0.5).folder(tokenizer.BYTES)
  assert not os.path.exists(os.path.join(folder, store.MANIFEST))
  assert not [f for f in os.listdir(os.path.join(folder, 'train'))
              if f.endswith('.tmp')]
  monkeypatch.setattr(store, 'prepare_unit', real)
  capsys.readouterr()
  s = store.open_split(cfg, 'train')
  assert '2 shards kept from an unfinished run' in capsys.readouterr().out
  np.testing.assert_array_equal(np.asarray(s), _reference(docs, 0.5, 'train'))


def test_full_disk_while_preparing_leaves_nothing_half_written(
    tmp_path, monkeypatch):
  _texts(tmp_path / 'src')
  cfg = _cfg(tmp_path / 'src', tmp_path / 'cache')

  def full(self, ids, ends):
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(store._ShardWriter, 'add', full)  # pylint: disable=protected-access
  with pytest.raises(DataError, match='disk is full.*nothing half-written'):
    store.open_split(cfg, 'train')
  folder = store.Plan(cfg, cfg.source, 0.5).folder(tokenizer.BYTES)
  left = [f for _, _, fs in os.walk(folder) for f in fs]
  assert left == []


def test_empty_split_names_the_fix(tmp_path):
  src = tmp_path / 'src'
  src.mkdir()
  (src / 'only.txt').write_bytes(b'text')
  held_out = sources.is_validation('only.txt', 0.5)
  empty = 'train' if held_out else 'validation'
  with pytest.raises(DataError, match=f'The {empty} split .* is empty.*'
                     'validation_source'):
    store.check_splits(_cfg(src, tmp_path / 'cache'))


def test_prefetch_gives_the_same_batches_and_raises_in_the_caller():
  fn = lambda step: {'x': np.full((2,), step)}
  with prefetch.Prefetch(fn, 3, 9, depth=2) as p:
    got = [int(p.get(s)['x'][0]) for s in range(3, 9)]
  assert got == list(range(3, 9))
  with prefetch.Prefetch(fn, 0, 4, depth=0) as p:
    assert int(p.get(0)['x'][0]) == 0
    with pytest.raises(ValueError, match='consecutive'):
      p.get(2)

  def fails(step):
    if step == 2:
      raise DataError('no data at step 2')
    return step

  with prefetch.Prefetch(fails, 0, 5, depth=3) as p:
    assert [p.get(0), p.get(1)] == [0, 1]
    with pytest.raises(DataError, match='step 2'):
      p.get(2)


def test_memory_estimate_counts_the_prefetched_batches():
  c = defaults.get_config()
  c.data.prefetch = 0
  none = memory.data_bytes(c)
  c.data.prefetch = 4
  assert memory.data_bytes(c) == 5 * none > 0


def test_a_process_reads_only_its_rows(tiny_config, monkeypatch):
  """One process of a multi-host run (``rows``) reads only its windows
  from the store, and they equal the same rows of the whole batch."""
  from lmx.training import trainer  # pylint: disable=import-outside-toplevel
  c = tiny_config('alibi')
  whole = trainer.make_batch_fn(c)(5)
  read = []
  real = store.TokenStream.rows
  monkeypatch.setattr(store.TokenStream, 'rows', lambda self, starts, n: (
      read.append(len(starts)), real(self, starts, n))[1])
  mine = np.array([1, 3])
  part = trainer.make_batch_fn(c, rows=mine)(5)
  assert read == [2]
  for k in whole:
    np.testing.assert_array_equal(part[k], whole[k][mine])


@pytest.mark.parametrize('suffix', ['.jsonl.gz', '.jsonl.zst'])
def test_a_damaged_compressed_file_is_one_message(tmp_path, suffix):
  src = tmp_path / 'src'
  src.mkdir()
  (src / f'a{suffix}').write_bytes(b'this is not compressed at all\n' * 5)
  with pytest.raises(DataError, match=f'a{suffix}.*cannot be decompressed'):
    store.open_split(_cfg(src, tmp_path / 'cache'), 'train')


def test_two_processes_preparing_at_once_prepare_once(tmp_path):
  """Started together, one process prepares and the other waits on the
  lock, then opens what the first wrote."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  _texts(tmp_path / 'src', n=30)
  code = (
      'import sys; sys.path.insert(0, sys.argv[3])\n'
      'from tests.test_store import _cfg\n'
      'from lmx.data import store\n'
      's = store.open_split(_cfg(sys.argv[1], sys.argv[2]), "train")\n'
      'print("size", s.size)\n')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  args = [sys.executable, '-c', code, str(tmp_path / 'src'),
          str(tmp_path / 'cache'), root]
  procs = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True,
                            cwd=root, env={**os.environ,
                                           'JAX_PLATFORMS': 'cpu'})
           for _ in range(2)]
  outs = [p.communicate(timeout=120)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), outs
  assert sum(o.count('Preparing the token store') for o in outs) == 1
  sizes = {line for o in outs for line in o.splitlines()
           if line.startswith('size')}
  assert len(sizes) == 1


def test_the_prepare_command(tmp_path):
  """``python -m lmx.data.prepare`` builds the store train.py would read,
  and refuses a source that names nothing with one line, exit 2."""
  from scripts import run  # pylint: disable=import-outside-toplevel
  _texts(tmp_path / 'src', n=30)
  common = ['-m', 'lmx.data.prepare', '--config=configs/alibi.py:size=tiny',
            f'--config.data.cache_dir={tmp_path / "cache"}',
            '--config.data.validation_fraction=0.5']
  proc = run(*common, f'--config.data.source={tmp_path / "src"}')
  assert 'Preparing the token store' in proc.stdout
  assert 'train: ' in proc.stdout and 'validation: ' in proc.stdout
  cfg = _cfg(tmp_path / 'src', tmp_path / 'cache')
  folder = store.Plan(cfg, cfg.source, 0.5).folder(tokenizer.BYTES)
  assert os.path.isfile(os.path.join(folder, store.MANIFEST))
  proc = run(*common, f'--config.data.source={tmp_path / "nothing"}',
             check=False)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1
  assert 'matches no files' in proc.stderr
