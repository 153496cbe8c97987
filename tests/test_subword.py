"""SentencePiece tokenizers (lmx.data.subword): training and its cache,
round trips, vocab_size following the tokenizer, bits per byte, a run end
to end, and bad input."""

import json
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from configs import base
from lmx.config import validate as config_lib
from lmx.model import decoding
from lmx.evaluation import runner as evaluation
from lmx.training import trainer
from lmx.data import corpus, subword, tokenizer
from lmx.errors import CheckpointError, ConfigError, DataError
from tests.scripts import run, run_here

VOCAB = 320  # 258 fixed ids + the corpus' characters + some pieces
WORDS = ('the model reads text and every token counts towards the loss short '
         'windows train long ones test a position encoding decides whether '
         'attention holds up beyond what it has seen').split()


def _write_corpus(folder, files=6, lines=120, seed=0):
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  for i in range(files):
    body = '\n'.join(' '.join(rng.choice(WORDS, size=rng.integers(4, 12)))
                     for _ in range(lines)) + '\n'
    with open(os.path.join(folder, f'doc{i}.txt'), 'w') as f:
      f.write(body)


@pytest.fixture(scope='module')
def texts(tmp_path_factory):
  """A folder of six small ASCII files (about 50 KB)."""
  folder = str(tmp_path_factory.mktemp('texts'))
  _write_corpus(folder)
  return folder


def _config(texts, cache, **overrides):
  c = base.get_config('size=tiny')
  c.model.position = 'rope'
  c.data.update(source=texts, cache_dir=str(cache), validation_fraction=0.3,
                tokenizer='sentencepiece')
  c.data.sentencepiece.vocab_size = VOCAB
  c.train.log_every = 1
  c.update_from_flattened_dict(overrides)
  return c


@pytest.fixture(scope='module')
def sp_cache(tmp_path_factory):
  return tmp_path_factory.mktemp('sp_cache')


@pytest.fixture(scope='module')
def tok(texts, sp_cache):
  return subword.for_config(_config(texts, sp_cache))


def test_training_is_deterministic_and_cached(texts, tmp_path, monkeypatch):
  c = _config(texts, tmp_path / 'cache')
  first, second = subword.train_proto(c.data), subword.train_proto(c.data)
  assert first == second  # same corpus and options: the same model, bytewise
  path = subword.cache_path(c.data)
  assert not os.path.exists(path)
  tok = subword.trained(c.data)
  assert os.path.isfile(path) and tok.proto == first
  assert os.path.dirname(path) == str(tmp_path / 'cache' / 'lmx_sentencepiece')
  # A second call reads the cache and never trains again.
  monkeypatch.setattr(subword, 'train_proto',
                      lambda _: pytest.fail('trained again'))
  assert subword.trained(c.data).sha256 == tok.sha256
  # Other options are another cache entry; unigram trains too.
  c.data.sentencepiece.model_type = 'unigram'
  assert subword.cache_path(c.data) != path
  monkeypatch.undo()
  uni = subword.trained(c.data)
  assert uni.vocab_size == VOCAB and uni.sha256 != tok.sha256


def test_ids_and_round_trips(tok):
  assert tok.vocab_size == VOCAB and tok.eod == 1
  # Byte pieces are ids 2..257: a byte outside the training text is one id.
  assert tok.encode(b'\x00').tolist() == [2]
  assert tok.encode(b'\xff').tolist() == [2 + 255]
  # Learned pieces: common words take fewer ids than bytes.
  text = 'the model reads text and every token counts'
  ids = tok.encode(text)
  assert 0 < ids.size < 0.7 * len(text)
  for raw in (text.encode(), b'  leading and  double  spaces\n\n\ttab',
              'caf\u00e9 \u65e5\u672c \u2581 literal U+2581'.encode(),
              b'not utf-8: \xff\xfe\xc3 and a cut \xe2\x96', b'', b'\n'):
    ids = tok.encode(raw)
    assert tok.decode_bytes(ids) == raw
    assert int(tok.byte_lengths[ids].sum()) == len(raw)
  # SentencePiece's own decoder agrees with lmx's on valid text.
  clean = 'the attention holds up  beyond\nwhat it has seen \u00e9'
  assert tok.sp.decode(tok.encode(clean).tolist()) == clean
  # encode_documents is encode of each document.
  docs = [np.frombuffer(b, np.uint8) for b in (b'the text', b'a\xffb',
                                               'x\u2581y'.encode())]
  for d, ids in zip(docs, tok.encode_documents(docs)):
    assert ids.tolist() == tok.encode(bytes(d)).tolist()
  # The stream joins documents with the tokenizer's EOD, which reads as a
  # newline as with bytes.
  stream = corpus.token_stream(docs, tok)
  assert (stream == tok.eod).sum() == len(docs)
  assert tok.decode(stream) == tokenizer.BYTES.decode(
      corpus.token_stream(docs))


@settings(max_examples=60, deadline=None)
@given(raw=st.one_of(st.binary(max_size=120),
                     st.text(max_size=60).map(lambda t: t.encode(
                         'utf-8', 'surrogatepass'))))
def test_any_bytes_round_trip(tok, raw):
  ids = tok.encode(raw)
  assert ids.dtype == np.int32 and ((0 <= ids) & (ids < tok.vocab_size)).all()
  assert tok.eod not in ids.tolist()  # only the stream adds EOD
  assert tok.decode_bytes(ids) == raw
  assert int(tok.byte_lengths[ids].sum()) == len(raw)


def test_byte_tokenizer_object_is_the_module_functions():
  b = tokenizer.BYTES
  raw = b'h\xc3\xa9 \xff'
  assert b.encode(raw).tolist() == tokenizer.encode(raw).tolist() == list(raw)
  assert b.decode_bytes([104, 105, tokenizer.EOD]) == b'hi\n'
  assert b.byte_lengths.shape == (257,) and set(b.byte_lengths) == {1}


def _fake_losses(params, inputs, positions, targets):
  """A stand-in model: the loss of a target depends on it and its slot."""
  del params, positions
  return 0.25 + 0.01 * (np.asarray(targets) % 13) + 0.001 * np.arange(
      inputs.shape[1])[None, :]


def test_bits_per_byte_is_loss_over_ln2_for_bytes(texts, cache_dir):
  c = _config(texts, cache_dir, **{'data.tokenizer': 'bytes'})
  stream = corpus.token_stream(corpus.load_documents(c.data, 'validation'))
  for length in (16, 48):
    r = evaluation.loss_at_length(_fake_losses, None, c, stream, length)
    assert r['bits_per_byte'] == r['loss'] / math.log(2)
    assert r['bytes'] == r['tokens']
    s = evaluation.sliding_loss_at_length(_fake_losses, None, c, stream,
                                          length)
    assert s['bits_per_byte'] == s['loss'] / math.log(2)


def test_bits_per_byte_of_subword_tokens(texts, sp_cache, tok):
  c = _config(texts, sp_cache)
  stream = corpus.token_stream(corpus.load_documents(c.data, 'validation'),
                               tok)
  length = 32
  r = evaluation.loss_at_length(_fake_losses, None, c, stream, length,
                                tok.byte_lengths)
  # Independently: the scored targets are stream[1 : n * L + 1]; their
  # total loss, and the bytes SentencePiece's own decoder gives them
  # (each EOD is one byte, a newline, as with bytes).
  n = r['windows']
  targets = stream[1:n * length + 1]
  total = _fake_losses(None, np.zeros((n, length)), None,
                       targets.reshape(n, length)).sum()
  pieces = np.split(targets, np.flatnonzero(targets == tok.eod))
  nbytes = sum(len(tok.sp.decode([int(i) for i in p if i != tok.eod]
                                 ).encode()) for p in pieces)
  nbytes += int((targets == tok.eod).sum())
  assert r['bytes'] == nbytes
  assert r['bits_per_byte'] == pytest.approx(total / (math.log(2) * nbytes),
                                             rel=1e-12)
  assert r['loss'] == pytest.approx(total / targets.size, rel=1e-12)
  # A subword token holds more than a byte: fewer bits per byte than
  # per token.
  assert r['bits_per_byte'] < r['loss'] / math.log(2) / 1.3


def test_vocab_size_follows_the_tokenizer(texts, sp_cache, tmp_path):
  c = _config(texts, sp_cache)
  assert c.model.vocab_size == 257  # the byte default, before resolving
  tok = subword.resolve(c, str(tmp_path / 'run'), resuming=False)
  assert c.model.vocab_size == tok.vocab_size == VOCAB
  c = _config(texts, sp_cache, **{'model.vocab_size': 500})
  with pytest.raises(ConfigError, match='follows the tokenizer'):
    subword.resolve(c, str(tmp_path / 'run'), resuming=False)


def test_train_eval_generate_end_to_end(texts, sp_cache, tmp_path):
  workdir = str(tmp_path / 'run')
  c = _config(texts, sp_cache, **{
      'eval.generation': True, 'eval.generation_multipliers': (1, 2),
      'eval.generation_tokens': 6, 'eval.generation_documents': 2,
      'eval.multipliers': (1, 4)})
  trainer.train(c, workdir, progress=False)
  saved = json.load(open(os.path.join(workdir, 'config.json')))
  assert saved['model']['vocab_size'] == VOCAB
  assert saved['data']['tokenizer'] == 'sentencepiece'
  copy = os.path.join(workdir, subword.MODEL_FILE)
  with open(subword.cache_path(c.data), 'rb') as f:
    assert open(copy, 'rb').read() == f.read()
  # The run reads its own copy: the cache may go (or change) under it.
  os.remove(subword.cache_path(c.data))
  from lmx.training import checkpoint
  run_config = checkpoint.read_config(workdir)
  results = evaluation.evaluate(run_config, workdir, plots=False)
  assert results['tokenizer']['kind'] == 'sentencepiece'
  assert results['tokenizer']['vocab_size'] == VOCAB
  for r in results['results'] + results['sliding']:
    assert r['bits_per_byte'] == pytest.approx(
        r['loss'] * r['tokens'] / r['bytes'] / math.log(2))
    assert r['bytes'] > 1.3 * r['tokens']  # pieces of several bytes
  written = json.load(open(os.path.join(workdir, 'eval', 'results.json')))
  assert [r['bits_per_byte'] for r in written['results']] == [
      r['bits_per_byte'] for r in results['results']]
  assert results['generation']['rows']
  text, step = decoding.generate_from_run(run_config, workdir, 'the model',
                                          5, temperature=0)
  assert step == c.train.steps and text.startswith('the model')
  # Five new tokens of a subword vocabulary, decoded through it.
  prompt_ids = subword.for_run(run_config, workdir).encode('the model')
  tok = subword.for_run(run_config, workdir)
  assert tok.encode(text).size >= prompt_ids.size
  # generate.py encodes the prompt and decodes through the run's tokenizer.
  proc = run('generate.py', f'--workdir={workdir}', '--prompt=the model',
             '--max_new_tokens=5', '--temperature=0')
  assert proc.stdout.rstrip('\n') == text.rstrip('\n')
  # Overriding the tokenizer of a trained run is refused.
  other = checkpoint.read_config(workdir)
  other.data.sentencepiece.vocab_size = 400
  with pytest.raises(ConfigError, match='tokenizer is part of the trained'):
    evaluation.evaluate(other, workdir, plots=False)
  # Resuming (more steps) keeps the run's copy, with no cache to read.
  c2 = _config(texts, sp_cache, **{'train.steps': 6})
  c2.eval = c.eval
  trainer.train(c2, workdir, progress=False)
  assert not os.path.exists(subword.cache_path(c.data))
  # Without its copy, the run says which file is missing.
  os.remove(copy)
  with pytest.raises(CheckpointError, match='tokenizer.model is missing'):
    evaluation.evaluate(run_config, workdir, plots=False)


def test_a_given_model_file(texts, sp_cache, tok, tmp_path):
  path = tmp_path / 'given.model'
  path.write_bytes(tok.proto)
  c = _config(texts, sp_cache,
              **{'data.sentencepiece.model_file': str(path),
                 'data.sentencepiece.vocab_size': 999})  # unused with a file
  got = subword.resolve(c, str(tmp_path / 'run'), resuming=False)
  assert got.sha256 == tok.sha256 and c.model.vocab_size == VOCAB


@pytest.mark.parametrize('overrides,error,words', [
    ({'data.tokenizer': 'wordpiece'}, ConfigError,
     "config.data.tokenizer='wordpiece' is not one of"),
    ({'data.sentencepiece.model_type': 'word'}, ConfigError,
     'config.data.sentencepiece.model_type'),
    ({'data.sentencepiece.vocab_size': 200}, ConfigError,
     'config.data.sentencepiece.vocab_size'),
    ({'task.name': 'reverse'}, ConfigError, 'tasks use'),
])
def test_bad_config_fields(texts, sp_cache, overrides, error, words):
  c = _config(texts, sp_cache, **overrides)
  with pytest.raises(error, match=words):
    config_lib.validate(c)


def test_vocab_size_too_small_or_too_large_for_the_corpus(texts, tmp_path):
  c = _config(texts, tmp_path / 'cache',
              **{'data.sentencepiece.vocab_size': 270})
  with pytest.raises(DataError, match=r'too small: this corpus needs at least'
                     r' \d+ ids'):
    subword.for_config(c)
  c.data.sentencepiece.vocab_size = 50000
  with pytest.raises(DataError, match=r'too large: this corpus yields at most'
                     r' \d+ pieces'):
    subword.for_config(c)
  assert not os.listdir(tmp_path / 'cache' / 'lmx_sentencepiece') or all(
      not n.endswith('.model')
      for n in os.listdir(tmp_path / 'cache' / 'lmx_sentencepiece'))


def test_missing_or_unreadable_model_file(texts, sp_cache, tmp_path):
  c = _config(texts, sp_cache, **{
      'data.sentencepiece.model_file': str(tmp_path / 'nope.model')})
  with pytest.raises(ConfigError, match='cannot be read'):
    subword.for_config(c)
  junk = tmp_path / 'junk.model'
  junk.write_bytes(b'not a model')
  c.data.sentencepiece.model_file = str(junk)
  with pytest.raises(ConfigError, match='is not a SentencePiece model'):
    subword.for_config(c)


def test_train_cli_bad_tokenizer_input_exits_2(texts, tmp_path):
  workdir = tmp_path / 'run'
  for flag, words in (
      ('--config.data.tokenizer=wordpiece', 'is not one of'),
      (f'--config.data.sentencepiece.model_file={tmp_path}/none.model',
       'cannot be read')):
    proc = run_here('train.py', '--config=configs/rope.py:size=tiny',
                    f'--workdir={workdir}', f'--config.data.source={texts}',
                    f'--config.data.cache_dir={tmp_path}/cache',
                    '--config.data.tokenizer=sentencepiece', flag)
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr and 'Traceback' not in proc.stderr
    assert not workdir.exists()  # refused before anything was written
