"""Where documents come from: text files, record files, tfds catalogs.

A source (``config.data.source``) names its documents; this module lists
them as *units*, pieces of preparation work a worker reads on its own, and
reads each unit's documents of one split, in a fixed order:

- ``'stdlib'``: the ``.py`` files of this interpreter's standard library.
- A folder or a glob of text files: each file is one document (its raw
  bytes, invalid UTF-8 kept).
- Record files among them, chosen by suffix (``.jsonl``, ``.jsonl.gz``,
  ``.jsonl.zst``, ``.parquet``): each record is one document, its text in
  ``config.data.text_key``. FineWeb-Edu, SlimPajama and OpenWebText2 ship
  this way. pyarrow reads parquet, zstandard ``.zst``.
- ``'tfds:<catalog name>'``: a prepared tfds catalog dataset, read in bulk
  (slices of its array_record data source, ``__getitems__``), with the split
  names ``config.data.train_split`` / ``validation_split``.

Splits. A local source is split into train and validation deterministically
by a hash, so the split never depends on file order, machine or run: a text
file by its path relative to the root (``is_validation``), a record by its
path and its place in the file (the line's byte offset in the decompressed
jsonl; row group and row in parquet). ``config.data.validation_source``
names validation text explicitly instead.

Documents are listed in path order (files sorted by their printable path),
then in file order; text files and plain jsonl larger than a unit
(``unit_bytes``) are cut at line boundaries into several units so that one large file is
prepared in parallel too (a text document cut this way ends with the last
unit: only that one adds the end-of-document id).
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import hashlib
import io
import json
import os
import sysconfig
from collections.abc import Iterator, Sequence

from lmx.errors import DataError

# The token store's format (lmx.data.store): part of every fingerprint.
STORE_VERSION = 2
RECORD_SUFFIXES = ('.jsonl', '.jsonl.gz', '.jsonl.zst', '.parquet')
# Source bytes per unit of preparation work (one shard each): a sixteenth
# of the source, within [MIN_UNIT_BYTES, UNIT_BYTES], so that a small
# corpus still has units for every worker and a large one has shards of a
# size a file system handles well. Small files are grouped up to it; larger
# text and plain jsonl files are cut into pieces of about this size. It
# depends on the source alone, never on the number of workers.
UNIT_BYTES = 64 << 20
MIN_UNIT_BYTES = 1 << 20
# Records that cannot be read (not JSON, no text_key, not text) are skipped
# and counted; more than this fraction of a unit's records is refused.
BAD_RECORD_FRACTION = 0.01


def stdlib_root() -> str:
  return sysconfig.get_paths()['stdlib']


def printable_path(relpath: str) -> str:
  """The path as valid UTF-8 (a name that is not shows its bytes escaped)."""
  return os.fsencode(relpath).decode('utf-8', 'backslashreplace')


def _hash_fraction(key: bytes) -> float:
  digest = hashlib.sha256(key).digest()
  return int.from_bytes(digest[:8], 'big') / 2.0**64


def is_validation(relpath: str, fraction: float) -> bool:
  """Deterministic split of text files: held out if the path hash is small."""
  # os.fsencode: a file name that is not valid UTF-8 hashes as its bytes.
  return _hash_fraction(os.fsencode(relpath)) < fraction


def record_is_validation(relpath: str, where: str, fraction: float) -> bool:
  """Deterministic split of records: by file and place in the file."""
  if fraction <= 0:
    return False
  return _hash_fraction(os.fsencode(relpath) + b'\0' + where.encode()) \
      < fraction


def record_kind(relpath: str) -> str | None:
  """'jsonl', 'jsonl.gz', 'jsonl.zst' or 'parquet'; None for a text file."""
  for suffix in RECORD_SUFFIXES:
    if relpath.endswith(suffix):
      return suffix[1:]
  return None


def list_files(source: str, field: str = 'config.data.source'
               ) -> tuple[str, list[str]]:
  """(root, relative paths sorted by their printable form) of the files a
  local source names."""
  if source == 'stdlib':
    root = stdlib_root()
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
      # Installed packages are not the standard library and differ by machine.
      dirnames[:] = sorted(d for d in dirnames
                           if d not in ('site-packages', 'dist-packages',
                                        '__pycache__'))
      files += [os.path.join(dirpath, f) for f in filenames if f.endswith('.py')]
  else:
    expanded = os.path.expanduser(source)
    if os.path.isdir(expanded):
      root = expanded
      # isfile drops broken links, which have no size to fingerprint.
      files = [p for d, _, fs in os.walk(root) for f in fs
               if os.path.isfile(p := os.path.join(d, f))]
      why = f'the folder {os.path.abspath(expanded)} holds no files'
    else:
      files = [f for f in glob.glob(expanded, recursive=True)
               if os.path.isfile(f)]
      root = os.path.commonpath(files) if files else os.path.dirname(expanded)
      if files and os.path.isfile(root):
        root = os.path.dirname(root)
      why = (f'nothing matches the glob from {os.getcwd()}'
             if any(c in expanded for c in '*?[')
             else f'no such file or folder: {os.path.abspath(expanded)}')
  if not files:
    raise DataError(
        f'{field}={source!r} matches no files ({why}). Give an '
        "existing folder of text files, a glob such as 'texts/**/*.txt', "
        "'stdlib', or 'tfds:<catalog name>'.")
  root = os.path.abspath(root)
  rels = [os.path.relpath(os.path.abspath(f), root) for f in files]
  return root, sorted(rels, key=lambda r: (printable_path(r), os.fsencode(r)))


# ------------------------------------------------------------------ units


@dataclasses.dataclass(frozen=True)
class Unit:
  """One piece of preparation work: its documents become one shard.

  ``kind``: 'texts' (whole text files ``files``), 'text' (bytes
  ``[start, stop)`` of one text file; ``last``: the piece that ends the
  document), 'jsonl' (the lines starting in ``[start, stop)`` of a plain
  jsonl file, or all of a compressed one), 'parquet' (row groups
  ``[start, stop)``), 'tfds' (examples ``[start, stop)`` of a catalog split).
  """
  kind: str
  root: str
  files: tuple[str, ...]
  start: int = 0
  stop: int = -1
  last: bool = True

  def key(self) -> str:
    """What the unit covers, to match a shard to its unit on resume."""
    return json.dumps([self.kind, self.files, self.start, self.stop,
                       self.last])


def unit_bytes(total: int) -> int:
  return min(UNIT_BYTES, max(MIN_UNIT_BYTES, total // 16))


def _line_cuts(path: str, size: int, unit: int) -> list[int]:
  """Offsets that cut a file into pieces of about ``unit`` bytes, each
  just after a newline (or at the end)."""
  cuts = [0]
  with open(path, 'rb') as f:
    while cuts[-1] + unit < size:
      f.seek(cuts[-1] + unit)
      chunk = f.read(1 << 20)
      nl = chunk.find(b'\n')
      while nl < 0 and chunk:
        more = f.read(1 << 20)
        if not more:
          break
        nl_more = more.find(b'\n')
        nl = len(chunk) + nl_more if nl_more >= 0 else -1
        chunk += more
      if nl < 0:
        break
      cut = cuts[-1] + unit + nl + 1
      if cut >= size:
        break
      cuts.append(cut)
  return cuts + [size]


def local_units(root: str, files: Sequence[str]) -> list[Unit]:
  """The units of a local source's (non-empty) files, in document order."""
  sizes = {rel: os.path.getsize(os.path.join(root, rel)) for rel in files}
  unit = unit_bytes(sum(sizes.values()))
  units, group, group_bytes = [], [], 0

  def flush():
    nonlocal group, group_bytes
    if group:
      units.append(Unit('texts', root, tuple(group)))
    group, group_bytes = [], 0

  for rel in files:
    path = os.path.join(root, rel)
    size = sizes[rel]
    kind = record_kind(rel)
    if kind is None and size <= unit:
      group.append(rel)
      group_bytes += size
      if group_bytes >= unit:
        flush()
      continue
    flush()
    if kind == 'parquet':
      groups = _parquet(path, rel).metadata.num_row_groups
      per = max(1, int(groups * unit / max(size, 1)))
      units += [Unit('parquet', root, (rel,), g, min(g + per, groups))
                for g in range(0, groups, per)]
    elif kind in ('jsonl.gz', 'jsonl.zst'):
      units.append(Unit('jsonl', root, (rel,)))
    else:  # a large text file, or a plain jsonl: cut at line boundaries
      cuts = _line_cuts(path, size, unit)
      pieces = list(zip(cuts[:-1], cuts[1:]))
      for i, (a, b) in enumerate(pieces):
        units.append(Unit('text' if kind is None else 'jsonl', root, (rel,),
                          a, b, last=i == len(pieces) - 1))
  flush()
  return units


def _parquet(path: str, rel: str):
  try:
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise DataError(f'{rel} is a parquet file, which needs pyarrow: pip '
                    'install pyarrow.') from None
  try:
    return pq.ParquetFile(path)
  except Exception as e:  # pyarrow raises ArrowInvalid and OSError
    raise DataError(f'{path} is not a readable parquet file '
                    f'({type(e).__name__}: {e}).') from None


# -------------------------------------------------------------- reading


def _open_jsonl(path: str, rel: str):
  if rel.endswith('.gz'):
    return gzip.open(path, 'rb')
  if rel.endswith('.zst'):
    try:
      import zstandard  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise DataError(f'{rel} is zstd-compressed, which needs zstandard: pip '
                      'install zstandard.') from None
    raw = open(path, 'rb')  # pylint: disable=consider-using-with
    return io.BufferedReader(
        zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
  return open(path, 'rb')


def _record_text(value, text_key: str) -> bytes | None:
  if not isinstance(value, dict) or text_key not in value:
    return None
  text = value[text_key]
  if isinstance(text, str):
    return text.encode('utf-8', 'surrogatepass')
  return None


class BadRecords:
  """Counts records skipped (not JSON, no text key); the first one is kept
  with its file and line for the message."""

  def __init__(self):
    self.count, self.total, self.first = 0, 0, None

  def bad(self, where: str, why: str) -> None:
    self.count += 1
    if self.first is None:
      self.first = f'{where}: {why}'


def _jsonl_documents(unit: Unit, fraction: float, text_key: str,
                     bad: BadRecords) -> Iterator[tuple[bytes, bool]]:
  rel = unit.files[0]
  path = os.path.join(unit.root, rel)
  try:
    f = _open_jsonl(path, rel)
    with f:
      offset = unit.start
      if unit.start:
        f.seek(unit.start)
      line_no = None if unit.start else 0
      for line in f:
        where_offset = offset
        offset += len(line)
        if line_no is not None:
          line_no += 1
        if unit.stop >= 0 and where_offset >= unit.stop:
          break
        if not line.strip():
          continue
        held_out = record_is_validation(rel, str(where_offset), fraction)
        bad.total += 1
        where = (f'{path} line {line_no}' if line_no is not None
                 else f'{path} at byte {where_offset}')
        try:
          value = json.loads(line)
        except ValueError as e:
          bad.bad(where, f'not JSON ({e})')
          continue
        text = _record_text(value, text_key)
        if text is None:
          keys = sorted(value) if isinstance(value, dict) else type(value).__name__
          bad.bad(where, f'no text under config.data.text_key={text_key!r} '
                  f'(it has {keys})')
          continue
        if text:
          yield text, held_out
  except Exception as e:  # pylint: disable=broad-except
    # A real I/O error (it has an errno: a full disk, permissions) is
    # reported as such; a damaged gzip or zstd stream is a DataError.
    damaged = (isinstance(e, EOFError) or type(e).__name__ == 'ZstdError'
               or (isinstance(e, OSError) and e.errno is None))
    if not damaged:
      raise
    raise DataError(f'{path} cannot be decompressed ({type(e).__name__}: '
                    f'{e}): the file is damaged or not {rel.rsplit(".", 1)[-1]}.'
                    ) from None


def _parquet_documents(unit: Unit, fraction: float, text_key: str
                       ) -> Iterator[tuple[bytes, bool]]:
  rel = unit.files[0]
  path = os.path.join(unit.root, rel)
  pf = _parquet(path, rel)
  names = pf.schema_arrow.names
  if text_key not in names:
    raise DataError(
        f'The parquet file {path} has no column config.data.text_key='
        f'{text_key!r}; its columns are {names}. Set --config.data.text_key '
        'to the column that holds the text.')
  for g in range(unit.start, unit.stop):
    column = pf.read_row_group(g, columns=[text_key]).column(0).to_pylist()
    for row, text in enumerate(column):
      if isinstance(text, str):
        text = text.encode('utf-8', 'surrogatepass')
      if isinstance(text, bytes) and text:
        yield text, record_is_validation(rel, f'{g}:{row}', fraction)


def _text_documents(unit: Unit, fraction: float
                    ) -> Iterator[tuple[bytes, bool, bool]]:
  """(bytes, ends the document, held out) of a 'texts' or 'text' unit."""
  if unit.kind == 'texts':
    for rel in unit.files:
      with open(os.path.join(unit.root, rel), 'rb') as f:
        data = f.read()
      if data:
        yield data, True, is_validation(rel, fraction)
    return
  rel = unit.files[0]
  with open(os.path.join(unit.root, rel), 'rb') as f:
    f.seek(unit.start)
    data = f.read(unit.stop - unit.start)
  if data or unit.last:
    yield data, unit.last, is_validation(rel, fraction)


def tfds_source(name: str, split: str, data_dir: str):
  """The array_record data source of a prepared tfds catalog split."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return tfds.data_source(name, split=split,
                            data_dir=os.path.expanduser(data_dir))
  except Exception as e:  # tfds raises many types here.
    raise DataError(
        f'Could not open the tfds catalog dataset {name!r} split {split!r} '
        f'({type(e).__name__}: {e}). Catalog datasets must be prepared '
        'first, which needs `pip install -e ".[tf]"` and the network.'
    ) from e


def tfds_units(name: str, split: str, role: str, data_dir: str,
               per_unit: int = 16384) -> list[Unit]:
  """Units over the catalog split ``split``, which lmx uses as its ``role``
  split ('train' or 'validation')."""
  n = len(tfds_source(name, split, data_dir))
  return [Unit('tfds', data_dir, (name, split, role), i, min(i + per_unit, n))
          for i in range(0, n, per_unit)]


def _tfds_documents(unit: Unit, text_key: str) -> Iterator[bytes]:
  name, split, _ = unit.files
  ds = tfds_source(name, split, unit.root)
  batch = 1024
  for i in range(unit.start, unit.stop, batch):
    idx = list(range(i, min(i + batch, unit.stop)))
    examples = (ds.__getitems__(idx) if hasattr(ds, '__getitems__')
                else [ds[j] for j in idx])
    for example in examples:
      if text_key not in example:
        raise DataError(
            f'The tfds dataset {name!r} has no feature '
            f'config.data.text_key={text_key!r}; its features are '
            f'{sorted(example)}.')
      value = example[text_key]
      if isinstance(value, str):
        value = value.encode('utf-8')
      if not isinstance(value, bytes):
        import numpy as np  # pylint: disable=g-import-not-at-top
        value = np.asarray(value, np.uint8).tobytes()
      if value:
        yield value


def documents(unit: Unit, fraction: float, text_key: str,
              bad: BadRecords | None = None
              ) -> Iterator[tuple[bytes, bool, bool]]:
  """The unit's documents, in order, as (bytes, ends the document, held
  out for validation). A tfds unit's split is its own (``unit.files``)."""
  bad = bad if bad is not None else BadRecords()
  if unit.kind in ('texts', 'text'):
    yield from _text_documents(unit, fraction)
  elif unit.kind == 'jsonl':
    for d, held_out in _jsonl_documents(unit, fraction, text_key, bad):
      yield d, True, held_out
  elif unit.kind == 'parquet':
    for d, held_out in _parquet_documents(unit, fraction, text_key):
      yield d, True, held_out
  elif unit.kind == 'tfds':
    for d in _tfds_documents(unit, text_key):
      yield d, True, unit.files[2] == 'validation'
  else:
    raise ValueError(f'Unknown unit kind {unit.kind!r}.')


def tokenizer_key(tok) -> str:
  if tok.kind == 'bytes':
    return 'bytes'
  return f'{tok.kind}-{tok.sha256[:12]}'


# ------------------------------------------------------------- the plan


class Plan:
  """What a store is built from: its units, fingerprint and folder."""

  def __init__(self, data_cfg, source: str, fraction: float):
    self.source, self.fraction = source, float(fraction)
    self.text_key = data_cfg.get('text_key', 'text')
    cache = os.path.expanduser(data_cfg.cache_dir)
    if source.startswith('tfds:'):
      name = source[len('tfds:'):]
      self.units = (
          tfds_units(name, data_cfg.train_split, 'train', cache)
          + tfds_units(name, data_cfg.validation_split, 'validation',
                               cache))
      self.nbytes = 0
      ident = json.dumps([name, data_cfg.train_split,
                          data_cfg.validation_split,
                          [u.stop for u in self.units], self.text_key])
      self.files = []
      slug, root = 'tfds_' + name.replace('/', '_'), cache
    else:
      # The field that names this source, for the messages.
      field = ('config.data.validation_source'
               if source == data_cfg.get('validation_source', '')
               and source != data_cfg.source else 'config.data.source')
      root, files = list_files(source, field)
      unreadable = [rel for rel in files
                    if not os.access(os.path.join(root, rel), os.R_OK)]
      if unreadable:
        shown = ', '.join(printable_path(r) for r in unreadable[:3])
        raise DataError(
            f'{field}={source!r}: {len(unreadable)} of its files '
            f'under {root} cannot be read by this user (e.g. {shown}): fix '
            'their permissions, or move them out of the source.')
      stats = {rel: os.stat(os.path.join(root, rel)) for rel in files}
      texts = [rel for rel in files if stats[rel].st_size]
      if not texts:
        raise DataError(
            f'{field}={source!r}: all {len(files)} files under '
            f'{root} are empty (0 bytes). Add text to them or point '
            f'{field} at a folder of non-empty text files.')
      self.files, self.nbytes = texts, sum(stats[r].st_size for r in texts)
      self.units = local_units(root, texts)
      records = any(record_kind(r) for r in texts)
      ident = '\n'.join(
          f'{r}|{stats[r].st_size}|{stats[r].st_mtime_ns}' for r in files)
      ident += f'|{self.text_key if records else ""}'
      slug = 'stdlib' if source == 'stdlib' else 'files'
    self.root = root
    # surrogateescape: a file name that is not UTF-8 hashes as its bytes.
    self.source_id = (f'{slug}_' + hashlib.sha256(
        f'{root}|{source}'.encode('utf-8', 'surrogateescape')
    ).hexdigest()[:8])
    self.fingerprint = hashlib.sha256(
        f'{STORE_VERSION}|{self.fraction}|{ident}'.encode('utf-8', 'surrogateescape')
    ).hexdigest()[:16]
    self.cache = cache

  def base(self, tok) -> str:
    return os.path.join(self.cache, 'lmx_store',
                        f'{self.source_id}_{tokenizer_key(tok)}')

  def folder(self, tok) -> str:
    return os.path.join(self.base(tok), self.fingerprint)
