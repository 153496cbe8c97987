"""Faults a long run meets, each provoked for real: kills, signals, damaged
checkpoints, a second run on the workdir, non-finite steps, half-written
metrics.

The kill tests run train.py as a subprocess, stop it from outside while it
trains, rerun the same command and compare every logged loss with an
uninterrupted run of the same config: they must be identical.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import base
from lmx.training import run_state
from lmx.training import checkpoint
from lmx.training import metrics
from lmx.training import trainer
from lmx.data import windows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Dropout and randomized positions: every source of randomness must be
# derived from (seed, step) for a resumed run to repeat the original.
STEPS = 150
RUN = ['train.py', '--config=configs/rope_randomized.py:size=tiny',
       '--config.model.dropout=0.1', '--config.train.batch_size=32',
       '--config.train.seq_len=64', f'--config.train.steps={STEPS}',
       '--config.train.warmup_steps=10', '--config.train.log_every=1',
       '--config.train.checkpoint_every=20',
       '--config.train.keep_checkpoints=2', '--progress=false']


def _env():
  return dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')


def train_cmd(workdir, cache_dir, *extra):
  return [sys.executable, *RUN, f'--workdir={workdir}',
          f'--config.data.cache_dir={cache_dir}', *extra]


def run(cmd, check=True):
  proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True,
                        text=True, timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f'{cmd} failed ({proc.returncode}):\n'
                         f'{proc.stdout}\n{proc.stderr}')
  return proc


def logged(workdir):
  """[(step, loss, grad_norm)] of metrics.jsonl."""
  rows = metrics.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  return [(r['step'], r['loss'], r['grad_norm']) for r in rows]


def lines(workdir) -> int:
  try:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      return sum(1 for _ in f)
  except FileNotFoundError:
    return 0


def start_and_wait(cmd, workdir, min_lines):
  """Starts training and returns once it has logged ``min_lines`` steps and
  saved a checkpoint; the process is still running."""
  proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while time.time() < deadline:
    if lines(workdir) >= min_lines and checkpoint.all_steps(workdir):
      break
    if proc.poll() is not None:
      raise AssertionError(f'training ended before it could be stopped:\n'
                           f'{proc.communicate()}')
    time.sleep(0.01)
  assert proc.poll() is None, 'the run finished before the signal'
  return proc


def tree_digest(directory):
  """sha256 over every file's path and bytes under ``directory``, except the
  lock file, which each run rewrites with its pid."""
  h = hashlib.sha256()
  for root, dirs, names in sorted(os.walk(directory)):
    dirs.sort()
    for name in sorted(set(names) - {checkpoint.LOCK_FILE}):
      path = os.path.join(root, name)
      h.update(os.path.relpath(path, directory).encode())
      with open(path, 'rb') as f:
        h.update(f.read())
  return h.hexdigest()


def data_file(workdir, step):
  """The largest file of a checkpoint: the array data."""
  files = []
  for root, _, names in os.walk(checkpoint.step_dir(workdir, step)):
    files += [os.path.join(root, n) for n in names]
  return max(files, key=os.path.getsize)


def flip_byte(path):
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0x40]))


@pytest.fixture(scope='module')
def reference(tmp_path_factory, cache_dir):
  """Every logged step of the uninterrupted run."""
  workdir = str(tmp_path_factory.mktemp('reference') / 'run')
  run(train_cmd(workdir, cache_dir))
  rows = logged(workdir)
  assert [r[0] for r in rows] == list(range(1, STEPS + 1))
  return rows


def test_sigkill_then_same_command_repeats_the_uninterrupted_run(
    tmp_path, cache_dir, reference):
  workdir = str(tmp_path / 'run')
  cmd = train_cmd(workdir, cache_dir)
  proc = start_and_wait(cmd, workdir, min_lines=50)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  killed_at = lines(workdir)
  assert killed_at < STEPS
  resumed_from = checkpoint.latest_step(workdir)
  assert resumed_from is not None and resumed_from <= killed_at

  out = run(cmd)
  assert f'Resuming from the checkpoint at step {resumed_from}' in out.stdout
  # metrics.jsonl reads as one run: the steps the killed run logged after
  # its checkpoint were dropped and computed again, to the same bits.
  assert logged(workdir) == reference


def _stop_and_check(proc, workdir, signum):
  """Sends ``signum`` to the training process and checks that it saved the
  step its message names, sealed, with the metrics up to it; that step."""
  proc.send_signal(signum)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signum, err
  name = signal.Signals(signum).name
  assert f'Stopped by {name} at step ' in err and 'Traceback' not in err
  step = int(err.split(f'Stopped by {name} at step ')[1].split(';')[0])
  assert checkpoint.latest_step(workdir) == step
  assert checkpoint.verify(workdir, step) is None
  assert lines(workdir) == step
  return step


def test_signals_save_the_current_step_then_resume_exactly(
    tmp_path, cache_dir, reference):
  """SIGTERM stops the run, which saves the step it is at; the same
  command resumes from it and SIGINT stops that one likewise; the third
  run finishes, and every logged step equals the uninterrupted run's."""
  workdir = str(tmp_path / 'run')
  cmd = train_cmd(workdir, cache_dir)
  proc = start_and_wait(cmd, workdir, min_lines=30)
  first = _stop_and_check(proc, workdir, signal.SIGTERM)
  proc = start_and_wait(cmd, workdir, min_lines=first + 30)
  second = _stop_and_check(proc, workdir, signal.SIGINT)
  assert second > first

  out = run(cmd)
  assert f'Resuming from the checkpoint at step {second}' in out.stdout
  assert logged(workdir) == reference


def test_a_second_run_on_the_workdir_refuses(tmp_path, cache_dir):
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  with checkpoint.WorkdirLock(workdir):
    before = sorted(os.listdir(workdir))
    proc = run(train_cmd(workdir, cache_dir), check=False)
    assert proc.returncode == 2
    assert 'Another training run is using' in proc.stderr
    assert f'pid {os.getpid()}' in proc.stderr
    assert 'Traceback' not in proc.stderr
    assert sorted(os.listdir(workdir)) == before
  # Released with its holder: a run can now take the workdir.
  with checkpoint.WorkdirLock(workdir):
    pass


# ------------------------------------------------------ damaged checkpoints


@pytest.fixture(scope='module')
def short_run(tmp_path_factory, cache_dir):
  """A finished 40-step run with checkpoints 20 and 40, and its metrics."""
  workdir = str(tmp_path_factory.mktemp('short') / 'run')
  run(train_cmd(workdir, cache_dir, '--config.train.steps=40'))
  assert checkpoint.all_steps(workdir) == [20, 40]
  assert all(checkpoint.verify(workdir, s) is None for s in (20, 40))
  return workdir, logged(workdir)


def copy_run(short_run, tmp_path):
  workdir = str(tmp_path / 'copy')
  shutil.copytree(short_run[0], workdir)
  return workdir


def test_corrupt_latest_is_set_aside_and_the_run_continues_from_the_previous(
    short_run, tmp_path, cache_dir):
  workdir = copy_run(short_run, tmp_path)
  flip_byte(data_file(workdir, 40))
  assert 'does not match its checksum' in checkpoint.verify(workdir, 40)
  out = run(train_cmd(workdir, cache_dir, '--config.train.steps=40'))
  assert 'checkpoint step 40 is unusable' in out.stderr
  assert 'Resuming from the checkpoint at step 20' in out.stdout
  # The damaged step is kept for inspection, not deleted.
  moved = os.path.join(workdir, checkpoint.CORRUPT_DIR, '40')
  assert os.path.isdir(moved)
  # Steps 21..40 were trained again and match the original run.
  assert logged(workdir) == short_run[1]
  assert checkpoint.verify(workdir, 40) is None


def test_refuse_mode_stops_and_changes_nothing(short_run, tmp_path,
                                               cache_dir):
  workdir = copy_run(short_run, tmp_path)
  flip_byte(data_file(workdir, 40))
  before = tree_digest(workdir)
  proc = run(train_cmd(workdir, cache_dir, '--config.train.steps=60',
                       '--config.train.on_corrupt_checkpoint=refuse'),
             check=False)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert 'step 40' in proc.stderr and 'Nothing was changed' in proc.stderr
  assert 'on_corrupt_checkpoint=previous' in proc.stderr
  assert tree_digest(workdir) == before


@pytest.fixture(scope='module')
def target():
  c = base.encoding_config('rope', 'size=tiny', sampling='randomized')
  return run_state.abstract_state(c)[1]


@pytest.mark.parametrize('damage', ['truncate', 'delete', 'checksum_file'])
def test_other_damage_to_the_latest_falls_back(short_run, tmp_path, target,
                                               damage):
  workdir = copy_run(short_run, tmp_path)
  path = data_file(workdir, 40)
  if damage == 'truncate':
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 3)
  elif damage == 'delete':
    os.remove(path)
  else:
    with open(os.path.join(checkpoint.step_dir(workdir, 40),
                           checkpoint.CHECKSUM_FILE), 'w') as f:
      f.write('{"sha256": ')
  assert checkpoint.verify(workdir, 40) is not None
  step, state, meta = checkpoint.restore_latest_good(workdir, target)
  assert step == 20 and int(state['step']) == 20
  assert meta == {'nonfinite_skips': 0}
  assert checkpoint.all_steps(workdir) == [20]


def test_an_unsealed_damaged_step_is_caught_by_orbax(short_run, tmp_path,
                                                     target):
  """A step killed between its save and its seal has no checksums; if its
  data is also cut short, the failed restore still sends us back."""
  workdir = copy_run(short_run, tmp_path)
  os.remove(os.path.join(checkpoint.step_dir(workdir, 40),
                         checkpoint.CHECKSUM_FILE))
  path = data_file(workdir, 40)
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 3)
  assert checkpoint.verify(workdir, 40) == checkpoint.UNSEALED
  step, _, _ = checkpoint.restore_latest_good(workdir, target)
  assert step == 20


def test_an_unsealed_good_step_is_used_and_sealed(short_run, tmp_path, target):
  workdir = copy_run(short_run, tmp_path)
  os.remove(os.path.join(checkpoint.step_dir(workdir, 40),
                         checkpoint.CHECKSUM_FILE))
  step, _, _ = checkpoint.restore_latest_good(workdir, target)
  assert step == 40 and checkpoint.verify(workdir, 40) is None


def test_no_usable_checkpoint_moves_nothing(short_run, tmp_path, target):
  workdir = copy_run(short_run, tmp_path)
  for s in (20, 40):
    flip_byte(data_file(workdir, s))
  before = tree_digest(workdir)
  with pytest.raises(checkpoint.CheckpointError,
                     match='No checkpoint .* can be used.*Nothing was moved'):
    checkpoint.restore_latest_good(workdir, target)
  assert tree_digest(workdir) == before


def test_a_save_cut_short_by_a_kill_is_ignored(short_run, tmp_path, target):
  """Orbax writes into ``<step>.orbax-checkpoint-tmp-*`` and renames when
  done; a kill mid-save leaves only that directory behind."""
  workdir = copy_run(short_run, tmp_path)
  partial = os.path.join(checkpoint.checkpoint_dir(workdir),
                         '60.orbax-checkpoint-tmp-1234567')
  shutil.copytree(checkpoint.step_dir(workdir, 40), partial)
  os.remove(data_file(workdir, 40).replace(
      checkpoint.step_dir(workdir, 40), partial))
  assert checkpoint.all_steps(workdir) == [20, 40]
  step, _, _ = checkpoint.restore_latest_good(workdir, target)
  assert step == 40
  # The next run's saver cleans the leftover up before its first save.
  saver = checkpoint.Saver(workdir, keep=2)
  saver.save(41, _state(41), {})
  saver.close()
  assert not os.path.exists(partial)
  assert checkpoint.all_steps(workdir) == [40, 41]


def test_eval_refuses_a_damaged_step_and_names_an_older_one(short_run,
                                                             tmp_path,
                                                             target):
  workdir = copy_run(short_run, tmp_path)
  flip_byte(data_file(workdir, 40))
  before = tree_digest(workdir)
  with pytest.raises(checkpoint.CheckpointError, match='--step=20'):
    checkpoint.load(workdir, 40, target)
  assert tree_digest(workdir) == before  # evaluation never moves anything
  assert int(checkpoint.load(workdir, 20, target)['step']) == 20


# ------------------------------------------------------------------ pruning


def _state(value):
  return {'step': np.int32(value), 'w': np.full((4,), value, np.float32)}


def test_pruning_never_deletes_the_last_good_step(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  seal = checkpoint.seal
  saver = checkpoint.Saver(workdir, keep=1)
  saver.save(1, _state(1), {})
  saver.finish()
  assert checkpoint.all_steps(workdir) == [1]
  # A step that never got its checksums (its process died between the save
  # and the seal) does not count as one of the ``keep``.
  monkeypatch.setattr(checkpoint, 'seal', lambda *a: None)
  saver.save(2, _state(2), {})
  saver.finish()
  assert checkpoint.all_steps(workdir) == [1, 2]
  monkeypatch.setattr(checkpoint, 'seal', seal)
  saver.save(3, _state(3), {})
  saver.finish()
  assert checkpoint.all_steps(workdir) == [3]
  # Nor does a step damaged after its seal: step 3 stays beside it.
  def seal_then_damage(wd, step):
    seal(wd, step)
    flip_byte(data_file(wd, step))
  monkeypatch.setattr(checkpoint, 'seal', seal_then_damage)
  saver.save(4, _state(4), {})
  saver.close()
  assert checkpoint.all_steps(workdir) == [3, 4]
  assert checkpoint.verify(workdir, 3) is None


def test_keep_two_keeps_two_good_ones(tmp_path):
  workdir = str(tmp_path)
  saver = checkpoint.Saver(workdir, keep=2)
  for s in range(1, 6):
    saver.save(s, _state(s), {})
  saver.close()
  assert checkpoint.all_steps(workdir) == [4, 5]
  assert all(checkpoint.verify(workdir, s) is None for s in (4, 5))


# ------------------------------------------------------- non-finite steps


def _poison(monkeypatch, bad_steps):
  """Gives every batch loss weights; NaN ones at ``bad_steps``."""
  original = windows.train_batch

  def train_batch(stream, *, step, **kw):
    batch = original(stream, step=step, **kw)
    w = np.ones(batch['targets'].shape, np.float32)
    if step in bad_steps:
      w[0, 0] = np.nan
    batch['weights'] = w
    return batch

  monkeypatch.setattr(windows, 'train_batch', train_batch)


def test_skip_mode_leaves_the_state_unchanged_then_stops_when_used_up(
    tiny_config, tmp_path, monkeypatch):
  workdir = str(tmp_path / 'run')
  # Step index 2 is the third step: it ends at step 3.
  _poison(monkeypatch, bad_steps={2, 5})
  c = tiny_config('rope', **{'train.steps': 8, 'train.checkpoint_every': 1,
                             'train.keep_checkpoints': 10,
                             'train.max_nonfinite_skips': 1})
  with pytest.raises(FloatingPointError) as e:
    trainer.train(c, workdir, progress=False)
  msg = str(e.value)
  assert 'Non-finite loss nan at step 6' in msg
  assert 'all 1 allowed skips are used' in msg
  assert 'the checkpoint of step 5' in msg
  # Nothing of the failing step was saved.
  assert checkpoint.all_steps(workdir) == [1, 2, 3, 4, 5]
  _, target = run_state.abstract_state(c)
  s2, _ = checkpoint.restore_step(workdir, 2, target)
  s3, m3 = checkpoint.restore_step(workdir, 3, target)
  assert m3 == {'nonfinite_skips': 1}
  # The skipped step changed neither the parameters nor the optimizer.
  same = jax.tree.map(lambda a, b: np.array_equal(a, b),
                      (s2['params'], s2['opt_state']),
                      (s3['params'], s3['opt_state']))
  assert all(jax.tree.leaves(same))
  s4, _ = checkpoint.restore_step(workdir, 4, target)
  assert not all(jax.tree.leaves(jax.tree.map(
      lambda a, b: np.array_equal(a, b), s3['params'], s4['params'])))
  rows = metrics.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  assert [r['nonfinite_skips'] for r in rows] == [0, 0, 1, 1, 1]
  assert np.isnan(rows[2]['loss'])


def test_default_mode_stops_at_the_first_non_finite_step(
    tiny_config, tmp_path, monkeypatch):
  workdir = str(tmp_path / 'run')
  # Step 3 is neither logged nor saved: it is checked while step 4 runs,
  # and the run stops before step 4 is saved.
  _poison(monkeypatch, bad_steps={2})
  c = tiny_config('alibi', **{'train.steps': 8, 'train.checkpoint_every': 2,
                              'train.log_every': 100})
  with pytest.raises(FloatingPointError,
                     match='Non-finite loss nan at step 3;.*step 2'):
    trainer.train(c, workdir, progress=False)
  assert checkpoint.all_steps(workdir) == [2]
  assert checkpoint.verify(workdir, 2) is None


def test_weights_give_a_weighted_mean(tiny_config):
  """All-ones weights reproduce the plain mean; zero weights drop tokens."""
  c = tiny_config('alibi')
  tx = run_state.make_optimizer(c.train)
  graphdef, params = run_state.init_model(c)
  step = trainer.make_train_step(graphdef, tx, c)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 256, (2, 17))
  batch = {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:],
           'positions': np.broadcast_to(np.arange(16), (2, 16))}

  def loss(b):  # the step donates its state: start from a copy each time
    state = run_state.init_state(c, jax.tree.map(np.array, params), tx)
    return step(state, b)[1]['loss']

  plain = loss(batch)
  np.testing.assert_allclose(plain, loss(dict(batch, weights=np.ones((2, 16)))),
                             rtol=1e-6)
  w = np.zeros((2, 16))
  w[0] = 1
  only_first = loss({k: v[:1] for k, v in batch.items()})
  np.testing.assert_allclose(loss(dict(batch, weights=w)), only_first,
                             rtol=1e-5)
  assert abs(float(only_first) - float(plain)) > 1e-4


# ------------------------------------------------------------ small pieces


def test_resumed_metrics_drop_later_rows_and_a_cut_line(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  rows = ''.join(json.dumps({'step': s, 'loss': 1.0 / s}) + '\n'
                 for s in range(1, 6))
  path.write_text(rows + '{"step": 6, "lo')
  writer = metrics.MetricWriter(str(tmp_path), resume_step=3)
  writer.write(4, {'loss': 0.5})
  writer.close()
  got = metrics.read_jsonl(str(path))
  assert [r['step'] for r in got] == [1, 2, 3, 4]
  assert got[-1]['loss'] == 0.5


def test_saved_config_with_invalid_json_is_a_clear_error(tmp_path):
  (tmp_path / checkpoint.CONFIG_FILE).write_text('{"model": ')
  with pytest.raises(checkpoint.CheckpointError, match='not valid JSON'):
    checkpoint.read_config(str(tmp_path))


def test_configs_saved_before_new_fields_still_load(tmp_path):
  c = base.get_config('size=tiny')
  saved = json.loads(c.to_json())
  del saved['train']['on_corrupt_checkpoint']
  del saved['train']['max_nonfinite_skips']
  saved['model']['rope'] = {'theta': 500.0}  # before the scaling fields
  (tmp_path / checkpoint.CONFIG_FILE).write_text(json.dumps(saved))
  loaded = checkpoint.read_config(str(tmp_path))
  assert loaded.train.on_corrupt_checkpoint == 'previous'
  assert loaded.train.max_nonfinite_skips == 0
  # An encoding's newer settings get defaults that keep it as it was; the
  # saved ones are kept.
  assert loaded.model.rope.scaling == 'none'
  assert loaded.model.rope.theta == 500.0


def test_eval_reads_a_config_saved_before_new_fields(short_run, tmp_path):
  workdir = copy_run(short_run, tmp_path)
  path = os.path.join(workdir, checkpoint.CONFIG_FILE)
  with open(path) as f:
    saved = json.load(f)
  for field in ('on_corrupt_checkpoint', 'max_nonfinite_skips'):
    del saved['train'][field]
  with open(path, 'w') as f:
    json.dump(saved, f)
  proc = run([sys.executable, 'eval.py', f'--workdir={workdir}',
              '--lengths=64', f'--out={tmp_path / "ev"}'])
  assert '| 64 | 1 |' in proc.stdout
