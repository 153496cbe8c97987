"""Issue 29's classes of bad input (docs/reliability.md, "Bad input, second
probe"): output paths checked before any work, damaged saved files as one
message, refused commands that leave saved results alone, saved records
that must belong to the run, messages that name the right field, ranges
derived from the arithmetic a field enters, and golden tolerances set by
the dtype. The commands run in this process (scripts.run_here), with one
subprocess for the real exit status and the absence of a traceback."""

import json
import math
import os
import shutil

import pytest

from lmx import cli, fs
from lmx.training import checkpoint
from lmx.config import validate as config_lib
from lmx.training import metrics
from lmx.evaluation import report
from lmx import sweeps as sweep
from lmx.errors import CheckpointError, ConfigError, DataError
from scripts import run, run_here


def _one_line(text: str) -> str:
  text = text.strip()
  assert '\n' not in text and 'Traceback' not in text, text
  return text


def _refused(proc, *words):
  """Exit 2, one line on stderr naming ``words``, no traceback."""
  assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
  line = _one_line(proc.stderr.strip().splitlines()[-1])
  assert 'Traceback' not in proc.stderr, proc.stderr
  for w in words:
    assert w in line, (w, line)
  return line


@pytest.fixture(scope='module')
def rope_run(tiny_rope_run):
  """A tiny RoPE run trained to step 4, checkpoints at 2 and 4 (the
  session's, in conftest.py)."""
  return tiny_rope_run


def _copy(rope_run, tmp_path):
  workdir, c = rope_run
  copy = str(tmp_path / 'run')
  shutil.copytree(workdir, copy)
  return copy, c.copy_and_resolve_references()


def _tree(path):
  """{relative path: bytes} of every file under ``path``."""
  out = {}
  for d, _, names in os.walk(path):
    for n in names:
      p = os.path.join(d, n)
      with open(p, 'rb') as f:
        out[os.path.relpath(p, path)] = f.read()
  return out


# 2. Output paths are checked before any work, for every command.


def test_2_output_paths_checked_before_work(rope_run, tmp_path):
  workdir, _ = rope_run
  blocker = tmp_path / 'a_file'
  blocker.write_text('x')
  # The shared check: a file where the folder goes, a file among its
  # parents; it creates nothing.
  for path, words in ((blocker, 'is a file'),
                      (blocker / 'sub', 'which is a file')):
    with pytest.raises(ConfigError) as e:
      cli.output_dir(str(path), '--out')
    assert words in _one_line(str(e.value)) and '--out' in str(e.value)
  fresh = tmp_path / 'not' / 'yet'
  cli.output_dir(str(fresh), '--out')
  assert not fresh.exists()
  # Every command, before it loads a model or reads a run.
  _refused(run_here('-m', 'lmx.evaluation.extensions', f'--workdir={workdir}',
                    f'--out={blocker}'), str(blocker), 'is a file')
  _refused(run('-m', 'lmx.evaluation.report', f'--out={blocker}', workdir,
               check=False), str(blocker), 'is a file')
  _refused(run_here('sweep.py', f'--dir={blocker}', '--report_only'),
           str(blocker), 'is a file')
  assert blocker.read_text() == 'x'


# 3. Damaged saved files: one message naming the file, or skipped with a
#    note. Never a traceback.


def test_3_damaged_saved_files(rope_run, tmp_path, capsys):
  workdir, _ = rope_run
  # One read of a saved JSON record, for every kind of damage.
  path = tmp_path / 'record.json'
  for data, words in ((b'{"a": ', 'not valid JSON'),
                      (b'\xff\xfe{}', 'not UTF-8'),
                      (b'[1, 2]', 'holds a JSON list')):
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as e:
      fs.read_json(str(path))
    assert str(path) in _one_line(str(e.value)) and words in str(e.value)

  # A truncated results.json among a report's runs: left out with a note.
  good = tmp_path / 'good'
  os.makedirs(good / 'eval')
  (good / 'eval' / 'results.json').write_text(json.dumps({
      'position': 'rope', 'train_sampling': 'contiguous', 'train_length': 16,
      'results': [{'length': 16, 'loss': 2.0}]}))
  bad = tmp_path / 'bad'
  os.makedirs(bad / 'eval')
  (bad / 'eval' / 'results.json').write_text('{"position": "ro')
  runs = report.load([str(good), str(bad)])
  assert [r['name'] for r in runs] == ['good']
  err = capsys.readouterr().err
  assert str(bad / 'eval' / 'results.json') in err and 'damaged' in err

  # A corrupt sweep.json under --report_only: a SweepError naming it.
  (tmp_path / 'sweep.json').write_text('{"members": [')
  with pytest.raises(sweep.SweepError) as e:
    sweep.read_manifest(str(tmp_path))
  assert 'sweep.json' in _one_line(str(e.value))
  (tmp_path / 'sweep.json').write_text('{"members": [3]}')
  with pytest.raises(sweep.SweepError):
    sweep.read_manifest(str(tmp_path))

  # Undecodable bytes in metrics.jsonl on resume: the line is dropped with
  # a note, the others kept.
  m = tmp_path / 'm'
  os.makedirs(m)
  (m / 'metrics.jsonl').write_bytes(
      b'{"step": 1, "loss": 1.0}\n\xff\xfe\x00garbage\n'
      b'{"step": 2, "loss": 0.5}\n{"step": 3, "loss": 0.25}\n')
  writer = metrics.MetricWriter(str(m), resume_step=2)
  writer.close()
  assert [r['step'] for r in metrics.read_jsonl(
      str(m / 'metrics.jsonl'))] == [1, 2]
  assert 'damaged' in capsys.readouterr().err

  # eval.py on a config.json that is a JSON list: one line, exit 2.
  copy = tmp_path / 'listrun'
  os.makedirs(copy)
  (copy / checkpoint.CONFIG_FILE).write_text('[1, 2, 3]')
  with pytest.raises(CheckpointError) as e:
    checkpoint.read_config(str(copy))
  assert 'JSON list' in _one_line(str(e.value))
  _refused(run_here('eval.py', f'--workdir={copy}'),
           'config.json', 'JSON list')


# 4. A refused or failing command never destroys saved results.


def test_4_refused_command_keeps_saved_results(rope_run, tmp_path):
  workdir, _ = rope_run
  copy, _ = _copy(rope_run, tmp_path)
  out = os.path.join(copy, 'extensions')
  os.makedirs(out)
  for name in ('results.json', 'results.csv'):
    with open(os.path.join(out, name), 'w') as f:
      f.write(f'earlier {name}\n')
  before = _tree(copy)
  _refused(run_here('-m', 'lmx.evaluation.extensions', f'--workdir={copy}',
                    '--methods='), '--methods')
  _refused(run_here('-m', 'lmx.evaluation.extensions', f'--workdir={copy}',
                    '--lengths=0'), '--lengths')
  assert _tree(copy) == before
  # Writes are atomic: a failure while writing leaves the earlier file.
  target = os.path.join(out, 'results.csv')

  class Boom(Exception):
    pass

  def broken_replace(src, dst):
    raise Boom()

  real = os.replace
  os.replace = broken_replace
  try:
    with pytest.raises(Boom):
      fs.write_atomic(target, 'new contents')
  finally:
    os.replace = real
  with open(target) as f:
    assert f.read() == 'earlier results.csv\n'
  assert sorted(os.listdir(out)) == ['results.csv', 'results.json']


# 6. Messages that name the right field.


def test_6_messages_name_the_right_field(tiny_config, tmp_path):
  c = tiny_config('rope')
  c.data.source = 'stdlib'
  c.data.validation_source = str(tmp_path / 'nothing' / '*.txt')
  from lmx.data import store
  with pytest.raises(DataError) as e:
    store.open_split(c.data, 'validation')
  text = _one_line(str(e.value))
  assert text.startswith('config.data.validation_source='), text
  # eval.tokens smaller than one window names eval.tokens.
  c = tiny_config('rope')
  c.eval.tokens = c.train.seq_len - 1
  with pytest.raises(ConfigError) as e:
    config_lib.eval_lengths(c)
  assert 'config.eval.tokens' in _one_line(str(e.value))


# 5. Saved records that do not belong to the run.


def test_5_swapped_checkpoint_folders_are_refused(rope_run, tmp_path):
  copy, _ = _copy(rope_run, tmp_path)
  assert checkpoint.verify(copy, 2) is None
  assert checkpoint.verify(copy, 4) is None
  a, b = checkpoint.step_dir(copy, 2), checkpoint.step_dir(copy, 4)
  os.rename(a, a + '.x')
  os.rename(b, a)
  os.rename(a + '.x', b)
  # Each folder's files match their own checksums; the step does not.
  why = checkpoint.verify(copy, 4)
  assert why is not None and 'sealed for step 2' in why, why
  assert 'sealed for step 4' in checkpoint.verify(copy, 2)


def test_5_a_replaced_tokenizer_is_refused(tmp_path):
  from lmx.data import subword
  workdir = str(tmp_path)

  class Tok:  # what install reads of a SentencePiece tokenizer
    kind, vocab_size, proto = 'sentencepiece', 300, b'the run\'s model'
    sha256 = __import__('hashlib').sha256(proto).hexdigest()

  subword.install(Tok, workdir)
  record = json.loads((tmp_path / subword.SUM_FILE).read_text())
  assert record['sha256'] == Tok.sha256
  # Another model of the same size in its place.
  (tmp_path / subword.MODEL_FILE).write_bytes(b'another model!!')
  assert len(b'another model!!') == len(Tok.proto)
  with pytest.raises(CheckpointError) as e:
    subword._run_copy(workdir)  # pylint: disable=protected-access
  assert 'not the tokenizer this run was trained with' in _one_line(
      str(e.value))


def test_5_model_encoding_that_acts_in_no_layer_is_refused(tiny_config):
  c = tiny_config('alibi')
  c.model.layers.position = ('rope', 'rope')
  with pytest.raises(ConfigError) as e:
    config_lib.validate(c)
  assert "config.model.position='alibi'" in _one_line(str(e.value))
  c.model.position = 'rope'
  config_lib.validate(c)


def test_5_depth_dependent_structures_and_one_way_references(tmp_path):
  irope = cli.load_config_file('configs/irope.py:size=tiny,layers=4')
  from lmx.model import layer_plan
  assert [s.position for s in layer_plan.plan(irope.model)] == [
      'rope', 'rope', 'rope', 'none']
  config_lib.validate(irope)
  # The tiny size's structure, repeated to 4 layers, is refused.
  c = cli.load_config_file('configs/irope.py:size=tiny')
  c.model.num_layers = 4
  with pytest.raises(ConfigError) as e:
    config_lib.validate(c)
  assert 'config.model.num_layers=4' in _one_line(str(e.value))
  # An override of a field that follows another moves it alone.
  c = cli.load_config_file('configs/learned.py:size=tiny')
  c.train.seq_len = 8
  c.model.learned.max_len = 64
  assert (c.train.seq_len, c.model.learned.max_len) == (8, 64)
  c = cli.load_config_file('configs/learned.py:size=tiny')
  c.train.seq_len = 8
  assert c.model.learned.max_len == 8    # still follows it
  # A config file that aliases two fields is refused where it is loaded.
  path = str(tmp_path / 'alias.py')
  with open(path, 'w') as f:
    f.write('from configs import base\n\ndef get_config(arg=None):\n'
            '  c = base.get_config(arg)\n'
            "  c.model.learned.max_len = c.train.get_ref('seq_len')\n"
            '  return c\n')
  with pytest.raises(ConfigError) as e:
    cli.load_config_file(path)
  assert 'config.model.learned.max_len' in _one_line(str(e.value))


# 1. Every field that reaches arithmetic has the range that arithmetic needs.


def _scaled(tiny_config, scaling, **rope):
  c = tiny_config('rope')
  c.model.rope.scaling = scaling
  c.model.rope.factor = 2.0
  c.model.rope.original_max_len = c.train.seq_len
  if scaling == 'longrope':
    pairs = (c.model.d_model // c.model.num_heads) // 2
    c.model.rope.long_factor = (1.5,) * pairs
  for k, v in rope.items():
    c.model.rope[k] = v
  return c


def test_1_values_refused_where_their_arithmetic_needs_it(tiny_config):
  big = 2**63
  cases = [
      # correction_dim: K ln(L / (2 pi r)) / (2 ln theta).
      (_scaled(tiny_config, 'yarn', beta_slow=0.0), 'rope.beta_slow'),
      (_scaled(tiny_config, 'yarn', theta=1.0), 'rope.theta'),
      # LongRoPE's 1 + ln s / ln L.
      (_scaled(tiny_config, 'longrope', original_max_len=1),
       'rope.original_max_len'),
      # Per-pair factors below float32's smallest normal.
      (_scaled(tiny_config, 'longrope', long_factor=(1e-40,) * 8),
       'rope.long_factor'),
  ]
  # NTK's K / (K - 2) with two rotated channels (head_dim 16, partial 1/8).
  for scaling in ('ntk', 'dynamic'):
    c = _scaled(tiny_config, scaling, partial=0.125)
    c.model.rope.factor = 2.0
    cases.append((c, 'K >= 4'))
  c = tiny_config('rope')
  c.seed = big
  cases.append((c, 'config.seed'))
  c = tiny_config('rope')
  c.eval.seed = -1
  cases.append((c, 'config.eval.seed'))
  for c, words in cases:
    with pytest.raises(ConfigError) as e:
      config_lib.validate(c)
    assert words in _one_line(str(e.value)), (words, str(e.value))
  # The edges themselves pass.
  c = tiny_config('rope')
  c.seed, c.eval.seed = big - 1, 0
  config_lib.validate(c)
  config_lib.validate(_scaled(tiny_config, 'yarn', beta_slow=0.5))
  config_lib.validate(_scaled(tiny_config, 'longrope', original_max_len=2))


def test_1_entry_point_flags_and_sweep_members(rope_run, tmp_path):
  workdir, _ = rope_run
  # Any int64 is a sampling seed; one past is refused before any work.
  _refused(run_here('generate.py', f'--workdir={workdir}', f'--seed={2**63}',
                    '--max_new_tokens=2'), '--seed')
  with pytest.raises(ConfigError):
    cli.int_list(['0'], '--lengths')
  assert cli.int_list(['1', '4'], '--lengths') == [1, 4]
  with pytest.raises(sweep.SweepError) as e:
    sweep.parse_slurm_flag('mem_gb=inf')
  assert 'mem_gb' in str(e.value)
  assert sweep.parse_slurm_flag('mem_gb=1.5')['mem_gb'] == 1.5
  for name in (3, '', '../x', ['a']):
    with pytest.raises(sweep.SweepError) as e:
      sweep.expand({'config': 'configs/rope.py', 'members': [
          {'name': name}]}, str(tmp_path))
    assert "'name'" in str(e.value)


# 7. Golden tolerances set by the dtype, not by one CPU's kernels.


def test_7_golden_tolerance_follows_the_dtype():
  import jax.numpy as jnp
  import numpy as np
  import test_golden
  golden = test_golden.load_golden()['cases']
  assert not any('losses_by_cpu' in c for c in golden.values())
  for name in test_golden.CASES:
    dtype = test_golden.case_overrides(name).get('model.dtype', 'float32')
    for want in golden[name]['losses']:
      tol = test_golden.tolerance(name, want)
      # One rounding of the loss to the case's dtype fits in the tolerance;
      # a float32 case still tells apart values 1e-5 apart.
      step = abs(float(jnp.asarray(want, dtype).astype(jnp.float32)) - want)
      assert step <= tol, (name, want, step, tol)
      if dtype == 'float32':
        assert tol < 1e-5
      else:
        assert tol <= float(np.finfo(jnp.bfloat16).eps) * abs(want)


# Every numeric field at the edges of its declared range and just past.


def _declared_ranges(config, monkeypatch):
  """{config path: (kind, lo, hi, lo_open, hi_open)} of every number
  ``lmx.config.validate.validate`` reads through ``Fields`` for ``config``."""
  from lmx.config import fields as checks
  ranges = {}
  real_int, real_float = checks.Fields.int, checks.Fields.float
  real_positive, real_seed = checks.Fields.positive, checks.Fields.seed

  def key(self, path):
    return self.name(path).split('.', 1)[1]

  def int_(self, path, lo=None, hi=None):
    ranges.setdefault(key(self, path), ('int', lo, hi, False, False))
    return real_int(self, path, lo, hi)

  def float_(self, path, lo=None, hi=None, lo_open=False, hi_open=False):
    ranges.setdefault(key(self, path), ('float', lo, hi, lo_open, hi_open))
    return real_float(self, path, lo, hi, lo_open, hi_open)

  def positive(self, path):
    ranges[key(self, path)] = ('float', checks.FLOAT32_TINY, None, False,
                               False)
    return real_positive(self, path)

  def seed(self, path):
    ranges[key(self, path)] = ('int', 0, checks.INT64_MAX, False, False)
    return real_seed(self, path)

  with monkeypatch.context() as m:
    m.setattr(checks.Fields, 'int', int_)
    m.setattr(checks.Fields, 'float', float_)
    m.setattr(checks.Fields, 'positive', positive)
    m.setattr(checks.Fields, 'seed', seed)
    config_lib.validate(config)
  return ranges


def _edges(kind, lo, hi, lo_open, hi_open):
  """(values inside the range at its edges, values just past them)."""
  inside, past = [], []
  for bound, is_open, toward in ((lo, lo_open, math.inf),
                                 (hi, hi_open, -math.inf)):
    if bound is None:
      continue
    if kind == 'int':
      step = 1 if toward > 0 else -1
      inside.append(bound)
      past.append(bound - step)
    else:
      edge = math.nextafter(bound, toward) if is_open else float(bound)
      beyond = bound if is_open else math.nextafter(bound, -toward)
      inside.append(edge)
      past.append(beyond)
  return inside, past


def _sections(tiny_config):
  """(label, config, prefixes of its own fields): every encoding, and RoPE
  under every scaling; the plain RoPE config probes every field."""
  from lmx import positions
  from lmx.positions import rope_scaling
  out = [('rope', tiny_config('rope'), ('',))]
  for name in sorted(positions.REGISTRY):
    if name != 'rope':
      c = tiny_config(name)
      if name == 'learned':
        c.model.learned.max_len = c.train.seq_len
      out.append((name, c, (f'model.{name}.',)))
  for scaling in sorted(rope_scaling.SCALINGS):
    if scaling != 'none':
      out.append((f'rope/{scaling}', _scaled(tiny_config, scaling),
                  ('model.rope.',)))
  return out


def _set(config, path, value):
  node = config
  parts = path.split('.')
  for part in parts[:-1]:
    node = node[part]
  node[parts[-1]] = value


def _finite_loss(config) -> bool:
  import jax.numpy as jnp
  from lmx.model import transformer as model_lib
  model = model_lib.build(config.model, 0)
  t = 8
  tokens = (jnp.arange(t + 1, dtype=jnp.int32) * 7 % 256)[None]
  pos = jnp.arange(t, dtype=jnp.int32)[None]
  logits = model(tokens[:, :-1], pos)
  loss = model_lib.cross_entropy(logits, tokens[:, 1:]).mean()
  return bool(jnp.isfinite(loss))


def test_every_numeric_field_at_and_past_its_range_edges(tiny_config,
                                                         monkeypatch):
  """Just past an edge: a ConfigError (validate only). At an edge: a
  ConfigError from a rule that ties fields together, or a model whose loss
  is finite (a forward pass for a sample of the model's fields)."""
  forward, probed = [], 0
  for label, base_config, prefixes in _sections(tiny_config):
    try:
      ranges = _declared_ranges(base_config, monkeypatch)
    except ConfigError as e:  # every default section must validate
      raise AssertionError(f'{label}: the default config is refused: '
                           f'{e}') from None
    for path, spec in sorted(ranges.items()):
      if not path.startswith(prefixes):
        continue
      inside, past = _edges(*spec)
      for value in past:
        c = base_config.copy_and_resolve_references()
        _set(c, path, value)
        with pytest.raises(ConfigError) as e:
          config_lib.validate(c)
        _one_line(str(e.value))
        probed += 1
      for value in inside:
        c = base_config.copy_and_resolve_references()
        _set(c, path, value)
        try:
          config_lib.validate(c)
        except ConfigError as e:
          _one_line(str(e))
          continue
        probed += 1
        if path.startswith('model.') and spec[0] == 'float':
          forward.append((label, path, value, c))
  assert probed > 100, probed
  # A forward pass for every in-range float edge of a model field, up to a
  # sample of 12 spread over the sections (each compiles a model).
  sample = forward[::max(1, len(forward) // 12)][:12]
  for label, path, value, c in sample:
    assert _finite_loss(c), (label, path, value)


def test_class_1_a_task_length_its_alphabet_cannot_write(tiny_config):
  """An evaluation length past what the task's alphabet can write (here
  associative recall: one distinct key per pair) is refused, naming
  alphabet_size, before anything compiles; a length within it runs."""
  c = tiny_config('rope', **{'task.name': 'associative_recall'})
  c.task.alphabet_size = 8
  with pytest.raises(ConfigError, match='alphabet_size=8 gives only 8'):
    config_lib.task_eval_lengths(c, [3, 9])
  lengths, _ = config_lib.task_eval_lengths(c, [3, 8])
  assert lengths == [3, 8]
