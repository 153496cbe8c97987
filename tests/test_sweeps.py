"""Sweeps: declarations, names, bad input, and a real tiny sweep end to end."""

import csv
import json
import os
import subprocess
import sys

import pytest

from lmx import positions
from lmx import sweeps as sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_sweep(*args, **env_vars):
  env = dict(os.environ, JAX_PLATFORMS='cpu', **env_vars)
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
  from configs.sweeps import encodings  # pylint: disable=g-import-not-at-top
  assert len(names) == 3 * (len(positions.REGISTRY) + len(encodings.EXTRA))
  for enc in positions.REGISTRY:
    assert f'{enc}-s0' in names and f'{enc}-s2' in names
  assert 'rope-randomized-s1' in names and 'sinusoidal-randomized-s2' in names
  for extra in ('cape', 'hwfa', 'irope', 'logn', 'ssmax', 'rnope-swa', 'swan',
                'dape', 'gated', 'stickbreaking'):
    assert f'{extra}-s0' in names
  assert all(m.config.endswith(':size=tiny') for m in members)
  one = sweep.expand(sweep.load_declaration(
      'configs/sweeps/encodings.py:size=tiny,seeds=1'), 'runs/x')
  assert len(one) == len(positions.REGISTRY) + len(encodings.EXTRA)
  some = sweep.expand(sweep.load_declaration(
      'configs/sweeps/encodings.py:size=tiny,seeds=1,configs=dape+swan'),
      'runs/x')
  assert [m.name for m in some] == ['dape', 'swan']   # one seed: no suffix
  with pytest.raises(sweep.SweepError, match="'dapee', not a member"):
    sweep.load_declaration('configs/sweeps/encodings.py:configs=dapee')
  tasks = sweep.expand(sweep.load_declaration(
      'configs/sweeps/tasks.py:size=tiny,tasks=reverse+copy'), 'runs/x')
  assert len(tasks) == 2 * len(positions.REGISTRY) * 2
  assert tasks[0].name == 'reverse-none-contiguous'
  assert tasks[0].config == 'configs/tasks/reverse.py:size=tiny'
  assert tasks[-1].name == 'copy-rope-randomized'
  every = sweep.prepare('configs/sweeps/tasks.py:size=tiny', 'runs/x')
  from configs.sweeps import tasks as task_sweep  # pylint: disable=g-import-not-at-top
  assert len(every) == len(task_sweep.TASKS) * len(positions.REGISTRY) * 2
  # 9, 10 Chomsky, 5 recall, 3 BABILong and 2 RULER aggregation tasks
  assert len(task_sweep.TASKS) == 29
  from lmx.data import tasks as task_lib  # pylint: disable=g-import-not-at-top
  assert set(task_sweep.TASKS) == set(task_lib.TASKS)


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
  proc = run_sweep(f'--sweep={collide}', f'--dir={out}', '--launcher=pbs')
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert proc.stderr.startswith('error: flag --launcher=pbs: value should '
                                'be one of <local|slurm>')


def test_cli_slurm_dry_run_and_no_sbatch(tmp_path):
  spec = write_sweep(tmp_path / 's.py', (
      "{'config': 'configs/base.py:size=tiny', 'product': {'seed': [0, 1]}, "
      f"'slurm': {SLURM!r}}}"))
  out = tmp_path / 'out'
  no_slurm = os.path.dirname(sys.executable)   # a PATH without sbatch
  proc = run_sweep(f'--sweep={spec}', f'--dir={out}', '--launcher=slurm',
                   PATH=no_slurm)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert proc.stderr.startswith('error: --launcher=slurm needs sbatch and '
                                'srun on PATH')
  proc = run_sweep(f'--sweep={spec}', f'--dir={out}', '--launcher=slurm',
                   '--dry_run', '--parallel=2', '--slurm=partition=debug',
                   '--train_args=--config.train.steps=2', PATH=no_slurm)
  assert proc.returncode == 0, proc.stderr
  assert not out.exists()                    # nothing written
  text = proc.stdout
  assert '[1/2] s0:\n    train: ' in text and '[2/2] s1:' in text
  assert f'--config.train.steps=2 --workdir={out}/s1' in text
  assert f'    eval: {sys.executable} {sweep.ROOT}/eval.py' in text
  assert 'sbatch script (a job array of 2; not submitted):' in text
  assert '#SBATCH --partition=debug' in text    # --slurm over the file
  assert '#SBATCH --array=0-1%2' in text and '#SBATCH --mem=16GB' in text
  assert text.rstrip().endswith(f'-u -m submitit.core._submit {out}/submitit')


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
  # Each member ran as a submitit local job, with its own job log.
  assert first.stdout.count(': local job ') == 3
  assert 'alibi: done in ' in first.stdout and '(train, eval)' in first.stdout
  assert json.loads((out / 'sweep.json').read_text())['launcher'] == 'local'
  job_logs = [p.read_text() for p in (out / 'submitit').glob('*_0_log.out')]
  assert len(job_logs) == 4   # 3 members, then broken once more
  assert sum('alibi: eval: ' in t for t in job_logs) == 1


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


# ------------------------------------------------------------- launchers

SLURM = {'partition': 'gpu', 'account': 'lab', 'time_min': 30,
         'gpus_per_node': 1, 'cpus_per_task': 4, 'mem_gb': 16,
         'setup': ['module load cuda/12', 'source ~/venv/bin/activate'],
         'sbatch': {'mail-type': 'END'}}


def test_slurm_settings_are_checked(tmp_path, monkeypatch):
  assert sweep.check_slurm(SLURM, 'x') == SLURM
  for bad, words in (({'partiton': 'gpu'}, "'partiton' is not a SLURM"),
                     ({'time_min': '2h'}, 'time_min=.2h. .* must be an int'),
                     ({'time_min': 0}, 'at least 1'),
                     ({'gpus_per_node': True}, 'gpus_per_node=True'),
                     ({'mem_gb': -1}, 'positive number'),
                     ({'setup': 'module load x'}, 'list of shell lines'),
                     ({'sbatch': {'mail_type': 'END'}}, 'sbatch option'),
                     ('gpu', "'slurm' must be a dict")):
    with pytest.raises(sweep.SweepError, match=words):
      sweep.check_slurm(bad, 'x')
  assert sweep.parse_slurm_flag('partition=debug,time_min=90,mem_gb=7.5') == {
      'partition': 'debug', 'time_min': 90, 'mem_gb': 7.5}
  for text, words in (('time_min', 'not key=value'),
                      ('setup=x', "declaration's 'slurm' dict"),
                      ('time_min=soon', 'time_min=.soon.')):
    with pytest.raises(sweep.SweepError, match=words):
      sweep.parse_slurm_flag(text)
  # In a declaration (checked whichever the launcher); --slurm overrides it.
  spec = write_sweep(tmp_path / 's.py', "{'config': 'configs/base.py', "
                     f"'members': [{{'seed': 0}}], 'slurm': {SLURM!r}}}")
  assert sweep.launch_settings(spec, 'local') is None
  monkeypatch.setenv('PATH', str(tmp_path))   # no sbatch, no srun
  got = sweep.launch_settings(spec, 'slurm', 'partition=debug', dry_run=True)
  assert got == {**SLURM, 'partition': 'debug', 'signal_delay_s': 120}
  with pytest.raises(sweep.SweepError, match='needs sbatch and srun on PATH'):
    sweep.launch_settings(spec, 'slurm')
  with pytest.raises(sweep.SweepError, match='only --launcher=slurm'):
    sweep.launch_settings(spec, 'local', 'partition=debug')
  with pytest.raises(sweep.SweepError, match='not a launcher'):
    sweep.launch_settings(spec, 'pbs')
  bad = write_sweep(tmp_path / 'b.py', "{'config': 'configs/base.py', "
                    "'members': [{'seed': 0}], 'slurm': {'gpus': 2}}")
  with pytest.raises(sweep.SweepError, match="(?s)b.py: bad SLURM.*'gpus'"):
    sweep.launch_settings(bad, 'local')


def test_slurm_submission_is_one_array_of_member_jobs(tmp_path, monkeypatch):
  """Submitted through submitit with a stand-in sbatch on PATH, which keeps
  the job script it is given and answers as sbatch does: nothing runs."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'sbatch').write_text(
      '#!/bin/sh\ncp "$1" "$(dirname "$0")/script.sh"\n'
      'echo "Submitted batch job 4242"\n')
  (bin_dir / 'srun').write_text('#!/bin/sh\nexit 0\n')
  for name in ('sbatch', 'srun'):
    os.chmod(bin_dir / name, 0o755)
  monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
  out = tmp_path / 'runs'
  members = sweep.expand({'config': 'configs/base.py:size=tiny',
                          'product': {'seed': [0, 1, 2]}}, str(out))
  runner = sweep.Runner(['--config.train.steps=2'], ['--lengths=16'],
                        parallel=2, launcher='slurm', sweep_dir=str(out),
                        slurm=SLURM)
  jobs = runner.submit(runner.executor(), members)
  assert [j.job_id for j in jobs] == ['4242_0', '4242_1', '4242_2']
  script = (bin_dir / 'script.sh').read_text()
  assert script == sweep.slurm_script(str(out), SLURM, 2, 3)  # as --dry_run
  lines = script.splitlines()
  logs = f'{out}/submitit/%A_%a'
  sbatch = {line for line in lines if line.startswith('#SBATCH')}
  for want in ('--partition=gpu', '--account=lab', '--time=30',
               '--gpus-per-node=1', '--cpus-per-task=4', '--mem=16GB',
               '--array=0-2%2', '--mail-type=END', '--signal=USR2@120',
               '--job-name=lmx-runs', f'--output={logs}_0_log.out'):
    assert f'#SBATCH {want}' in sbatch, (want, script)
  assert not any('--error' in line for line in sbatch)   # one log per job
  # The setup, in order, then the member's job through srun.
  export = next(i for i, x in enumerate(lines) if x.startswith('export PY'))
  assert lines[export] == (f'export PYTHONPATH={sweep.ROOT}'
                           '${PYTHONPATH:+:$PYTHONPATH}')
  assert lines[export + 1:export + 3] == SLURM['setup']
  assert lines[-1] == (f'srun --unbuffered --output {logs}_%t_log.out '
                       f'{sys.executable} -u -m submitit.core._submit '
                       f'{out}/submitit')
  # What each array task unpickles and runs: its member's stages.
  for job, member in zip(jobs, members):
    fn = job.submission().function
    assert isinstance(fn, sweep.MemberJob) and fn.member == member
    assert fn.train_args == ['--config.train.steps=2']
    assert fn.eval_args == ['--lengths=16'] and fn.env == {}
  # A rerun refuses to submit a member whose job still runs: a stand-in
  # sacct says s1's job runs and s0's has ended; it knows nothing of s2's.
  (bin_dir / 'sacct').write_text(
      '#!/bin/sh\nprintf "JobID|State|NodeList\\n4242_0|COMPLETED|n1\\n'
      '4242_1|RUNNING|n2\\n"\n')
  os.chmod(bin_dir / 'sacct', 0o755)
  assert sweep.active_slurm_jobs(members, str(out)) == {
      's1': ('4242_1', 'RUNNING')}
  with pytest.raises(sweep.SweepError, match='s1: job 4242_1 RUNNING'):
    sweep.check_no_active_jobs(members, str(out))
  # One member is one job, not an array.
  (job,) = runner.submit(runner.executor(), members[:1])
  assert job.job_id == '4242'
  assert '--array' not in (bin_dir / 'script.sh').read_text()
  assert json.loads((out / 'submitit' / 'slurm_jobs.json').read_text()) == {
      's0': '4242', 's1': '4242_1', 's2': '4242_2'}


TRAP = ('import signal, sys, time\n'
        'signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n'
        'print("ready", flush=True)\n'
        'time.sleep(60)\n')


def test_member_job_checkpoint_saves_and_requeues_a_fresh_copy(tmp_path):
  import subprocess as sp  # pylint: disable=g-import-not-at-top
  (m,) = sweep.expand({'config': 'configs/base.py', 'members': [
      {'name': 'a'}]}, str(tmp_path))
  job = sweep.MemberJob(m, ['--config.train.steps=2'], stop_wait_s=30)
  job._proc = sp.Popen([sys.executable, '-c', TRAP], stdout=sp.PIPE,
                       text=True)
  assert job._proc.stdout.readline() == 'ready\n'
  again = job.checkpoint()
  assert job._proc.returncode == 7      # the stage got SIGTERM and exited
  fresh = again.function
  assert isinstance(fresh, sweep.MemberJob) and fresh is not job
  assert (fresh.member, fresh.train_args) == (m, ['--config.train.steps=2'])
  assert fresh._proc is None and fresh._signal is None
  import cloudpickle  # pylint: disable=g-import-not-at-top
  assert cloudpickle.loads(cloudpickle.dumps(again)).function.member == m


class _TwoStages(sweep.MemberJob):

  def stages(self):
    yield 'first', [sys.executable, '-c', TRAP]
    yield 'second', [sys.executable, '-c', 'open("second", "w")']


def test_member_job_stops_its_stage_on_a_signal(tmp_path):
  import signal  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  (m,) = sweep.expand({'config': 'configs/base.py', 'members': [
      {'name': 'a'}]}, str(tmp_path))
  job = _TwoStages(m)
  log = tmp_path / 'a' / 'first.log'

  def send_when_ready():
    for _ in range(600):
      if log.exists() and 'ready' in log.read_text().splitlines():
        break
      threading.Event().wait(0.1)
    os.kill(os.getpid(), signal.SIGTERM)

  before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  sender = threading.Thread(target=send_when_ready)
  sender.start()
  try:
    result = job()
  finally:
    sender.join()
    for s, handler in before.items():
      signal.signal(s, handler)
  assert result['status'] == 'stopped' and result['stage'] == 'first'
  assert result['returncode'] == 7 and result['stages'] == ['first']
  assert not (tmp_path / 'a' / 'second.log').exists()
  assert not os.path.exists(os.path.join(sweep.ROOT, 'second'))
  assert log.read_text().startswith('# 20')


def _timed(path, seconds):
  """A stand-in member job: records when it ran (pickled by value)."""
  import time  # pylint: disable=g-import-not-at-top
  start = time.time()
  time.sleep(seconds)
  with open(path, 'w') as f:
    f.write(f'{start} {time.time()}')
  return {'status': 'done', 'stage': '', 'returncode': 0,
          'seconds': 0.0, 'stages': ['train']}


def test_local_launcher_bounds_parallel_and_reports_lost_jobs(
    tmp_path, monkeypatch):
  import functools  # pylint: disable=g-import-not-at-top
  import cloudpickle  # pylint: disable=g-import-not-at-top
  import submitit  # pylint: disable=g-import-not-at-top
  cloudpickle.register_pickle_by_value(sys.modules[__name__])
  members = sweep.expand({'config': 'configs/base.py', 'members': [
      {'name': n} for n in ('a', 'b', 'c', 'lost')]}, str(tmp_path))
  fns = {m.name: functools.partial(_timed, str(tmp_path / m.name), 2.0)
         for m in members[:3]}
  fns['lost'] = functools.partial(os._exit, 3)   # dies without a result
  monkeypatch.setattr(sweep.Runner, 'job_function',
                      lambda self, m: fns[m.name])
  monkeypatch.setattr(submitit.LocalJob, '_results_timeout_s', 0)
  said = []
  try:
    outcomes = sweep.Runner(parallel=2, sweep_dir=str(tmp_path),
                            print_fn=said.append, poll_s=0.1).run(members)
  finally:
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
  assert [o.status for o in outcomes] == ['done', 'done', 'done', 'failed']
  spans = [tuple(map(float, (tmp_path / n).read_text().split()))
           for n in 'abc']
  at_once = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
  assert at_once == 2, spans      # a and b together, c after one of them
  lost = outcomes[3]
  assert lost.stage == 'job' and os.path.isfile(lost.log_path())
  assert lost.log_path().startswith(str(tmp_path / 'submitit'))
  text = sweep.summary(outcomes)
  assert 'FAILED lost: its job ended without a result' in text
  assert any('lost: job' in s and 'without a result' in s for s in said)


FAKE_SBATCH = '''
import os, re, shutil, subprocess, sys
here = os.path.dirname(os.path.abspath(__file__))
calls = os.path.join(here, 'sbatch.calls')
base = 4242 + (len(open(calls).readlines()) if os.path.exists(calls) else 0)
with open(calls, 'a') as f:
  f.write(sys.argv[1] + '\\n')
script = os.path.join(here, f'{base}.sh')   # sbatch keeps its own copy
shutil.copy(sys.argv[1], script)
array = re.search(r'^#SBATCH --array=0-(\\d+)%\\d+$', open(script).read(),
                  re.M)
for i in range(int(array[1]) + 1) if array else [None]:
  env = dict(os.environ, SLURM_JOB_ID=str(base + (i or 0)), SLURM_NTASKS='1',
             SLURM_PROCID='0', SLURM_LOCALID='0', SLURM_NODEID='0',
             SLURM_JOB_NUM_NODES='1')
  if i is not None:
    env.update(SLURM_ARRAY_JOB_ID=str(base), SLURM_ARRAY_TASK_ID=str(i))
  subprocess.Popen(['bash', script], env=env, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   start_new_session=True)
print(f'Submitted batch job {base}')
'''
FAKE_SRUN = '''
import os, sys
args = sys.argv[1:]
at = args.index('--output')
env = os.environ
array = env.get('SLURM_ARRAY_JOB_ID')
job = f"{array}_{env['SLURM_ARRAY_TASK_ID']}" if array else env['SLURM_JOB_ID']
out = (args[at + 1].replace('%A', array or '')
       .replace('%a', env.get('SLURM_ARRAY_TASK_ID', ''))
       .replace('%j', env['SLURM_JOB_ID']).replace('%t', '0'))
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       job + '.pid'), 'w') as f:
  f.write(str(os.getpid()))
fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
os.dup2(fd, 1)
os.dup2(fd, 2)
os.execv(args[at + 2], args[at + 2:])
'''
FAKE_SCANCEL = '''
import os, signal, sys, time
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, 'scancel.calls'), 'a') as f:
  f.write(' '.join(sys.argv[1:]) + '\\n')
pid = os.path.join(here, sys.argv[1] + '.pid')
for _ in range(100):
  if os.path.exists(pid):
    break
  time.sleep(0.1)
os.kill(int(open(pid).read()), signal.SIGKILL)  # as SLURM after KillWait
'''


def _stand_in_slurm(bin_dir):
  """sbatch, srun, scancel and sacct enough like SLURM's to run jobs here:
  sbatch starts each array task's script in the background with SLURM's
  variables, srun runs the command into its --output file."""
  bin_dir.mkdir()
  for name, code in (('sbatch', FAKE_SBATCH), ('srun', FAKE_SRUN),
                     ('scancel', FAKE_SCANCEL),
                     ('sacct', 'print("JobID|State|NodeList")\n')):
    (bin_dir / name).write_text(f'#!{sys.executable}\n{code}')
    os.chmod(bin_dir / name, 0o755)


def test_slurm_run_collects_results_and_cancels_on_stop(tmp_path,
                                                        monkeypatch):
  import functools  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  import cloudpickle  # pylint: disable=g-import-not-at-top
  bin_dir = tmp_path / 'bin'
  _stand_in_slurm(bin_dir)
  monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
  out = tmp_path / 'runs'
  members = sweep.expand({'config': 'configs/base.py', 'members': [
      {'name': n} for n in ('a', 'b', 'slow')]}, str(out))
  fns = {'a': functools.partial(_timed, str(tmp_path / 'a'), 0.5),
         'b': functools.partial(_timed, str(tmp_path / 'b'), 0.5),
         'slow': functools.partial(_timed, str(tmp_path / 'slow'), 120)}
  monkeypatch.setattr(sweep.Runner, 'job_function',
                      lambda self, m: fns[m.name])
  said = []

  def hear(msg):   # Ctrl-C once a and b are done
    said.append(msg)
    if sum(': done in ' in s for s in said) == 2:
      runner.stop(signal.SIGINT)

  runner = sweep.Runner(parallel=2, launcher='slurm', sweep_dir=str(out),
                        slurm={'partition': 'debug'}, print_fn=hear,
                        poll_s=0.2)
  cloudpickle.register_pickle_by_value(sys.modules[__name__])
  try:
    outcomes = runner.run(members)
  finally:
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
  assert [o.status for o in outcomes] == ['done', 'done', 'stopped']
  assert '[1/3] a: SLURM job 4242_0 (stage logs in ' in said[0]
  assert '[3/3] slow: cancelled SLURM job 4242_2' in said
  assert (bin_dir / 'scancel.calls').read_text() == '4242_2\n'
  assert len((bin_dir / 'sbatch.calls').read_text().splitlines()) == 1
  # a ran inside the SLURM job environment submitit sets up.
  log = (out / 'submitit' / '4242_0_0_log.out').read_text()
  assert 'JobEnvironment(job_id=4242_0' in log
  assert (out / 'submitit' / '4242_0_0_result.pkl').exists()
  assert not (tmp_path / 'slow').exists()      # killed before its end


def test_local_stop_reaches_the_stage_through_submitit(tmp_path,
                                                       monkeypatch):
  """A stop reaches the running stage (SIGTERM: it saves and exits) through
  submitit's job controller, which ignores a Ctrl-C of its own: it would
  kill the member's job a second later, mid-save."""
  import signal  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  import cloudpickle  # pylint: disable=g-import-not-at-top
  (m,) = sweep.expand({'config': 'configs/base.py', 'members': [
      {'name': 'a'}]}, str(tmp_path))
  monkeypatch.setattr(sweep.Runner, 'job_function',
                      lambda self, member: _TwoStages(member))
  log = tmp_path / 'a' / 'first.log'
  said = []

  def interrupt():
    for _ in range(600):
      if log.exists() and 'ready' in log.read_text().splitlines():
        break
      threading.Event().wait(0.1)
    controller = int(next(s for s in said if 'local job' in s).split()[-5])
    os.kill(controller, signal.SIGINT)   # the terminal's Ctrl-C, to it
    threading.Event().wait(2.0)
    runner.stop(signal.SIGINT)           # what sweep.py's handler does

  runner = sweep.Runner(sweep_dir=str(tmp_path), print_fn=said.append,
                        poll_s=0.1)
  cloudpickle.register_pickle_by_value(sys.modules[__name__])
  thread = threading.Thread(target=interrupt)
  thread.start()
  try:
    (outcome,) = runner.run([m])
  finally:
    thread.join()
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
  assert (outcome.status, outcome.stage, outcome.returncode) == (
      'stopped', 'first', 7), said
  assert not (tmp_path / 'a' / 'second.log').exists()


class _ShowDevices(sweep.MemberJob):

  def stages(self):
    yield 'show', [sys.executable, '-c', 'import os; print("devices=" + '
                   'os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))']


def test_local_stages_see_the_devices_of_the_sweep(tmp_path, monkeypatch):
  """submitit's local jobs set CUDA_VISIBLE_DEVICES="" (no GPU asked for);
  the stages get back what sweep.py's own environment had."""
  import signal  # pylint: disable=g-import-not-at-top
  before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  members = sweep.expand({'config': 'configs/base.py', 'members': [
      {'name': 'unset'}, {'name': 'two'}]}, str(tmp_path))
  try:
    for member, sweep_env, want in ((members[0], None, 'unset'),
                                    (members[1], '0,1', '0,1')):
      if sweep_env is None:
        monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
      else:
        monkeypatch.setenv('CUDA_VISIBLE_DEVICES', sweep_env)
      env = sweep.Runner().job_function(member).env
      assert env == {'CUDA_VISIBLE_DEVICES': sweep_env}
      monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '')   # as in the job
      assert _ShowDevices(member, env=env)()['status'] == 'done'
      shown = (tmp_path / member.name / 'show.log').read_text()
      assert shown.splitlines()[-1] == f'devices={want}'
  finally:
    for s, handler in before.items():
      signal.signal(s, handler)
  assert sweep.Runner(launcher='slurm').job_function(members[0]).env == {}
