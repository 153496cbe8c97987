"""The token store: a corpus tokenized once into shards, read by memory map.

A source (``lmx.data.sources``) is tokenized once per (source fingerprint,
tokenizer) into a folder under ``config.data.cache_dir``::

    lmx_store/<source id>_<tokenizer>/<fingerprint>/
      store.json                the manifest, written last
      train/00000.bin           token ids, the smallest dtype of the vocab
      train/00000.docs.npy      int64: where each document ends in the shard
      train/00000.json          the shard's record: its unit, size, sha256
      validation/...            the same for the validation split

Both splits are written in one pass over the source, one shard per unit of
work (``sources.local_units``), by ``config.data.prepare_workers``
processes. The token stream of a split is its shards in order: every
document's ids followed by the end-of-document id, the same stream
``lmx.data.corpus.token_stream`` builds in memory (tested equal), so the
training batches of a run do not depend on how its data was prepared.

Writes are atomic: a shard is written to ``.tmp`` files and renamed, then
its record; the manifest is written once every shard is. A killed
preparation restarts where it stopped (shards whose record matches their
unit are kept); a full disk leaves nothing half-written and says so. Two
processes preparing the same store take turns on a file lock: one
prepares, the other then reads what it wrote.

The fingerprint covers every file's path, size and modification time (or a
catalog split's name and length), the split fraction, the text key and the
store's format version: a source whose files change gets a new store, and
the run says so once (the stale store is removed). On opening, each shard's
size is checked and, if its modification time is not the one recorded, its
sha256: a damaged shard is rebuilt from the source before anything reads
it.

``TokenStream`` reads a split through ``np.memmap``: memory does not grow
with the corpus, and a training batch reads only its own windows (one
process of a multi-host run, only its rows).
"""

from __future__ import annotations

import concurrent.futures
import errno
import fcntl
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Sequence

import numpy as np

from lmx.data import sources
from lmx.data.sources import Plan, tokenizer_key  # noqa: F401
from lmx.data import tokenizer as tokenizer_lib
from lmx.errors import DataError
from lmx.fs import is_disk_full, make_writable_dir, sha256_file

VERSION = sources.STORE_VERSION
MANIFEST = 'store.json'
SPLITS = ('train', 'validation')
# A worker encodes documents in batches of up to this many (SentencePiece
# encodes a list at once) or this many bytes, whichever comes first, so its
# memory stays bounded whatever the documents' sizes.
_ENCODE_BATCH = 256
_ENCODE_BYTES = 8 << 20


def id_dtype(vocab_size: int) -> np.dtype:
  """The smallest unsigned integer type that holds ids < ``vocab_size``."""
  for dt in (np.uint8, np.uint16, np.uint32):
    if vocab_size - 1 <= np.iinfo(dt).max:
      return np.dtype(dt)
  raise DataError(f'A vocabulary of {vocab_size} ids does not fit 32 bits.')


def _tokenizer_spec(tok):
  """What a worker process needs to rebuild the tokenizer."""
  return ('bytes', None) if tok.kind == 'bytes' else (tok.kind, tok.proto)


_WORKER_TOKENIZERS: dict = {}


def _tokenizer_from_spec(spec):
  kind, proto = spec
  if kind == 'bytes':
    return tokenizer_lib.BYTES
  key = hashlib.sha256(proto).hexdigest()
  if key not in _WORKER_TOKENIZERS:
    from lmx.data import subword  # pylint: disable=g-import-not-at-top
    _WORKER_TOKENIZERS[key] = subword.SentencePiece(proto, 'the store')
  return _WORKER_TOKENIZERS[key]


# -------------------------------------------------------------- writing


class _ShardWriter:
  """Appends documents' ids to ``<split>/<index>.bin.tmp``."""

  def __init__(self, folder: str, split: str, index: int, dtype, eod: int):
    self.dir = os.path.join(folder, split)
    self.name = f'{index:05d}'
    self.tmp = os.path.join(self.dir, self.name + '.bin.tmp')
    self.f = open(self.tmp, 'wb')  # pylint: disable=consider-using-with
    self.h = hashlib.sha256()
    self.dtype, self.eod = dtype, eod
    self.tokens, self.doc_ends = 0, []

  def add(self, ids: np.ndarray, ends: bool) -> None:
    if ends:
      ids = np.concatenate([ids, [self.eod]])
    data = np.ascontiguousarray(ids, self.dtype).tobytes()
    self.f.write(data)
    self.h.update(data)
    self.tokens += ids.size
    if ends:
      self.doc_ends.append(self.tokens)

  def close(self, unit_key: str) -> dict:
    self.f.close()
    path = os.path.join(self.dir, self.name + '.bin')
    docs_path = os.path.join(self.dir, self.name + '.docs.npy')
    np.save(docs_path + '.tmp.npy', np.asarray(self.doc_ends, np.int64))
    os.replace(docs_path + '.tmp.npy', docs_path)
    os.replace(self.tmp, path)
    st, docs_st = os.stat(path), os.stat(docs_path)
    record = {'unit': unit_key, 'file': self.name + '.bin',
              'tokens': int(self.tokens), 'docs': len(self.doc_ends),
              'sha256': self.h.hexdigest(), 'size': st.st_size,
              'mtime_ns': st.st_mtime_ns,
              'docs_sha256': sha256_file(docs_path),
              'docs_size': docs_st.st_size,
              'docs_mtime_ns': docs_st.st_mtime_ns}
    rec_path = os.path.join(self.dir, self.name + '.json')
    with open(rec_path + '.tmp', 'w') as f:
      json.dump(record, f)
    os.replace(rec_path + '.tmp', rec_path)
    return record

  def abort(self) -> None:
    try:
      self.f.close()
    finally:
      for p in (self.tmp,):
        if os.path.exists(p):
          os.remove(p)


def _encode(tok, docs: list[bytes]) -> list[np.ndarray]:
  if tok.kind == 'bytes':
    return [np.frombuffer(d, np.uint8) for d in docs]
  return tok.encode_documents([np.frombuffer(d, np.uint8) for d in docs])


def prepare_unit(args) -> dict:
  """Tokenizes one unit into its train and validation shards; returns
  their records and the unit's count of skipped records. Runs in a worker
  process (or inline): everything it needs is in ``args``."""
  index, unit, fraction, text_key, tok_spec, dtype, folder = args
  tok = _tokenizer_from_spec(tok_spec)
  writers = {s: _ShardWriter(folder, s, index, np.dtype(dtype), tok.eod)
             for s in SPLITS}
  bad = sources.BadRecords()
  try:
    pending, pending_bytes = [], 0

    def flush():
      for (_, ends, held_out), ids in zip(
          pending, _encode(tok, [p[0] for p in pending])):
        writers['validation' if held_out else 'train'].add(ids, ends)
      pending.clear()

    for doc in sources.documents(unit, fraction, text_key, bad):
      pending.append(doc)
      pending_bytes += len(doc[0])
      if len(pending) >= _ENCODE_BATCH or pending_bytes >= _ENCODE_BYTES:
        flush()
        pending_bytes = 0
    flush()
    limit = max(10, sources.BAD_RECORD_FRACTION * bad.total)
    if bad.count > limit:
      raise DataError(
          f'{bad.count} of {bad.total} records of {unit.files[0]} cannot be '
          f'used (more than {sources.BAD_RECORD_FRACTION:.0%}), e.g. '
          f'{bad.first}. Fix the file or set config.data.text_key to the '
          'field that holds the text.')
    records = {s: w.close(unit.key()) for s, w in writers.items()}
  except BaseException:
    for w in writers.values():
      w.abort()
    raise
  return {'index': index, 'records': records, 'bad': bad.count,
          'bad_first': bad.first}


# -------------------------------------------------------------- reading


class Documents(Sequence):
  """The documents of a split (their ids without the end-of-document id),
  read lazily from the store."""

  def __init__(self, stream: 'TokenStream'):
    self.stream = stream
    self.ends = stream.doc_ends()

  def __len__(self) -> int:
    return int(self.ends.size)

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    i = range(len(self))[i]
    start = int(self.ends[i - 1]) if i else 0
    return self.stream[start:int(self.ends[i]) - 1]


class TokenStream:
  """A split's token stream over its memory-mapped shards: ``size``,
  slicing and integer-array indexing as a 1-D numpy array, ``rows`` for
  training windows, ``documents()``."""

  ndim = 1

  def __init__(self, folder: str, split: str, records: list[dict], dtype):
    self.folder, self.split = folder, split
    self.dtype = np.dtype(dtype)
    self.records = [r for r in records if r['tokens']]
    # Plain arrays over the maps: slicing an np.memmap subclass costs more.
    self._maps = [np.asarray(np.memmap(
        os.path.join(folder, split, r['file']), dtype=self.dtype, mode='r',
        shape=(r['tokens'],))) for r in self.records]
    sizes = [r['tokens'] for r in self.records]
    self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    self.size = int(self.offsets[-1])
    self.shape = (self.size,)
    self._doc_ends = None

  def __len__(self) -> int:
    return self.size

  def _piece(self, a: int, b: int) -> np.ndarray:
    """``stream[a:b]`` for ``0 <= a <= b <= size``."""
    if a >= b:
      return np.zeros((0,), self.dtype)
    s = int(np.searchsorted(self.offsets, a, side='right')) - 1
    lo = int(self.offsets[s])
    if b <= self.offsets[s + 1]:
      return np.asarray(self._maps[s][a - lo:b - lo])
    parts = []
    while a < b:
      s = int(np.searchsorted(self.offsets, a, side='right')) - 1
      lo, hi = int(self.offsets[s]), int(self.offsets[s + 1])
      parts.append(np.asarray(self._maps[s][a - lo:min(b, hi) - lo]))
      a = min(b, hi)
    return np.concatenate(parts)

  def __getitem__(self, key):
    if isinstance(key, slice):
      a, b, step = key.indices(self.size)
      out = self._piece(a, max(a, b)) if step > 0 else None
      if step == 1:
        return out
      return np.asarray([self[i] for i in range(a, b, step)], self.dtype)
    if isinstance(key, (int, np.integer)):
      i = range(self.size)[int(key)]
      return self._piece(i, i + 1)[0]
    idx = np.asarray(key)
    if idx.dtype.kind not in 'iu':
      raise TypeError(f'A token stream takes integer indices, got {idx.dtype}.')
    if len(self._maps) == 1:
      return np.asarray(self._maps[0][idx])
    flat = idx.ravel()
    which = np.searchsorted(self.offsets, flat, side='right') - 1
    out = np.empty(flat.shape, self.dtype)
    for s in np.unique(which):
      m = which == s
      out[m] = self._maps[s][flat[m] - self.offsets[s]]
    return out.reshape(idx.shape)

  def rows(self, starts: np.ndarray, length: int) -> np.ndarray:
    """``[len(starts), length]``: the windows ``stream[s:s + length]``."""
    starts = np.asarray(starts, np.int64)
    out = np.empty((len(starts), length), self.dtype)
    shard = np.searchsorted(self.offsets, starts, side='right') - 1
    offsets = self.offsets.tolist()
    # A contiguous copy per window (faster than an element gather: each
    # window is one or two pages of the map).
    for i, (a, s) in enumerate(zip(starts.tolist(), shard.tolist())):
      if a + length <= offsets[s + 1]:
        lo = a - offsets[s]
        out[i] = self._maps[s][lo:lo + length]
      else:  # a window across shards
        out[i] = self._piece(a, a + length)
    return out

  def doc_ends(self) -> np.ndarray:
    """Where each document (with its end-of-document id) ends."""
    if self._doc_ends is None:
      parts = [np.load(os.path.join(self.folder, self.split,
                                    r['file'][:-4] + '.docs.npy')) + off
               for r, off in zip(self.records, self.offsets[:-1])]
      self._doc_ends = (np.concatenate(parts) if parts
                        else np.zeros((0,), np.int64))
    return self._doc_ends

  def documents(self) -> Documents:
    return Documents(self)

  def __array__(self, dtype=None, copy=None):
    del copy
    out = self._piece(0, self.size)
    return out if dtype is None else out.astype(dtype)


# ------------------------------------------------------------- building


def _read_manifest(folder: str) -> dict | None:
  try:
    with open(os.path.join(folder, MANIFEST)) as f:
      manifest = json.load(f)
  except (OSError, ValueError):
    return None
  return manifest if manifest.get('version') == VERSION else None


def _record_ok(folder: str, split: str, record: dict) -> bool:
  """Whether a shard (its ids and its documents file) is as its record
  says: each file's size always, and its sha256 when its modification time
  is not the one recorded."""
  path = os.path.join(folder, split, record['file'])
  for name, key in ((path, ''), (path[:-4] + '.docs.npy', 'docs_')):
    try:
      st = os.stat(name)
    except OSError:
      return False
    if st.st_size != record[key + 'size']:
      return False
    if (st.st_mtime_ns != record[key + 'mtime_ns']
        and sha256_file(name) != record[key + 'sha256']):
      return False
  return True


def _done_shards(folder: str, units) -> dict[int, dict]:
  """Shards of an unfinished preparation that can be kept."""
  done = {}
  for i, unit in enumerate(units):
    records = {}
    for split in SPLITS:
      try:
        with open(os.path.join(folder, split, f'{i:05d}.json')) as f:
          rec = json.load(f)
      except (OSError, ValueError):
        break
      if rec.get('unit') != unit.key() or not _record_ok(folder, split, rec):
        break
      records[split] = rec
    if len(records) == len(SPLITS):
      done[i] = {'index': i, 'records': records, 'bad': 0, 'bad_first': None}
  return done


# Source bytes that make a second worker pay for its start (a process that
# imports numpy and the tokenizer): bytes are copied at hundreds of MB/s,
# SentencePiece encodes a few MB/s.
_BYTES_PER_WORKER = {'bytes': 128 << 20, 'sentencepiece': 4 << 20}


def _workers(data_cfg, plan: 'Plan', tok) -> int:
  """``config.data.prepare_workers`` (0: one per core), no more than the
  source's size makes worth starting (a tfds source: as asked)."""
  n = int(data_cfg.get('prepare_workers', 0))
  n = n if n > 0 else (os.cpu_count() or 1)
  if plan.nbytes:
    n = min(n, max(1, -(-plan.nbytes // _BYTES_PER_WORKER.get(
        tok.kind, 4 << 20))))
  return n


def _run_units(jobs: list, workers: int) -> list[dict]:
  if workers <= 1 or len(jobs) <= 1:
    return [prepare_unit(job) for job in jobs]
  ctx = multiprocessing.get_context('spawn')
  with concurrent.futures.ProcessPoolExecutor(
      max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
    futures = [pool.submit(prepare_unit, job) for job in jobs]
    try:
      return [f.result() for f in futures]
    except BaseException:
      for f in futures:
        f.cancel()
      raise


def _say(message: str) -> None:
  print(message, flush=True)


def _build(plan: Plan, tok, folder: str, workers: int) -> dict:
  dtype = id_dtype(tok.vocab_size)
  for split in SPLITS:
    os.makedirs(os.path.join(folder, split), exist_ok=True)
  done = _done_shards(folder, plan.units)
  todo = [i for i in range(len(plan.units)) if i not in done]
  what = (f'{len(plan.files)} files, {plan.nbytes / 1e6:,.1f} MB'
          if plan.files else f'{len(plan.units)} parts')
  kept = f', {len(done)} shards kept from an unfinished run' if done else ''
  _say(f'Preparing the token store of config.data.source={plan.source!r} '
       f'({what}{kept}) with {min(workers, max(len(todo), 1))} worker(s) '
       f'into {folder}')
  start = time.perf_counter()
  spec = _tokenizer_spec(tok)
  jobs = [(i, plan.units[i], plan.fraction, plan.text_key, spec, dtype.str,
           folder) for i in todo]
  try:
    results = _run_units(jobs, workers)
  except OSError as e:
    if is_disk_full(e):
      raise DataError(
          f'The disk is full (no space left on device) while preparing the '
          f'token store in {folder}: nothing half-written is kept (the '
          'shards finished so far are, and are reused). Free space or point '
          'config.data.cache_dir at a larger disk, then run the same command '
          'again.') from None
    raise
  by_index = {**done, **{r['index']: r for r in results}}
  ordered = [by_index[i] for i in range(len(plan.units))]
  bad = sum(r['bad'] for r in ordered)
  if bad:
    first = next(r['bad_first'] for r in ordered if r['bad_first'])
    _say(f'note: skipped {bad} records that are not JSON or have no text '
         f'under config.data.text_key={plan.text_key!r} (first: {first}).')
  splits = {}
  for split in SPLITS:
    records = [r['records'][split] for r in ordered]
    splits[split] = {'tokens': sum(r['tokens'] for r in records),
                     'docs': sum(r['docs'] for r in records),
                     'shards': records}
  manifest = {'version': VERSION, 'source': plan.source,
              'root': plan.root, 'fingerprint': plan.fingerprint,
              'fraction': plan.fraction, 'text_key': plan.text_key,
              'tokenizer': tok.describe(), 'dtype': dtype.str,
              'eod': int(tok.eod), 'source_bytes': plan.nbytes,
              'skipped_records': bad,
              'created': time.strftime('%Y-%m-%dT%H:%M:%S'),
              'splits': splits}
  path = os.path.join(folder, MANIFEST)
  with open(path + '.tmp', 'w') as f:
    json.dump(manifest, f, indent=1)
  os.replace(path + '.tmp', path)
  took = time.perf_counter() - start
  _say(f'Prepared {splits["train"]["tokens"]:,} training and '
       f'{splits["validation"]["tokens"]:,} validation tokens in {took:.1f} s.')
  return manifest


def _repair(plan: Plan, tok, folder: str, manifest: dict) -> dict:
  """Rebuilds the shards that fail their check; returns the manifest."""
  damaged = sorted({i for split in SPLITS
                    for i, rec in enumerate(manifest['splits'][split]['shards'])
                    if not _record_ok(folder, split, rec)})
  if not damaged:
    return manifest
  names = ', '.join(f'{i:05d}' for i in damaged[:5])
  _say(f'The token store in {folder} has {len(damaged)} damaged shard(s) '
       f'({names}: size or checksum differ from their record); rebuilding '
       'them from the source.')
  os.remove(os.path.join(folder, MANIFEST))
  for i in damaged:
    for split in SPLITS:
      for suffix in ('.json', '.bin', '.docs.npy'):
        p = os.path.join(folder, split, f'{i:05d}{suffix}')
        if os.path.exists(p):
          os.remove(p)
  return _build(plan, tok, folder, 1)


def open_store(data_cfg, source: str, fraction: float, tok) -> dict:
  """The manifest of the store of ``source`` with ``tok``, prepared (once)
  if needed; its folder is ``manifest['folder']``."""
  plan = Plan(data_cfg, source, fraction)
  base = plan.base(tok)
  folder = plan.folder(tok)
  make_writable_dir(os.path.dirname(base), 'The dataset cache '
                    'config.data.cache_dir', DataError)
  os.makedirs(base, exist_ok=True)
  with open(base + '.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    manifest = _read_manifest(folder)
    if manifest is None:
      stale = [d for d in os.listdir(base) if d != plan.fingerprint
               and os.path.isdir(os.path.join(base, d))]
      if stale:
        _say(f'config.data.source={source!r} has changed since its token '
             'store was prepared (files added, removed or modified): '
             'preparing it again.')
      try:
        manifest = _build(plan, tok, folder, _workers(data_cfg, plan, tok))
      except OSError as e:
        if e.errno == errno.ENOSPC:
          raise DataError(f'The disk is full while preparing {folder}.') \
              from None
        raise
      for d in stale:
        shutil.rmtree(os.path.join(base, d), ignore_errors=True)
    else:
      manifest = _repair(plan, tok, folder, manifest)
  manifest['folder'] = folder
  return manifest


def _empty_split_message(data_cfg, split: str, source: str, field: str,
                         manifest: dict) -> str:
  if data_cfg.get('validation_source', '') or source.startswith('tfds:'):
    return f'{field}={source!r} holds no document for the {split} split.'
  return (
      f'The {split} split of config.data.source={source!r} is empty: none '
      f'of its documents is a {split} document ({split} files and records '
      'are chosen by hash with config.data.validation_fraction='
      f'{data_cfg.validation_fraction}). Add files, change the fraction, or '
      'give the validation text explicitly with '
      '--config.data.validation_source=<file, folder or glob>.')


def open_split(data_cfg, split: str, tok=tokenizer_lib.BYTES) -> TokenStream:
  """The token stream of ``split`` ('train' or 'validation') of
  ``data_cfg``'s source, from its store (prepared once)."""
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
  explicit = data_cfg.get('validation_source', '')
  source, fraction, part, field = (
      data_cfg.source, data_cfg.validation_fraction, split,
      'config.data.source')
  if data_cfg.source.startswith('tfds:'):
    fraction = 0.0
  elif explicit:
    fraction, part = 0.0, 'train'  # every file of each source is in it
    if split == 'validation':
      source, field = explicit, 'config.data.validation_source'
  manifest = open_store(data_cfg, source, fraction, tok)
  info = manifest['splits'][part]
  if not info['tokens']:
    raise DataError(_empty_split_message(data_cfg, split, source, field,
                                         manifest))
  return TokenStream(manifest['folder'], part, info['shards'],
                     manifest['dtype'])


def check_splits(data_cfg, tok=tokenizer_lib.BYTES) -> None:
  """DataError unless both splits hold text (prepares the store)."""
  for split in SPLITS:
    open_split(data_cfg, split, tok)


