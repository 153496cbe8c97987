"""SentencePiece subword tokenizers (``config.data.tokenizer='sentencepiece'``).

A model is either given (``config.data.sentencepiece.model_file``) or
trained by lmx on the *training* split of ``config.data`` (BPE or unigram,
``model_type``, with ``vocab_size`` ids in all) and cached beside the
token store, under ``<cache_dir>/lmx_sentencepiece/``, keyed by the
source's fingerprint and the options; a file lock lets runs started
together train it once. It trains on a bounded sample of the split
(``training_sample``: at most ``sentencepiece.train_bytes``, documents
chosen by a hash of their place, in corpus order). Training is
deterministic: one thread, every sampled line in order, no sampling
inside SentencePiece.

Ids (of a model lmx trains): 0 is unknown (never produced: see below), 1
ends a document (SentencePiece's ``eos``, the byte tokenizer's EOD), 2..257
are the 256 bytes (``byte_fallback``), and the rest are learned pieces.
Text is not normalised, gets no dummy prefix and keeps every space, so a
document is its pieces' bytes concatenated: any byte sequence round-trips
exactly. Bytes that are not valid UTF-8, and the character U+2581 (which
SentencePiece uses to write spaces), are encoded as byte ids.

A trained run keeps its own copy of the model, ``<workdir>/tokenizer.model``
(``install``), and its ``config.json`` has ``model.vocab_size`` resolved
from it (``resolve``); evaluation and generation of the run read that copy
(``for_run``), so a later change to the cache or to the given file cannot
change the run.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
from collections.abc import Sequence

import numpy as np

from lmx.data import sources
from lmx.data import tokenizer as tokenizer_lib
from lmx.config.fields import Fields, require
from lmx.errors import CheckpointError, ConfigError, DataError
from lmx.fs import make_writable_dir

MODEL_FILE = 'tokenizer.model'   # a run's own copy, in its workdir
# Beside it: {"sha256": ..., "vocab_size": ...} of that copy, written by
# ``install`` and checked by every read of the copy (``_run_copy``), so a
# file replaced on disk (even by one of the same size) is not taken for
# the run's own.
SUM_FILE = 'tokenizer.sha256.json'
MODEL_TYPES = ('bpe', 'unigram')
# unknown + end-of-document + 256 bytes: the least a vocabulary holds
# before any character or learned piece.
MIN_VOCAB = 2 + 256
MAX_VOCAB = 1 << 20
# Bumped when what lmx asks the trainer for changes, so old caches are not
# reused for a different recipe.
RECIPE = 1
# Characters that SentencePiece cannot carry through its pieces: lone
# surrogates (bytes that were not UTF-8, via surrogateescape) and U+2581.
_AS_BYTES = re.compile('([\udc80-\udcff\u2581]+)')
_SPACE = '\u2581'


def _spm():
  try:
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  except ImportError as e:  # pragma: no cover - an install problem
    raise ConfigError(
        "config.data.tokenizer='sentencepiece' needs the sentencepiece "
        'package: pip install sentencepiece (it is in setup.py).') from e
  return spm


class SentencePiece:
  """A SentencePiece model as an lmx tokenizer (``lmx.data.tokenizer``)."""

  kind = 'sentencepiece'

  def __init__(self, proto: bytes, origin: str):
    self.proto, self.origin = proto, origin
    self.sha256 = hashlib.sha256(proto).hexdigest()
    spm = _spm()
    try:
      sp = spm.SentencePieceProcessor(model_proto=proto)
    except Exception as e:  # sentencepiece raises RuntimeError and others
      raise ConfigError(
          f'{origin} is not a SentencePiece model ({type(e).__name__}: '
          f'{e}). Give a .model file written by SentencePiece, or leave '
          "config.data.sentencepiece.model_file='' to let lmx train one.") \
          from None
    self.sp = sp
    self.vocab_size = sp.get_piece_size()
    self.eod = sp.eos_id()
    byte_ids = [sp.piece_to_id(f'<0x{b:02X}>') for b in range(256)]
    unk = sp.unk_id()
    if self.eod < 0 or any(i == unk or not sp.is_byte(i) for i in byte_ids):
      raise ConfigError(
          f'{origin} cannot be used: lmx needs a SentencePiece model with '
          'an end-of-document piece (eos_id >= 0) and the 256 byte pieces '
          '(trained with byte_fallback=True), so that every byte sequence '
          "has ids. Leave config.data.sentencepiece.model_file='' to let lmx "
          'train one.')
    self.byte_ids = np.asarray(byte_ids, np.int32)
    table = []
    for i in range(self.vocab_size):
      if i == self.eod:
        table.append(b'\n')
      elif sp.is_byte(i):
        table.append(bytes([int(sp.id_to_piece(i)[3:5], 16)]))
      elif sp.is_control(i) or sp.is_unused(i):
        table.append(b'')
      elif sp.is_unknown(i):
        table.append('\ufffd'.encode())
      else:
        table.append(sp.id_to_piece(i).replace(_SPACE, ' ').encode('utf-8'))
    self._table = table
    self.byte_lengths = np.asarray([len(t) for t in table], np.int64)
    probe = 'lmx  probe:\n\tx = [1, 2]  # \u00e9\n'
    if self.decode(self.encode(probe)) != probe:
      raise ConfigError(
          f'{origin} does not give back the text it encodes (it normalises '
          'text, adds a dummy prefix or drops spaces), so lmx could not count '
          'the bytes its tokens stand for. lmx needs a model trained with '
          "normalization_rule_name='identity', add_dummy_prefix=False, "
          'remove_extra_whitespaces=False and byte_fallback=True; or leave '
          "config.data.sentencepiece.model_file='' to let lmx train one.")

  def _encode_text(self, text: str) -> list[int]:
    out = []
    for k, part in enumerate(_AS_BYTES.split(text)):
      if not part:
        continue
      if k % 2:  # the characters SentencePiece cannot carry: as bytes
        raw = part.encode('utf-8', 'surrogateescape')
        out.extend(self.byte_ids[np.frombuffer(raw, np.uint8)].tolist())
      else:
        out.extend(self.sp.encode(part))
    return out

  def encode(self, text) -> np.ndarray:
    raw = tokenizer_lib.as_bytes(text)
    return np.asarray(
        self._encode_text(raw.decode('utf-8', 'surrogateescape')), np.int32)

  def encode_documents(self, docs: Sequence[np.ndarray]) -> list[np.ndarray]:
    texts = [tokenizer_lib.as_bytes(np.asarray(d, np.uint8)).decode(
        'utf-8', 'surrogateescape') for d in docs]
    plain = [i for i, t in enumerate(texts) if not _AS_BYTES.search(t)]
    out = [None] * len(texts)
    # Most documents have no character to carry as bytes: encoded together.
    for i, ids in zip(plain, self.sp.encode([texts[i] for i in plain])):
      out[i] = np.asarray(ids, np.int32)
    for i, t in enumerate(texts):
      if out[i] is None:
        out[i] = np.asarray(self._encode_text(t), np.int32)
    return out

  def decode_bytes(self, ids) -> bytes:
    table, n = self._table, self.vocab_size
    return b''.join(table[i] if 0 <= i < n else b'\xef\xbf\xbd'
                    for i in np.asarray(ids).ravel().tolist())

  def decode(self, ids) -> str:
    return self.decode_bytes(ids).decode('utf-8', errors='replace')

  def describe(self) -> dict:
    return {'kind': self.kind, 'vocab_size': self.vocab_size,
            'sha256': self.sha256}


def load(path: str, what: str) -> SentencePiece:
  """The model in ``path``; ``what`` names it in messages."""
  try:
    with open(os.path.expanduser(path), 'rb') as f:
      proto = f.read()
  except OSError as e:
    raise ConfigError(
        f'{what}={path!r} cannot be read ({e.strerror or e}): give the path '
        "of a SentencePiece .model file, or '' to let lmx train one on the "
        'training split.') from None
  return SentencePiece(proto, f'{what}={path!r}')


# ------------------------------------------------------------- training


def _training_lines(docs) -> list[str]:
  """The training text as SentencePiece sentences: the non-empty lines of
  every document, in order (bytes that are not UTF-8 and U+2581 left out:
  they are always encoded as bytes)."""
  lines = []
  for d in docs:
    text = bytes(np.asarray(d, np.uint8)).decode('utf-8', 'ignore')
    lines.extend(s for s in text.replace(_SPACE, '').split('\n') if s)
  return lines


def _train_plan(data_cfg):
  """The store plan of the training split's source (its fraction)."""
  explicit = data_cfg.get('validation_source', '')
  fraction = (0.0 if explicit or data_cfg.source.startswith('tfds:')
              else data_cfg.validation_fraction)
  return sources.Plan(data_cfg, data_cfg.source, fraction)


def training_sample(data_cfg, plan=None) -> list[bytes]:
  """A bounded, deterministic sample of the training split's documents,
  in corpus order: each document is kept with probability
  ``train_bytes / (bytes of the training split)`` (by a hash of its place,
  so no two runs differ), until ``train_bytes`` are kept. A split no larger
  than ``train_bytes`` is kept whole."""
  plan = plan or _train_plan(data_cfg)
  budget = int(data_cfg.sentencepiece.train_bytes)
  estimate = plan.nbytes * (1.0 - plan.fraction) if plan.nbytes else 0
  keep = 1.0 if not estimate else min(1.0, budget / estimate)
  out, total, n = [], 0, 0
  for unit in plan.units:
    for data, _, held_out in sources.documents(unit, plan.fraction,
                                               plan.text_key):
      if held_out:
        continue
      n += 1
      if keep < 1.0 and sources._hash_fraction(  # pylint: disable=protected-access
          f'{n}'.encode()) >= keep:
        continue
      out.append(data)
      total += len(data)
      if total >= budget:
        return out
  return out


def _options(sp_cfg) -> dict:
  return {'model_type': sp_cfg.model_type, 'vocab_size': int(sp_cfg.vocab_size),
          'character_coverage': float(sp_cfg.character_coverage),
          'train_bytes': int(sp_cfg.train_bytes)}


def cache_path(data_cfg) -> str:
  """Where the model trained for ``data_cfg`` is cached."""
  opts = _options(data_cfg.sentencepiece)
  plan = _train_plan(data_cfg)
  name = f'{plan.source_id}_{plan.fingerprint}'  # changes with the split
  key = hashlib.sha256(json.dumps(
      {'dataset': name, 'recipe': RECIPE, 'spm': _spm().__version__, **opts},
      sort_keys=True).encode()).hexdigest()[:12]
  folder = os.path.join(os.path.expanduser(data_cfg.cache_dir),
                        'lmx_sentencepiece')
  return os.path.join(
      folder, f'{name}_{opts["model_type"]}{opts["vocab_size"]}_{key}.model')


def train_proto(data_cfg) -> bytes:
  """A model trained on the training split of ``data_cfg`` (uncached)."""
  sp_cfg = data_cfg.sentencepiece
  opts = _options(sp_cfg)
  lines = _training_lines(
      np.frombuffer(d, np.uint8) for d in training_sample(data_cfg))
  if not lines:
    raise DataError(
        f'The training split of config.data.source={data_cfg.source!r} '
        'holds no text to train a SentencePiece model on.')
  out = io.BytesIO()
  try:
    _spm().SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=out,
        model_type=opts['model_type'], vocab_size=opts['vocab_size'],
        character_coverage=opts['character_coverage'],
        byte_fallback=True, normalization_rule_name='identity',
        add_dummy_prefix=False, remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, split_digits=False,
        unk_id=0, eos_id=1, bos_id=-1, pad_id=-1,
        # Deterministic: one thread, every line in order, no sampling.
        num_threads=1, input_sentence_size=0, shuffle_input_sentence=False,
        max_sentence_length=1 << 15, minloglevel=2)
  except RuntimeError as e:
    raise DataError(_training_message(str(e), data_cfg)) from None
  return out.getvalue()


def _training_message(error: str, data_cfg) -> str:
  sp_cfg = data_cfg.sentencepiece
  where = (f'config.data.sentencepiece.vocab_size={sp_cfg.vocab_size} '
           f'(model_type={sp_cfg.model_type!r}) on the training split of '
           f'config.data.source={data_cfg.source!r}')
  small = re.search(r'smaller than required_chars\. (\d+) vs (\d+)', error)
  if small:
    return (f'{where} is too small: this corpus needs at least '
            f'{small.group(2)} ids (2 special tokens, 256 bytes and the '
            'characters that cover config.data.sentencepiece.'
            f'character_coverage={sp_cfg.character_coverage} of the text). '
            'Raise vocab_size, or lower character_coverage.')
  high = re.search(r'Vocabulary size too high \((\d+)\).*<= (\d+)', error)
  if high:
    return (f'{where} is too large: this corpus yields at most '
            f'{high.group(2)} pieces. Lower vocab_size to at most '
            f'{high.group(2)}, or train on more text.')
  return f'SentencePiece could not train {where}: {error}'


def trained(data_cfg) -> SentencePiece:
  """The model for ``data_cfg``, from the cache or trained (once) into it."""
  path = cache_path(data_cfg)
  folder = make_writable_dir(
      os.path.dirname(path), 'The tokenizer cache (under config.data.'
      'cache_dir)', DataError)
  with open(os.path.join(folder, '.lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.isfile(path):
      proto = train_proto(data_cfg)
      with open(path + '.tmp', 'wb') as f:
        f.write(proto)
      os.replace(path + '.tmp', path)
    with open(path, 'rb') as f:
      return SentencePiece(f.read(), f'the cached tokenizer {path}')


# -------------------------------------------------------- runs and configs


def tokenizer_fields(config) -> dict:
  """The fields that choose a run's tokenizer (cache_dir aside)."""
  d = config.data
  return {'data.tokenizer': d.tokenizer,
          **{f'data.sentencepiece.{k}': v
             for k, v in d.sentencepiece.to_dict().items()}}


def for_config(config):
  """The tokenizer ``config`` asks for (a given file, or trained/cached)."""
  d = config.data
  if d.tokenizer == 'bytes':
    return tokenizer_lib.BYTES
  if d.sentencepiece.model_file:
    return load(d.sentencepiece.model_file,
                'config.data.sentencepiece.model_file')
  return trained(d)


def _run_copy(workdir: str):
  path = os.path.join(workdir, MODEL_FILE)
  if not os.path.isfile(path):
    raise CheckpointError(
        f'{path} is missing: this run was trained with a SentencePiece '
        'tokenizer, and train.py keeps a copy of it there. Restore that file '
        '(it cannot be rebuilt if the corpus or the given model file has '
        'changed since).')
  try:
    with open(path, 'rb') as f:
      proto = f.read()
  except OSError as e:
    raise CheckpointError(f'{path} cannot be used: {e}') from None
  sums = os.path.join(workdir, SUM_FILE)
  if os.path.isfile(sums):  # runs saved before it was written have none
    from lmx import fs  # pylint: disable=g-import-not-at-top
    record = fs.read_json(sums)
    digest = hashlib.sha256(proto).hexdigest()
    if record.get('sha256') != digest:
      raise CheckpointError(
          f'{path} is not the tokenizer this run was trained with: its '
          f'sha256 is {digest[:16]}..., but {SUM_FILE} records '
          f'{str(record.get("sha256"))[:16]}... (the file was replaced or '
          'damaged). Restore the run\'s own tokenizer.model; another one '
          'would give wrong results.')
  try:
    return SentencePiece(proto, f'the run\'s tokenizer {path}')
  except ConfigError as e:
    raise CheckpointError(f'{path} cannot be used: {e}') from None


def _follow(config, tok) -> None:
  """Sets ``config.model.vocab_size`` from ``tok``; refuses another
  explicit value (257, the byte default, means not set)."""
  asked = int(config.model.vocab_size)
  if asked not in (tokenizer_lib.VOCAB_SIZE, tok.vocab_size):
    raise ConfigError(
        f'config.model.vocab_size={asked} does not fit the SentencePiece '
        f'tokenizer, which has {tok.vocab_size} ids: with config.data.'
        "tokenizer='sentencepiece' the vocabulary follows the tokenizer. Drop "
        'the config.model.vocab_size override (choose the size with '
        'config.data.sentencepiece.vocab_size).')
  config.model.vocab_size = tok.vocab_size


def resolve(config, workdir: str, resuming: bool):
  """The tokenizer of a training run, with ``config.model.vocab_size`` set
  from it. A resumed run reads its own copy (``install`` wrote it)."""
  if config.data.tokenizer == 'bytes':
    return tokenizer_lib.BYTES
  tok = None
  if resuming and os.path.isfile(os.path.join(workdir, 'config.json')):
    from lmx.training import checkpoint  # pylint: disable=g-import-not-at-top
    saved = checkpoint.read_config(workdir)
    if tokenizer_fields(saved) == tokenizer_fields(config):
      tok = _run_copy(workdir)
  if tok is None and config.init_from:
    tok = _from_init_run(config)
  if tok is None:
    tok = for_config(config)
  _follow(config, tok)
  return tok


def _from_init_run(config):
  """A fine-tuning run (``config.init_from``) keeps the tokenizer of the
  run it starts from: that run's copy, whatever corpus it reads now."""
  from lmx.training import checkpoint  # pylint: disable=g-import-not-at-top
  try:
    src = checkpoint.read_config(config.init_from)
  except CheckpointError:
    return None  # params_from_run reports it
  if src.data.tokenizer != config.data.tokenizer:
    raise ConfigError(
        f'config.data.tokenizer={config.data.tokenizer!r}, but the run in '
        f'config.init_from={config.init_from!r} was trained with '
        f'{src.data.tokenizer!r}: a fine-tuning run keeps the tokenizer of '
        'the run it starts from. Set config.data.tokenizer='
        f'{src.data.tokenizer!r}.')
  if config.data.sentencepiece.model_file:
    return None  # the given file; its vocabulary is checked like any
  return _run_copy(config.init_from)


def install(tok, workdir: str) -> None:
  """Writes the run's own copy of a SentencePiece model (nothing for
  bytes); an existing copy with other contents is replaced only by a run
  that has no checkpoint yet (the caller's rule)."""
  if tok.kind == 'bytes':
    return
  path = os.path.join(workdir, MODEL_FILE)
  sums = os.path.join(workdir, SUM_FILE)
  record = json.dumps({'sha256': tok.sha256, 'vocab_size': tok.vocab_size})
  if os.path.isfile(path) and os.path.isfile(sums):
    with open(path, 'rb') as f, open(sums) as g:
      if f.read() == tok.proto and g.read() == record:
        return
  with open(path + '.tmp', 'wb') as f:
    f.write(tok.proto)
  os.replace(path + '.tmp', path)
  with open(sums + '.tmp', 'w') as f:
    f.write(record)
  os.replace(sums + '.tmp', sums)


def for_run(config, workdir: str):
  """The tokenizer of the trained run in ``workdir``, for evaluation and
  generation; ``config`` (its saved config with the command line's
  overrides) may not change it."""
  from lmx.training import checkpoint  # pylint: disable=g-import-not-at-top
  try:
    saved = checkpoint.read_config(workdir)
  except CheckpointError:
    saved = None  # the caller's checks report a missing run
  if saved is not None:
    was, now = tokenizer_fields(saved), tokenizer_fields(config)
    changed = [k for k in was if was[k] != now.get(k)]
    if changed:
      raise ConfigError(
          f'The tokenizer is part of the trained run in {workdir}: '
          + '; '.join(f'config.{k}={now.get(k)!r} (trained with {was[k]!r})'
                      for k in changed)
          + '. Drop these overrides.')
  if config.data.tokenizer == 'bytes':
    return tokenizer_lib.BYTES
  tok = _run_copy(workdir)
  if tok.vocab_size > int(config.model.vocab_size):
    raise ConfigError(
        f'config.model.vocab_size={config.model.vocab_size} is smaller than '
        f'the run\'s tokenizer ({tok.vocab_size} ids): drop the '
        'config.model.vocab_size override.')
  return tok


def check_config(config) -> None:
  """ConfigError for ``config.data.tokenizer`` and its settings, and
  ``config.model.vocab_size`` against it (``lmx.config.validate`` asks).

  A given SentencePiece file is read when a run starts (``resolve``, still
  before anything compiles); a trained run reads its own copy instead."""
  f = Fields(config, 'config')
  kind = f.choice('data.tokenizer', tokenizer_lib.KINDS)
  vocab = int(config.model.vocab_size)
  if kind == 'bytes':
    require(vocab >= tokenizer_lib.VOCAB_SIZE,
            f'config.model.vocab_size={vocab} is too small for 256 '
            f'bytes plus the end-of-document token: use at least 257.')
    return
  f.choice('data.sentencepiece.model_type', MODEL_TYPES)
  f.int('data.sentencepiece.vocab_size', MIN_VOCAB + 1, MAX_VOCAB)
  f.float('data.sentencepiece.character_coverage', 0.9, 1.0)
  # SentencePiece holds its training sentences in memory (and indexes them
  # with int32 in places): a sample of at least 1 MB and at most 2^31 bytes.
  f.int('data.sentencepiece.train_bytes', 1 << 20, 1 << 31)
  model_file = f.get('data.sentencepiece.model_file')
  require(isinstance(model_file, str),
          'config.data.sentencepiece.model_file must be the path of a '
          "SentencePiece .model file, or '' to train one.")
