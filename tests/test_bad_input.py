"""Issue 15's ten classes of bad input (docs/reliability.md): each is one
message that names the field or path, before anything is compiled where
that is possible, and nothing saved is lost or altered. The validating
functions are called directly; a subprocess only where the exit status and
the absence of a traceback are what is checked."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from lmx import cli, fs, memory
from lmx.training import checkpoint
from lmx.config import validate as config_lib
from lmx.training import run_state
from lmx import sweeps as sweep
from lmx.training import trainer
from lmx.data import corpus, store, tokenizer
from lmx.errors import CheckpointError, ConfigError, DataError
from scripts import ROOT, run, run_here
import helpers


def _one_line(e) -> str:
  text = str(e.value)
  assert '\n' not in text and 'Traceback' not in text, text
  return text


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory, cache_dir):
  """A tiny alibi run trained to step 4, checkpoints at 2 and 4."""
  return helpers.train_tiny(tmp_path_factory, cache_dir, 'alibi',
                            'bad_input')


def _copy(finished_run, tmp_path):
  workdir, c = finished_run
  copy = str(tmp_path / 'run')
  shutil.copytree(workdir, copy)
  return copy, c.copy_and_resolve_references()


# 1. Flags and overrides that never reached lmx's own handling.


def test_1_config_files_and_overrides(tmp_path):
  missing = tmp_path / 'missing.py'
  for text, words in ((None, 'does not exist'),
                      ('def get_config(:\n', 'does not parse at line 1'),
                      ('x = 1\n', 'no get_config(arg) function'),
                      ('def get_config():\n  return 3\n', 'returned a int'),
                      ('def get_config():\n  return {}[0]\n', 'KeyError')):
    if text is not None:
      missing.write_text(text)
    with pytest.raises(ConfigError) as e:
      cli.load_config_file(str(missing))
    assert words in _one_line(e)
  config = cli.load_config_file(os.path.join(ROOT, 'configs/alibi.py') +
                                ':size=tiny')
  with pytest.raises(ConfigError) as e:
    cli.check_overrides(config, {'model.d_modl': '3'}, 'x')
  assert 'Did you mean "model.d_model"?' in _one_line(e)
  with pytest.raises(ConfigError, match='sets a whole section'):
    cli.check_overrides(config, {'model.rope': '3'}, 'x')
  with pytest.raises(ConfigError, match='is a value, not a section'):
    cli.check_overrides(config, {'model.d_model.x': '3'}, 'x')
  # Tuples saved as JSON lists come back as tuples, which ml_collections
  # can override (a list field it cannot).
  checkpoint.write_config(str(tmp_path), config)
  assert isinstance(checkpoint.read_config(str(tmp_path)).eval.multipliers,
                    tuple)


@pytest.mark.parametrize('args,words', [
    (('--config=configs/alibi.py:size=tiny', '--config.model.d_model=abc'),
     '--config.model.d_model=abc is not a valid value'),
    (('--config.train.steps=3',), 'no --config file is given'),
])
def test_1_train_py_exits_2_with_one_line(tmp_path, args, words):
  proc = run_here('train.py', *args, f'--workdir={tmp_path / "w"}')
  assert proc.returncode == 2, proc.stderr
  assert words in proc.stderr and 'Traceback' not in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1
  assert not (tmp_path / 'w').exists()


# 2. Values in range for Python but not for the model.


@pytest.mark.parametrize('position,field,value', [
    ('xpos', 'xpos.gamma', 1e-300), ('xpos', 'xpos.scale_base', 1e-300),
    ('learned', 'learned.init_std', 1e300), ('rope', 'rope.theta', 1e-300),
    ('sinusoidal', 'sinusoidal.max_timescale', 1e-300),
    ('rope', 'rope.factor', 1e300),
])
def test_2_settings_the_model_cannot_hold(tiny_config, position, field,
                                          value):
  c = tiny_config(position)
  if field == 'rope.factor':  # read only by a scaling
    c.model.rope.scaling, c.model.rope.original_max_len = 'ntk', 16
  c.model.update_from_flattened_dict({field: value})
  with pytest.raises(ConfigError) as e:
    config_lib.validate(c)
  assert f'config.model.{field}' in _one_line(e) and 'float32' in str(e.value)


def test_2_xpos_spans_its_scales_cannot_hold(tiny_config):
  c = tiny_config('xpos')
  assert config_lib.check_length(c, 65536, 'contiguous', 'Evaluation') is None
  problem = config_lib.check_length(c, 80000, 'contiguous', 'Evaluation')
  assert 'beyond a span of 68661' in problem and 'scale_base' in problem
  c.model.xpos.scale_base = 1e-3   # finite, but decays within one position
  with pytest.raises(ConfigError, match='Training length 16 spans 16'):
    config_lib.validate(c)


def test_2_what_cannot_fit_is_refused_before_compiling(tiny_config,
                                                       monkeypatch):
  c = tiny_config('alibi')
  c.model.d_model, c.model.num_heads = 10**6, 1
  with pytest.raises(ConfigError) as e:
    memory.check_training(c)
  assert 'GiB' in _one_line(e) and 'config.model.d_model' in str(e.value)
  c = tiny_config('alibi')
  monkeypatch.setenv(memory.ENV, '1K')
  with pytest.raises(ConfigError, match='LMX_MEMORY_LIMIT=1K'):
    memory.check_training(c)
  monkeypatch.setenv(memory.ENV, '1T')
  memory.check_training(c)
  monkeypatch.setenv(memory.ENV, 'lots')
  with pytest.raises(ConfigError, match='is not a size'):
    memory.check_training(c)


# 3. The file system.


def test_3_paths_in_the_way(tmp_path, monkeypatch):
  a_file = tmp_path / 'file'
  a_file.write_text('x')
  with pytest.raises(CheckpointError, match='is a file, not a folder'):
    fs.make_writable_dir(str(a_file), '--workdir')
  with pytest.raises(CheckpointError, match=f'lies under {a_file}'):
    fs.make_writable_dir(str(a_file / 'run'), '--workdir')
  with pytest.raises(DataError, match='lies under'):
    fs.make_writable_dir(str(a_file / 'cache'), 'The cache', DataError)
  with pytest.raises(CheckpointError, match='is a file, not the folder of a'):
    checkpoint.require_run(str(a_file))  # eval.py / generate.py
  # Root may write anywhere: a read-only folder is simulated.
  monkeypatch.setattr(os, 'access', lambda *a, **k: False)
  with pytest.raises(CheckpointError, match='is not writable'):
    fs.make_writable_dir(str(tmp_path / 'ro'), '--workdir')
  assert not (tmp_path / 'ro').exists()


def test_3_unreadable_files_and_non_utf8_names(tmp_path, monkeypatch):
  src = tmp_path / 'texts'
  src.mkdir()
  (src / 'a.txt').write_bytes(b'first text ' * 20)
  with open(os.path.join(os.fsencode(str(src)), b'b\xff.txt'), 'wb') as f:
    f.write(b'second text ' * 20)
  cfg = config_lib.ml_collections.ConfigDict(dict(
      source=str(src), cache_dir=str(tmp_path / 'cache'),
      validation_fraction=0.5, validation_source='', text_key='text',
      prepare_workers=1))
  manifest = store.open_store(cfg, cfg.source, 0.5, tokenizer.BYTES)
  assert sum(manifest['splits'][s]['docs'] for s in store.SPLITS) == 2
  real_access = os.access
  monkeypatch.setattr(os, 'access', lambda p, m, **k: (
      not str(p).endswith('a.txt') and real_access(p, m, **k)))
  with pytest.raises(DataError, match='cannot be read by this user'):
    store.open_store(cfg, cfg.source, 0.5, tokenizer.BYTES)


def test_3_full_disk_during_a_save_keeps_the_previous(tiny_config, tmp_path,
                                                      monkeypatch):
  c = tiny_config('alibi')
  c.train.steps, c.train.checkpoint_every = 4, 2
  real_seal = checkpoint.seal

  def full(workdir, step):
    if step == 4:
      raise OSError(errno.ENOSPC, 'No space left on device')
    real_seal(workdir, step)
  monkeypatch.setattr(checkpoint, 'seal', full)
  workdir = str(tmp_path / 'run')
  with pytest.raises(CheckpointError) as e:
    trainer.train(c, workdir, progress=False)
  assert 'disk is full' in _one_line(e)
  assert 'step 2 is kept and usable' in str(e.value)
  assert checkpoint.all_steps(workdir) == [2]
  assert checkpoint.verify(workdir, 2) is None


# 4. Saved records.


def test_4_the_saved_config_never_changes(finished_run, tmp_path):
  workdir, c = _copy(finished_run, tmp_path)
  path = os.path.join(workdir, 'config.json')
  with open(path, 'rb') as f:
    saved = f.read()
  changed = c.copy_and_resolve_references()
  changed.train.learning_rate = 0.01
  with pytest.raises(ConfigError) as e:
    trainer.train(changed, workdir, progress=False)
  assert 'config.train.learning_rate: saved 0.002, now 0.01' in _one_line(e)
  # A safe field (train.steps) is used and recorded, not saved.
  longer = c.copy_and_resolve_references()
  longer.train.steps = 5
  trainer.train(longer, workdir, progress=False)
  assert checkpoint.latest_step(workdir) == 5
  with open(path, 'rb') as f:
    assert f.read() == saved
  with open(os.path.join(workdir, trainer.RESUME_LOG)) as f:
    row = json.loads(f.read().splitlines()[-1])
  assert row['step'] == 4
  assert row['changed'] == {'train.steps': {'saved': 4, 'now': 5}}


def test_4_eval_with_overrides_writes_a_folder_of_its_own(finished_run,
                                                          tmp_path):
  workdir, _ = _copy(finished_run, tmp_path)
  plain = os.path.join(workdir, 'eval', 'results.json')
  os.makedirs(os.path.dirname(plain))
  with open(plain, 'w') as f:
    f.write('{"plain": true}')
  proc = run('eval.py', f'--workdir={workdir}', '--lengths=16',
             '--config.positions.eval=shift')
  out = os.path.join(workdir, 'eval_positions.eval=shift')
  assert out in proc.stdout
  with open(os.path.join(out, 'results.json')) as f:
    assert json.load(f)['overrides'] == {'positions.eval': 'shift'}
  with open(plain) as f:
    assert f.read() == '{"plain": true}'


# 5. Overrides that contradict the checkpoint.


def test_5_a_model_size_override_names_the_field(finished_run):
  workdir, c = finished_run
  bigger = checkpoint.read_config(workdir)
  bigger.model.d_model = 64
  _, params = run_state.abstract_model(bigger)
  with pytest.raises(ConfigError) as e:
    run_state.check_fits_run(bigger, workdir, params)
  text = _one_line(e)
  assert 'config.model.d_model=64 (trained with 32)' in text
  assert 'checkpoint itself is fine' in text


# 6. Signals.


def test_6_a_second_signal_during_the_save_does_not_cut_it_short(
    tiny_config, tmp_path, monkeypatch):
  c = tiny_config('alibi')
  c.train.steps, c.train.checkpoint_every = 3, 2
  real_seal = checkpoint.seal

  def interrupted(workdir, step):
    if step == 2:  # Ctrl-C twice while step 2 is being sealed
      os.kill(os.getpid(), signal.SIGINT)
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.1)
    real_seal(workdir, step)
  monkeypatch.setattr(checkpoint, 'seal', interrupted)
  workdir = str(tmp_path / 'run')
  trainer.train(c, workdir, progress=False)  # no KeyboardInterrupt
  assert checkpoint.all_steps(workdir) == [2, 3]
  assert all(checkpoint.verify(workdir, s) is None for s in (2, 3))


def test_6_two_sigterms_exit_143_without_a_traceback(tmp_path, cache_dir):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.Popen(
      [sys.executable, 'train.py', '--config=configs/alibi.py:size=tiny',
       f'--workdir={tmp_path / "run"}', f'--config.data.cache_dir={cache_dir}',
       '--config.train.steps=100000', '--config.train.log_every=1',
       '--progress=false'], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)
  metrics = tmp_path / 'run' / 'metrics.jsonl'
  deadline = time.time() + 120
  while time.time() < deadline and not (metrics.exists() and
                                        metrics.stat().st_size):
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err
  assert 'Traceback' not in err and 'already stopping' in err
  step = checkpoint.latest_step(str(tmp_path / 'run'))
  assert checkpoint.verify(str(tmp_path / 'run'), step) is None


# 7. Concurrency: pruning while an evaluation reads.


def _resave(wd, old, new):
  """Step ``old``'s folder becomes step ``new``, as if training had saved
  that state again at ``new`` (its checksum record names the new step)."""
  os.rename(checkpoint.step_dir(wd, old), checkpoint.step_dir(wd, new))
  path = os.path.join(checkpoint.step_dir(wd, new), checkpoint.CHECKSUM_FILE)
  with open(path) as f:
    record = json.load(f)
  record['step'] = new
  with open(path, 'w') as f:
    json.dump(record, f)


def test_7_evaluation_follows_a_pruned_latest(finished_run, tmp_path,
                                              monkeypatch, capsys):
  workdir, _ = _copy(finished_run, tmp_path)
  config = checkpoint.read_config(workdir)
  real = checkpoint.try_restore
  calls = []

  def pruned_while_read(wd, step, target):
    calls.append(step)
    if len(calls) == 1:  # training saves step 6 and prunes step 4
      _resave(wd, 4, 6)
      return None, 'file meta/metadata is missing'
    return real(wd, step, target)
  monkeypatch.setattr(checkpoint, 'try_restore', pruned_while_read)
  run_state.load_params(config, workdir)
  assert calls == [4, 6]
  assert 'reading step 6 instead' in capsys.readouterr().err
  # An explicit --step is not replaced: the message says what happened.
  calls.clear()
  _resave(workdir, 6, 4)
  with pytest.raises(CheckpointError, match='was deleted while it was read'):
    run_state.load_params(config, workdir, step=4)


# 8. generate.py.


def test_8_prompt_bytes_and_a_cache_that_cannot_fit(tiny_config, tmp_path):
  raw = b'ab\xff\xfe'
  as_argv = raw.decode('utf-8', 'surrogateescape')  # how Python reads argv
  assert bytes(tokenizer.encode(as_argv).astype('uint8')) == raw
  from lmx.model import decoding
  with pytest.raises(ConfigError) as e:
    decoding.generate_from_run(tiny_config('alibi'), str(tmp_path / 'none'),
                               as_argv, 10**11)
  assert 'KV cache' in _one_line(e) and '--max_new_tokens' in str(e.value)


# 9. sweep.py.


def test_9_every_members_arguments_are_checked_first(tmp_path):
  decl = tmp_path / 's.py'
  decl.write_text("def get_sweep(arg=None):\n  return {'config': "
                  "'configs/base.py:size=tiny', 'members': [{'seed': 0}, "
                  "{'seed': 1}]}\n")
  out = str(tmp_path / 'out')
  with pytest.raises(sweep.SweepError, match='eval.py has no flag --lenghts'):
    sweep.prepare(str(decl), out, (), ['--lenghts=16'])
  with pytest.raises(sweep.SweepError, match='--lengths must be integers'):
    sweep.prepare(str(decl), out, (), ['--lengths=a'])
  with pytest.raises(sweep.SweepError, match='Non-boolean argument'):
    sweep.prepare(str(decl), out, ['--progress=maybe'])
  with pytest.raises(sweep.SweepError, match='--num_processes=two'):
    sweep.prepare(str(decl), out, ['--num_processes=two'])
  with pytest.raises(sweep.SweepError, match=r'config.eval.tokenz'):
    sweep.prepare(str(decl), out, (), ['--config.eval.tokenz=3'])
  with pytest.raises(sweep.SweepError, match=r'--config.train.steps=abc'):
    sweep.prepare(str(decl), out, ['--config.train.steps=abc'])
  with pytest.raises(sweep.SweepError, match='set by the sweep'):
    sweep.prepare(str(decl), out, ['--workdir=x'])
  with pytest.raises(sweep.SweepError,
                     match=r'(?s)refuse.*s0: config.train.warmup_steps'):
    sweep.prepare(str(decl), out, ['--config.train.warmup_steps=50'])
  broken = tmp_path / 'broken.py'
  broken.write_text('def get_config(:\n')
  decl.write_text("def get_sweep(arg=None):\n  return {'config': "
                  f"'{broken}', 'members': [{{'seed': 0}}]}}\n")
  with pytest.raises(sweep.SweepError, match='does not parse at line 1'):
    sweep.prepare(str(decl), out)
  decl.write_text('def get_sweep(arg=None):\n  return 1 / 0\n')
  with pytest.raises(sweep.SweepError, match='ZeroDivisionError'):
    sweep.prepare(str(decl), out)
  assert not os.path.exists(out)


def test_9_the_sweep_parses_with_the_commands_own_flags():
  """The flags a sweep checks its members' arguments with are those the
  commands define (lmx.cli.sweep_flags), besides what the sweep sets."""
  code = ('import sys; sys.argv = ["x"]; from absl import flags; '
          'import {0}; print(" ".join(f.name for f in flags.FLAGS.'
          'get_key_flags_for_module(sys.modules["{0}"])))')
  for module in ('train', 'eval'):
    proc = subprocess.run([sys.executable, '-c', code.format(module)],
                          cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'))
    own = set(proc.stdout.split()) - {'config'}
    assert own == set(cli.sweep_flags(module + '.py')), (
        module, proc.stdout, proc.stderr)


# 10. Small corpora.


def test_10_an_empty_validation_split_is_refused_and_one_can_be_given(
    tmp_path):
  src, val = tmp_path / 'texts', tmp_path / 'val'
  src.mkdir()
  val.mkdir()
  names = [n for n in (f'f{i}.txt' for i in range(50))
           if not corpus.is_validation(n, 0.05)][:2]
  for n in names:
    (src / n).write_bytes(b'training text ' * 30)
  (val / 'v.txt').write_bytes(b'held out text ' * 30)
  cfg = config_lib.ml_collections.ConfigDict(dict(
      source=str(src), cache_dir=str(tmp_path / 'cache'),
      validation_fraction=0.05, validation_source=''))
  with pytest.raises(DataError) as e:
    corpus.check_splits(cfg)
  assert 'config.data.validation_source' in _one_line(e)
  cfg.validation_source = str(val)
  corpus.check_splits(cfg)
  assert len(corpus.load_documents(cfg, 'train')) == 2
  assert [bytes(d) for d in corpus.load_documents(cfg, 'validation')] == [
      b'held out text ' * 30]
