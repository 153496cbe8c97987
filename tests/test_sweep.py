"""Sweeps: declarations, names, bad input, and a real tiny sweep end to end."""

import csv
import json
import os
import subprocess
import sys

import pytest

from lmx import positions, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_sweep(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, 'sweep.py', *args], cwd=ROOT,
                        env=env, check=False, capture_output=True,
                        text=True, timeout=300)


def write_sweep(path, decl: str) -> str:
  path.write_text(f'def get_sweep(arg=None):\n  return {decl}\n')
  return str(path)


def test_product_order_and_names():
  assert sweep.product({'a': [1, 2], 'b': ['x', 'y']}) == [
      {'a': 1, 'b': 'x'}, {'a': 1, 'b': 'y'}, {'a': 2, 'b': 'x'},
      {'a': 2, 'b': 'y'}]
  assert sweep.product({'seed': range(2)}) == [{'seed': 0}, {'seed': 1}]
  # Only what varies is named; underscores become dashes.
  members = sweep.expand({'config': 'c.py', 'product': {
      'model.position': ['alibi', 'rope'], 'positions.train': ['randomized'],
      'train.learning_rate': [0.002, 0.0005]}}, 'd')
  assert [m.name for m in members] == [
      'alibi-learning-rate0.002', 'alibi-learning-rate0.0005',
      'rope-learning-rate0.002', 'rope-learning-rate0.0005']
  # An explicit name crossed with a product collides.
  with pytest.raises(sweep.SweepError, match='collide'):
    sweep.expand({'config': 'c.py', 'members': [{'name': 'x'}],
                  'product': {'seed': [0, 1]}}, 'd')


def test_expand_members_product_and_workdirs(tmp_path):
  decl = {'config': 'configs/base.py:size=tiny',
          'members': [{'model.position': 'alibi'},
                      {'config': 'configs/rope_randomized.py:size=tiny'}],
          'product': {'seed': [0, 1], 'train.learning_rate': [1e-3]}}
  members = sweep.expand(decl, str(tmp_path))
  assert [m.name for m in members] == [
      'alibi-s0', 'alibi-s1', 'rope-randomized-s0', 'rope-randomized-s1']
  assert members[0].config == 'configs/base.py:size=tiny'
  assert members[2].config == 'configs/rope_randomized.py:size=tiny'
  assert members[3].overrides == {'seed': 1, 'train.learning_rate': 1e-3}
  assert members[0].workdir == os.path.join(str(tmp_path), 'alibi-s0')
  cmd = members[0].train_command(['--config.train.steps=2'])
  assert cmd[0] == sys.executable and cmd[1].endswith('train.py')
  assert cmd[2].startswith('--config=') and cmd[2].endswith(
      'configs/base.py:size=tiny')
  assert cmd[3:] == ['--config.model.position=alibi', '--config.seed=0',
                     '--config.train.learning_rate=0.001',
                     '--config.train.steps=2',
                     f'--workdir={members[0].workdir}', '--progress=false']
  # A plain list, explicit names, and value formatting.
  members = sweep.expand({'config': 'c.py', 'members': [
      {'eval.multipliers': (1, 2), 'name': 'short'},
      {'eval.multipliers': (1, 2, 4), 'model.tie_embeddings': True}]}, 'd')
  assert [m.name for m in members] == ['short', 'multipliers1-2-4-tie-embeddings']
  assert sweep.config_args(members[1].overrides) == [
      '--config.eval.multipliers=(1, 2, 4)',
      '--config.model.tie_embeddings=true']


def test_shipped_declarations():
  members = sweep.prepare('configs/sweeps/encodings.py:size=tiny', 'runs/x')
  names = [m.name for m in members]
  assert len(names) == 3 * (len(positions.REGISTRY) + 2)
  for enc in positions.REGISTRY:
    assert f'{enc}-s0' in names and f'{enc}-s2' in names
  assert 'rope-randomized-s1' in names and 'sinusoidal-randomized-s2' in names
  assert all(m.config.endswith(':size=tiny') for m in members)
  one = sweep.expand(sweep.load_declaration(
      'configs/sweeps/encodings.py:size=tiny,seeds=1'), 'runs/x')
  assert len(one) == len(positions.REGISTRY) + 2
  tasks = sweep.expand(sweep.load_declaration(
      'configs/sweeps/tasks.py:size=tiny,tasks=reverse+copy'), 'runs/x')
  assert len(tasks) == 2 * len(positions.REGISTRY) * 2
  assert tasks[0].name == 'reverse-none-contiguous'
  assert tasks[0].config == 'configs/tasks/reverse.py:size=tiny'
  assert tasks[-1].name == 'copy-rope-randomized'
  every = sweep.prepare('configs/sweeps/tasks.py:size=tiny', 'runs/x')
  from configs.sweeps import tasks as task_sweep  # pylint: disable=g-import-not-at-top
  assert len(every) == len(task_sweep.TASKS) * len(positions.REGISTRY) * 2
  assert len(task_sweep.TASKS) == 24   # 9, 10 Chomsky, 5 recall tasks


def test_bad_declarations(tmp_path):
  base = "'configs/base.py:size=tiny'"
  with pytest.raises(sweep.SweepError, match='(?s)collide.*alibi-s0: c '):
    sweep.expand({'config': 'c', 'members': [
        {'model.position': 'alibi', 'seed': 0},
        {'model.position': 'alibi', 'seed': 0}]}, 'd')
  with pytest.raises(sweep.SweepError, match='no members'):
    sweep.expand({'config': 'c'}, 'd')
  with pytest.raises(sweep.SweepError, match='empty'):
    sweep.expand({'config': 'c', 'product': {'seed': []}}, 'd')
  with pytest.raises(sweep.SweepError, match='list of values'):
    sweep.expand({'config': 'c', 'product': {'seed': 0}}, 'd')
  with pytest.raises(sweep.SweepError, match='does not exist'):
    sweep.load_declaration(str(tmp_path / 'nope.py'))
  bad_field = write_sweep(tmp_path / 'f.py', f"{{'config': {base}, "
                          "'product': {'model.positon': ['alibi']}}")
  with pytest.raises(sweep.SweepError,
                     match=r'config.model.positon does not exist'):
    sweep.prepare(bad_field, str(tmp_path / 'out'))
  bad_type = write_sweep(tmp_path / 't.py', f"{{'config': {base}, "
                         "'product': {'seed': ['zero']}}")
  with pytest.raises(sweep.SweepError, match='config.seed'):
    sweep.prepare(bad_type, str(tmp_path / 'out'))
  ok = write_sweep(tmp_path / 'ok.py', f"{{'config': {base}, "
                   "'product': {'seed': [0]}}")
  with pytest.raises(sweep.SweepError, match='config.train.stepz'):
    sweep.prepare(ok, str(tmp_path / 'out'), ['--config.train.stepz=2'])
  assert not os.path.exists(tmp_path / 'out')


def test_cli_bad_input_one_message_nothing_runs(tmp_path):
  collide = write_sweep(tmp_path / 'c.py', "{'config': 'configs/base.py', "
                        "'members': [{'seed': 0, 'name': 'a'}, "
                        "{'seed': 1, 'name': 'a'}]}")
  out = tmp_path / 'out'
  proc = run_sweep(f'--sweep={collide}', f'--dir={out}')
  assert proc.returncode == 2
  assert proc.stderr.startswith('error: Members collide on one workdir')
  assert 'Traceback' not in proc.stderr
  assert not out.exists()
  proc = run_sweep(f'--sweep={tmp_path}/missing.py', f'--dir={out}')
  assert proc.returncode == 2 and 'missing.py does not exist' in proc.stderr


@pytest.fixture(scope='module')
def tiny_sweep(tmp_path_factory, cache_dir):
  """alibi and rope train and evaluate; 'broken' is refused by train.py
  (its data folder does not exist: a config error would have stopped the
  whole sweep before anything ran)."""
  root = tmp_path_factory.mktemp('sweep')
  decl = write_sweep(root / 'two.py', (
      "{'config': 'configs/base.py:size=tiny', 'members': ["
      "{'model.position': 'alibi'}, {'model.position': 'rope'}, "
      "{'model.position': 'rope', 'data.source': '/nonexistent/lmx-texts', "
      "'name': 'broken'}]}"))
  out = root / 'runs'
  args = (f'--sweep={decl}', f'--dir={out}', '--parallel=2',
          (f'--train_args=--config.train.steps=2 '
           f'--config.data.cache_dir={cache_dir} '
           "--config.eval.multipliers='(1, 2)'"))
  first = run_sweep(*args)
  logs = {n: (out / n / 'train.log').read_text() for n in ('alibi', 'rope')}
  second = run_sweep(*args)
  return out, first, second, logs


def test_sweep_trains_evaluates_and_reports(tiny_sweep):
  out, first, _, _ = tiny_sweep
  assert first.returncode == 1, first.stdout + first.stderr
  for name in ('alibi', 'rope'):
    with open(out / name / 'eval' / 'results.json') as f:
      results = json.load(f)
    assert [r['length'] for r in results['results']] == [16, 32]
    assert results['position'] == name
    assert 'Done: step 2' in (out / name / 'train.log').read_text()
    assert (out / name / 'eval.log').read_text().count('| 32 | 2 |') == 1
  manifest = json.loads((out / 'sweep.json').read_text())
  assert [m['name'] for m in manifest['members']] == ['alibi', 'rope',
                                                      'broken']
  assert manifest['members'][2]['overrides'] == {
      'model.position': 'rope', 'data.source': '/nonexistent/lmx-texts'}
  for png in ('loss_vs_length.png',):
    assert (out / png).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  md = (out / 'report.md').read_text()
  assert '| alibi | 16 | 0 |' in md and '| rope | 16 | 0 |' in md
  assert 'Not evaluated (no eval/results.json): broken.' in md
  with open(out / 'report.csv') as f:
    rows = list(csv.DictReader(f))
  loss = [r for r in rows if r['metric'] == 'loss']
  assert sorted((r['group'], int(r['length'])) for r in loss) == [
      ('alibi', 16), ('alibi', 32), ('rope', 16), ('rope', 32)]
  assert all(r['n'] == '1' and float(r['mean']) > 0 for r in loss)


def test_failing_member_is_reported_others_finish(tiny_sweep):
  out, first, _, _ = tiny_sweep
  assert 'FAILED broken: train.py exited with code 2' in first.stdout
  assert 'matches no files' in first.stdout   # the end of its log
  assert 'done' in first.stdout and '1 failed' in first.stdout
  assert not (out / 'broken' / 'eval.log').exists()


def test_rerun_skips_finished_members(tiny_sweep):
  out, _, second, logs = tiny_sweep
  assert second.returncode == 1
  assert 'alibi: skipped, already evaluated' in second.stdout
  assert 'rope: skipped, already evaluated' in second.stdout
  assert 'alibi: train' not in second.stdout
  for name, text in logs.items():
    assert (out / name / 'train.log').read_text() == text
  headers = [line for line in (out / 'broken' / 'train.log').read_text()
             .splitlines() if line.startswith('# 20')]
  assert len(headers) == 2   # tried again
  os.remove(out / 'report.md')
  proc = run_sweep(f'--dir={out}', '--report_only')
  assert proc.returncode == 0, proc.stderr
  assert '| alibi | 16 | 0 |' in (out / 'report.md').read_text()


def test_resume_reruns_member_evaluated_before_its_checkpoint(tmp_path):
  workdir = tmp_path / 'm'
  step = workdir / 'checkpoints' / '4'
  step.mkdir(parents=True)
  (workdir / 'eval').mkdir()
  results = workdir / 'eval' / 'results.json'
  results.write_text('{}')
  os.utime(step, (1000, 1000))
  os.utime(results, (2000, 2000))
  assert sweep.is_done(str(workdir))
  os.utime(results, (500, 500))   # trained further after the evaluation
  assert not sweep.is_done(str(workdir))
  assert not sweep.is_done(str(tmp_path / 'never'))


def test_after_commands_are_declared_run_and_resumed(tmp_path):
  after = [{'name': 'ext', 'args': ['-c', 'print("{workdir}")'],
            'done': 'ext/results.json'}]
  (m,) = sweep.expand({'config': 'configs/base.py:size=tiny',
                       'members': [{'name': 'a', 'after': after}]},
                      str(tmp_path))
  assert 'after' not in m.overrides and m.after[0].name == 'ext'
  # An 'after' that differs between members does not name them.
  a, b = sweep.expand({'config': 'configs/base.py:size=tiny', 'members': [
      {'seed': 0, 'after': after}, {'seed': 1}]}, str(tmp_path))
  assert (a.name, b.name) == ('s0', 's1') and b.after == ()
  assert m.after[0].command(m.workdir)[1:] == ['-c', f'print("{m.workdir}")']
  # Done once eval and every after command wrote their file after the
  # latest checkpoint.
  step = tmp_path / 'a' / 'checkpoints' / '4'
  step.mkdir(parents=True)
  (tmp_path / 'a' / 'eval').mkdir()
  (tmp_path / 'a' / 'eval' / 'results.json').write_text('{}')
  os.utime(step, (1000, 1000))
  os.utime(tmp_path / 'a' / 'eval' / 'results.json', (2000, 2000))
  assert sweep.is_done(m.workdir) and not sweep.member_done(m)
  (tmp_path / 'a' / 'ext').mkdir()
  (tmp_path / 'a' / 'ext' / 'results.json').write_text('{}')
  assert sweep.member_done(m)
  for bad in ([{'name': 'x'}], 'cmd', [{'name': 'a b', 'args': [],
                                        'done': 'f'}]):
    with pytest.raises(sweep.SweepError, match="'after'"):
      sweep.expand({'config': 'configs/base.py', 'members': [
          {'name': 'a', 'after': bad}]}, str(tmp_path))
  with pytest.raises(sweep.SweepError, match="'report' must name a module"):
    sweep.check_report_module('json')
