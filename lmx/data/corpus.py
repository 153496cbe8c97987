"""Text corpora as tensorflow-datasets datasets, built locally once.

``LmxText`` is a tfds builder over a list of local files: the standard
library source of the running interpreter (``source='stdlib'``), or any
folder or glob of text files. It writes array_record shards under the cache
directory and is read back with ``as_data_source``, which needs no
TensorFlow. Documents are stored as raw bytes, so invalid UTF-8 is kept
byte-for-byte (each tokenizer keeps every byte); empty files are skipped, and a
source with no non-empty file, or a split with none, is a ``DataError`` that
says what to change (never a tfds traceback).

Files are split into train and validation deterministically by a hash of
their path relative to the root, so the split never depends on file order,
machine, or run. Each distinct (files, split fraction) gets its own builder
config name, so a changed folder is rebuilt rather than silently reused.

``source='tfds:<name>'`` reads a catalog dataset prepared by tfds instead;
preparing one needs TensorFlow and the network (the ``[tf]`` extra).
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import glob
import hashlib
import os
import sysconfig
from collections.abc import Sequence

import numpy as np

from lmx.data import tokenizer
from lmx.errors import DataError
from lmx.fs import make_writable_dir





def stdlib_root() -> str:
  return sysconfig.get_paths()['stdlib']


def list_files(source: str) -> tuple[str, list[str]]:
  """(root, sorted relative paths) of the text files a source names."""
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
        f'config.data.source={source!r} matches no files ({why}). Give an '
        "existing folder of text files, a glob such as 'texts/**/*.txt', "
        "'stdlib', or 'tfds:<catalog name>'.")
  root = os.path.abspath(root)
  return root, sorted(os.path.relpath(os.path.abspath(f), root) for f in files)


def printable_path(relpath: str) -> str:
  """The path as valid UTF-8 (a name that is not shows its bytes escaped)."""
  return os.fsencode(relpath).decode('utf-8', 'backslashreplace')


def is_validation(relpath: str, fraction: float) -> bool:
  """Deterministic split: a file is held out if its path hash is small."""
  # os.fsencode: a file name that is not valid UTF-8 hashes as its bytes.
  digest = hashlib.sha256(os.fsencode(relpath)).digest()
  return int.from_bytes(digest[:8], 'big') / 2.0**64 < fraction


def _fingerprint(root: str, files: Sequence[str], fraction: float) -> str:
  h = hashlib.sha256(f'{root}|{fraction}'.encode())
  for rel in files:
    st = os.stat(os.path.join(root, rel))
    h.update(os.fsencode(f'{rel}|{st.st_size}|{int(st.st_mtime)}\n'))
  return h.hexdigest()[:12]


@functools.cache
def _builder_class():
  # tensorflow_datasets is imported lazily: it is slow to import.
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()

  @dataclasses.dataclass(eq=False)
  class LmxTextConfig(tfds.core.BuilderConfig):
    root: str = ''
    files: tuple = dataclasses.field(default=(), repr=False)
    validation_fraction: float = 0.05

  class LmxText(tfds.core.GeneratorBasedBuilder):
    """Local text files as byte documents, split by path hash."""

    VERSION = tfds.core.Version('1.0.0')
    BUILDER_CONFIG_CLS = LmxTextConfig

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          description='Local text files as raw byte documents.',
          features=tfds.features.FeaturesDict({
              'path': tfds.features.Text(),
              'bytes': tfds.features.Tensor(shape=(None,), dtype=np.uint8),
          }))

    def _split_generators(self, dl_manager):
      del dl_manager
      # tfds cannot write a split with no examples: a split no file falls in
      # is left out, and load_documents reports it if it is asked for.
      cfg = self.builder_config
      held_out = [is_validation(rel, cfg.validation_fraction)
                  for rel in cfg.files]
      splits = {}
      if not all(held_out):
        splits['train'] = self._generate_examples(False)
      if any(held_out):
        splits['validation'] = self._generate_examples(True)
      return splits

    def _generate_examples(self, validation: bool):
      cfg = self.builder_config
      for rel in cfg.files:
        if is_validation(rel, cfg.validation_fraction) != validation:
          continue
        with open(os.path.join(cfg.root, rel), 'rb') as f:
          data = f.read()
        if data:
          name = printable_path(rel)
          yield name, {'path': name, 'bytes': np.frombuffer(data, np.uint8)}

  return LmxText, LmxTextConfig


def build_local(source: str, cache_dir: str, validation_fraction: float):
  """Prepares (once) and returns the tfds builder for a local source."""
  root, files = list_files(source)
  # Empty files hold no document; dropped here so that no split is left
  # with files but no examples. The name still fingerprints every file.
  unreadable = [rel for rel in files
                if not os.access(os.path.join(root, rel), os.R_OK)]
  if unreadable:
    shown = ', '.join(printable_path(r) for r in unreadable[:3])
    raise DataError(
        f'config.data.source={source!r}: {len(unreadable)} of its files under '
        f'{root} cannot be read by this user (e.g. {shown}): fix their '
        'permissions, or move them out of the source.')
  texts = [rel for rel in files if os.path.getsize(os.path.join(root, rel))]
  if not texts:
    raise DataError(
        f'config.data.source={source!r}: all {len(files)} files under {root} '
        'are empty (0 bytes). Add text to them or point config.data.source '
        'at a folder of non-empty text files.')
  LmxText, LmxTextConfig = _builder_class()
  slug = 'stdlib' if source == 'stdlib' else 'files'
  name = f'{slug}_{_fingerprint(root, files, validation_fraction)}'
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  data_dir = make_writable_dir(
      cache_dir, 'The dataset cache config.data.cache_dir', DataError)
  verbosity = absl_logging.get_verbosity()
  # tfds warns that a config outside BUILDER_CONFIGS is "custom": it is, by
  # design (one per source and fingerprint), so that warning is noise.
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    # Runs started together (a sweep, two terminals) would both prepare
    # the dataset and race on tfds' final rename: one prepares, the others
    # wait for it and then read what it wrote.
    with open(os.path.join(data_dir, f'.lmx_prepare_{name}.lock'), 'w') as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      builder = LmxText(
          config=LmxTextConfig(name=name, root=root, files=tuple(texts),
                               validation_fraction=validation_fraction),
          data_dir=data_dir, file_format='array_record')
      builder.download_and_prepare()
  finally:
    absl_logging.set_verbosity(verbosity)
  return builder


def load_documents(data_cfg, split: str) -> list[np.ndarray]:
  """The split's documents as uint8 arrays, in a fixed (path) order."""
  source = data_cfg.source
  if source.startswith('tfds:'):
    import tensorflow_datasets as tfds
    name = source[len('tfds:'):]
    split = data_cfg[f'{split}_split']   # the catalog's name of the split
    try:
      ds = tfds.data_source(name, split=split,
                            data_dir=os.path.expanduser(data_cfg.cache_dir))
    except Exception as e:  # tfds raises many types here.
      raise DataError(
          f'Could not open the tfds catalog dataset {name!r} split {split!r} '
          f'({type(e).__name__}: {e}). Catalog datasets must be prepared '
          'first, which needs `pip install -e ".[tf]"` and the network.'
      ) from e
    docs = []
    for i in range(len(ds)):
      example = ds[i]
      if data_cfg.text_key not in example:
        raise DataError(
            f'The tfds dataset {name!r} has no feature '
            f'config.data.text_key={data_cfg.text_key!r}; its features are '
            f'{sorted(example)}.')
      value = example[data_cfg.text_key]
      if isinstance(value, str):
        value = value.encode('utf-8')
      docs.append(np.frombuffer(value, np.uint8) if isinstance(value, bytes)
                  else np.asarray(value, np.uint8).reshape(-1))
    return [d for d in docs if d.size]
  builder, split = _local_split(data_cfg, split)
  ds = builder.as_data_source(split)
  records = [ds[i] for i in range(len(ds))]
  records.sort(key=lambda r: r['path'])
  return [np.asarray(r['bytes'], np.uint8) for r in records]


def _local_split(data_cfg, split: str):
  """(builder, its split name) of a local source's ``split``, or a
  DataError if that split has no document.

  With ``data_cfg.validation_source`` every file of ``source`` trains and
  every file of ``validation_source`` validates (each is one builder whose
  files all fall in its 'train' split); otherwise files are split by path
  hash."""
  explicit = data_cfg.get('validation_source', '')
  if explicit:
    source = explicit if split == 'validation' else data_cfg.source
    field = ('config.data.validation_source' if split == 'validation'
             else 'config.data.source')
    # No file is held out (fraction 0): all are in the 'train' split.
    builder = build_local(source, data_cfg.cache_dir, 0.0)
    if 'train' not in builder.info.splits:
      raise DataError(f'{field}={source!r} holds no document.')
    return builder, 'train'
  source = data_cfg.source
  builder = build_local(source, data_cfg.cache_dir,
                        data_cfg.validation_fraction)
  if split not in builder.info.splits or not builder.info.splits[split].num_examples:
    n = len(builder.builder_config.files)
    raise DataError(
        f'The {split} split of config.data.source={source!r} is empty: '
        f'none of its {n} non-empty files is a {split} file ({split} files '
        'are chosen by path hash with config.data.validation_fraction='
        f'{data_cfg.validation_fraction}). Add files, change the fraction, '
        'or give the validation text explicitly with '
        '--config.data.validation_source=<file, folder or glob>.')
  return builder, split


def check_splits(data_cfg) -> None:
  """DataError unless a local source has both a train and a validation
  split: a run that could train but never be evaluated is refused before
  training. (A tfds catalog dataset names its own splits.)"""
  if data_cfg.source.startswith('tfds:'):
    return
  for split in ('train', 'validation'):
    _local_split(data_cfg, split)


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
