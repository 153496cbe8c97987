"""train.py then eval.py through the command line, on a tiny config. A
refusal is checked in this process (scripts.run_here), except one of each
entry point's, run as a real process for its exit status."""

import json
import os
import re
import shutil

import pytest
from PIL import Image

from lmx.training import metrics
from scripts import run, run_here


@pytest.fixture(scope='module')
def trained(tmp_path_factory, cache_dir):
  workdir = str(tmp_path_factory.mktemp('e2e') / 'alibi')
  proc = run('train.py', '--config=configs/alibi.py:size=tiny',
             f'--workdir={workdir}', f'--config.data.cache_dir={cache_dir}',
             '--config.train.steps=6', '--config.train.checkpoint_every=3',
             '--config.train.log_every=2', '--progress=false')
  return workdir, proc


def test_train_writes_checkpoints_config_and_metrics(trained):
  workdir, proc = trained
  assert 'Done: step 6' in proc.stdout
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6']
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  assert saved['model']['position'] == 'alibi'
  assert saved['train']['steps'] == 6
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  assert [r['step'] for r in rows] == [2, 4, 6]
  assert all(r['loss'] > 0 and r['tokens_per_second'] > 0 for r in rows)
  # The model FLOP rate (lmx.flops); no MFU on a CPU, whose peak is unknown.
  assert all(r['tflops_per_second'] > 0 and 'mfu' not in r for r in rows)
  assert any(n.startswith('events.out.tfevents')
             for n in os.listdir(os.path.join(workdir, 'tensorboard')))


def test_headless_training_logs_a_line_every_log_every_steps(trained):
  workdir, proc = trained
  line = re.compile(r'^step +(\d+)/6 loss (\d+\.\d{4}) lr \S+ [\d,]+ tok/s '
                    r'\S+ TFLOP/s elapsed \d+:\d\d:\d\d ETA \d+:\d\d:\d\d$')
  found = [line.match(x) for x in proc.stdout.splitlines()]
  found = [m for m in found if m]
  assert [int(m.group(1)) for m in found] == [2, 4, 6]  # log_every=2
  rows = [r for r in metrics.read_jsonl(os.path.join(workdir,
                                                     'metrics.jsonl'))
          if r['step'] <= 6]
  assert [m.group(2) for m in found] == [f'{r["loss"]:.4f}' for r in rows]
  assert '\r' not in proc.stderr  # no progress bar
  # The training curve: one point per logged step, in a valid PNG.
  assert metrics.curve_data(rows)['step'] == [2, 4, 6]
  with Image.open(os.path.join(workdir, 'training_curve.png')) as im:
    assert im.format == 'PNG'


def test_eval_progress_full_config_tensorboard_and_report(trained, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained[0], workdir)
  plain = run('eval.py', f'--workdir={workdir}', '--lengths=16,32')
  assert re.search(r'^eval length 1/2 \(16\): loss \d+\.\d{4}, elapsed ',
                   plain.stdout, re.M)
  assert 'eval length 2/2 (32)' in plain.stdout
  over = run('eval.py', f'--workdir={workdir}', '--lengths=16,32',
             '--config.model.lm_infinite.n_local=8')
  assert 'eval overrides: model.lm_infinite.n_local=8' in over.stdout
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  with open(os.path.join(workdir, 'eval', 'results.json')) as f:
    plain_results = json.load(f)
  folder = 'eval_model.lm_infinite.n_local=8'
  with open(os.path.join(workdir, folder, 'results.json')) as f:
    over_results = json.load(f)
  assert plain_results['overrides'] == {}
  assert plain_results['config'] == saved  # nothing overridden
  assert over_results['overrides'] == {'model.lm_infinite.n_local': '8'}
  assert over_results['config']['model']['lm_infinite']['n_local'] == 8
  over_results['config']['model']['lm_infinite']['n_local'] = (
      saved['model']['lm_infinite']['n_local'])
  assert over_results['config'] == saved  # and nothing else changed
  # Evaluation scalars beside the training ones, at the checkpoint's step.
  tb = metrics.read_tensorboard(os.path.join(workdir, 'tensorboard'))
  assert [s for s, _ in tb['loss']] == [2, 4, 6]
  for prefix, results in (('eval', plain_results),
                          ('eval_model.lm_infinite.n_local_8', over_results)):
    for r in results['results']:
      ((step, value),) = tb[f'{prefix}/loss_len{r["length"]}']
      assert step == 6 and value == pytest.approx(r['loss'], rel=1e-6)
  # The report reads both evaluation folders, as separate rows.
  proc = run('-m', 'lmx.evaluation.report', workdir)
  assert '| run | alibi |' in proc.stdout
  assert f'| run/{folder} | alibi |' in proc.stdout


def test_eval_writes_table_json_and_plots(trained):
  workdir, _ = trained
  proc = run('eval.py', f'--workdir={workdir}')
  out = os.path.join(workdir, 'eval')
  with open(os.path.join(out, 'results.json')) as f:
    results = json.load(f)
  seq_len = results['train_length']
  assert [r['length'] for r in results['results']] == [
      m * seq_len for m in (1, 2, 4, 8, 16)]
  for r in results['results']:
    assert r['loss'] > 0 and abs(r['perplexity'] - 2.718281828 ** r['loss']) < 1e-3
  with open(os.path.join(out, 'per_position.json')) as f:
    pp = json.load(f)
  assert pp['length'] == 16 * seq_len and len(pp['buckets']) > 1
  for name in ('loss_vs_length.png', 'per_position.png'):
    with open(os.path.join(out, name), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert '| 256 | 16 |' in proc.stdout


def test_eval_override_and_explicit_lengths(trained, tmp_path):
  workdir, _ = trained
  out = str(tmp_path / 'ev')
  # An override, explicit lengths and an older checkpoint by step.
  run('eval.py', f'--workdir={workdir}', '--lengths=16,48', f'--out={out}',
      '--config.positions.eval=shift', '--config.positions.max_position=64',
      '--step=3')
  with open(os.path.join(out, 'results.json')) as f:
    results = json.load(f)
  assert results['eval_sampling'] == 'shift'
  assert [r['length'] for r in results['results']] == [16, 48]
  assert results['step'] == 3
  # Attention diagnostics stop at the dense backend's reach: the longest
  # length <= chunk_threshold, while the loss goes on (chunked) beyond it.
  out2 = str(tmp_path / 'ev2')
  run('eval.py', f'--workdir={workdir}', '--lengths=16,48', f'--out={out2}',
      '--config.model.chunk_threshold=32', '--config.model.attention_block=8')
  with open(os.path.join(out2, 'attention.json')) as f:
    assert json.load(f)['length'] == 16
  with open(os.path.join(out2, 'results.json')) as f:
    assert [r['length'] for r in json.load(f)['results']] == [16, 48]
  # A clear message for a missing step.
  proc = run_here('eval.py', f'--workdir={workdir}', '--step=4')
  assert proc.returncode == 2 and 'available steps: 3, 6' in proc.stderr


def test_eval_generation_quality_and_its_bad_input(trained, tmp_path):
  workdir, _ = trained
  out = str(tmp_path / 'gen')
  flags = ['--lengths=16', '--config.eval.generation=true',
           '--config.eval.generation_tokens=20',
           '--config.eval.generation_documents=2',
           '--config.model.lm_infinite.n_local=8']  # an eval override too
  proc = run('eval.py', f'--workdir={workdir}', f'--out={out}',
             '--config.eval.generation_multipliers=(1,2)', *flags)
  with open(os.path.join(out, 'generation.json')) as f:
    gen = json.load(f)
  assert [r['position'] for r in gen['rows']] == [16, 32]
  assert gen['documents'] == 2 and gen['tokens'] == 20
  assert all(0 <= r['bleu'] <= 100 and 0 <= r['rougeL'] <= 1
             for r in gen['rows'])
  with open(os.path.join(out, 'generation.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert '| 32 | 2 |' in proc.stdout and 'generation.png' in proc.stdout
  proc = run_here('eval.py', f'--workdir={workdir}', f'--out={out}',
                  '--config.eval.generation_positions=(10000000,)', *flags)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert proc.stderr.count('\n') == 1
  assert 'generation_positions' in proc.stderr and '10000000' in proc.stderr


def test_rerunning_the_command_resumes(trained, cache_dir):
  workdir, _ = trained
  curve = os.path.join(workdir, 'training_curve.png')
  before_curve = os.stat(curve).st_mtime_ns
  proc = run('train.py', '--config=configs/alibi.py:size=tiny',
             f'--workdir={workdir}', f'--config.data.cache_dir={cache_dir}',
             '--config.train.steps=8', '--config.train.checkpoint_every=3',
             '--config.train.log_every=2', '--progress=false')
  assert 'Resuming from the checkpoint at step 6' in proc.stdout
  assert 'Done: step 8' in proc.stdout
  assert '8' in os.listdir(os.path.join(workdir, 'checkpoints'))
  # The curve is drawn again over the whole history, before the resume too.
  assert os.stat(curve).st_mtime_ns > before_curve
  rows = metrics.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  assert metrics.curve_data(rows)['step'] == [2, 4, 6, 8]
  # Once finished, the same command changes nothing.
  before = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
  proc = run('train.py', '--config=configs/alibi.py:size=tiny',
             f'--workdir={workdir}', f'--config.data.cache_dir={cache_dir}',
             '--config.train.steps=8', '--progress=false')
  assert 'already trained to step 8' in proc.stdout
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == before


def test_bad_input_gets_one_clear_message(tmp_path, cache_dir):
  proc = run('train.py', '--config=configs/alibi.py:size=tiny',
             f'--workdir={tmp_path / "x"}', '--config.model.position=alibbi',
             check=False)
  assert proc.returncode == 2
  assert 'Valid names:' in proc.stderr and 'Traceback' not in proc.stderr

  proc = run('eval.py', f'--workdir={tmp_path / "missing"}', check=False)
  assert proc.returncode == 2 and 'Train first' in proc.stderr
  assert 'Traceback' not in proc.stderr

  proc = run_here('train.py', '--config=configs/rope.py:size=tiny',
                  f'--workdir={tmp_path / "y"}', '--config.model.d_model=30',
                  '--config.model.num_heads=2')
  assert proc.returncode == 2 and 'even' in proc.stderr

  # A config argument the config file does not take: one line, exit 2,
  # nothing written.
  for arg, words in (('sise=tiny', "Unknown key 'sise'"),
                     ('tiny', 'not key=value')):
    proc = run_here('train.py', f'--config=configs/alibi.py:{arg}',
                    f'--workdir={tmp_path / "z"}')
    assert proc.returncode == 2 and words in proc.stderr, proc.stderr
    assert 'valid keys: size' in proc.stderr
    assert 'Traceback' not in proc.stderr + proc.stdout
    assert not os.path.exists(tmp_path / 'z')


@pytest.mark.parametrize('command,own', [
    (('train.py',), ('--config', '--workdir', '--progress', '--coordinator')),
    (('eval.py',), ('--workdir', '--step', '--config', '--lengths', '--out')),
    (('generate.py',), ('--workdir', '--step', '--config', '--prompt',
                        '--top_k')),
    (('sweep.py',), ('--sweep', '--dir', '--parallel', '--report_only')),
    (('-m', 'lmx.evaluation.extensions'), ('--workdir', '--lengths', '--methods',
                                '--step', '--out')),
    (('-m', 'lmx.evaluation.report'), ('--plot', '--out')),
])
def test_every_entry_point_lists_its_own_flags(command, own):
  proc = run(*command, '--help')   # exits 0
  for flag in own:   # absl writes a boolean flag as --[no]name
    listed = (f'  {flag}:' in proc.stdout
              or f'  --[no]{flag[2:]}:' in proc.stdout)
    assert listed, (command, flag, proc.stdout)


def test_eval_refuses_a_length_the_learned_table_cannot_cover(tmp_path,
                                                             cache_dir):
  workdir = str(tmp_path / 'learned')
  run('train.py', '--config=configs/learned.py:size=tiny',
      f'--workdir={workdir}', f'--config.data.cache_dir={cache_dir}',
      '--config.train.steps=2', '--progress=false')
  proc = run_here('eval.py', f'--workdir={workdir}', '--lengths=64')
  assert proc.returncode == 2
  assert 'config.model.learned.max_len' in proc.stderr
  assert not os.path.exists(os.path.join(workdir, 'eval'))


def test_resuming_with_a_different_model_is_refused(trained, cache_dir):
  workdir, _ = trained
  ckpts = os.path.join(workdir, 'checkpoints')
  before = sorted(os.listdir(ckpts))
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = f.read()
  proc = run_here('train.py', '--config=configs/alibi.py:size=tiny',
                  f'--workdir={workdir}', f'--config.data.cache_dir={cache_dir}',
                  '--config.model.num_layers=3', '--progress=false')
  assert proc.returncode == 2
  assert 'config.model.num_layers: saved 2, now 3' in proc.stderr
  assert 'new --workdir' in proc.stderr
  # Nothing already saved is touched.
  assert sorted(os.listdir(ckpts)) == before
  with open(os.path.join(workdir, 'config.json')) as f:
    assert f.read() == saved


def test_a_diverging_run_stops_with_the_step_and_keeps_checkpoints(tmp_path,
                                                                    cache_dir):
  workdir = str(tmp_path / 'nan')
  # A learning rate of 1e30 makes the parameters, then the loss, non-finite.
  proc = run('train.py', '--config=configs/rope.py:size=tiny',
             f'--workdir={workdir}', f'--config.data.cache_dir={cache_dir}',
             '--config.train.steps=6', '--config.train.checkpoint_every=1',
             '--config.train.log_every=3', '--config.train.grad_clip=1e30',
             '--config.train.learning_rate=1e30', '--progress=false',
             check=False)
  assert proc.returncode == 2, proc.stderr
  assert 'Non-finite loss' in proc.stderr and 'at step 3' in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert os.listdir(os.path.join(workdir, 'checkpoints'))


def test_own_text_folder_and_a_length_longer_than_its_validation_text(
    tmp_path):
  texts = tmp_path / 'texts'
  texts.mkdir()
  for i in range(40):
    (texts / f'{i}.txt').write_text(f'line {i} of some text\n' * 100)
  workdir = str(tmp_path / 'own')
  run('train.py', '--config=configs/alibi.py:size=tiny',
      f'--workdir={workdir}', f'--config.data.source={texts}',
      f'--config.data.cache_dir={tmp_path / "cache"}',
      '--config.data.validation_fraction=0.5', '--config.train.steps=2',
      '--progress=false')
  # Enough tokens asked for (config.eval.tokens would be named first
  # otherwise): the validation text itself is too short.
  proc = run_here('eval.py', f'--workdir={workdir}', '--lengths=1000000',
                  '--config.eval.tokens=2000000')
  assert proc.returncode == 2 and 'too few' in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_a_task_run_trains_and_evaluates_accuracy_by_length(tmp_path):
  workdir = str(tmp_path / 'reverse')
  run('train.py', '--config=configs/tasks/reverse.py:size=tiny',
      f'--workdir={workdir}', '--config.positions.train=randomized',
      '--config.train.steps=3', '--progress=false')
  proc = run('eval.py', f'--workdir={workdir}')
  with open(os.path.join(workdir, 'eval', 'results.json')) as f:
    results = json.load(f)
  assert results['kind'] == 'task' and results['task'] == 'reverse'
  assert results['eval_sampling'] == 'randomized'
  lengths = [r['length'] for r in results['results']]
  assert lengths == list(range(1, 5 * results['train_length'] + 1))
  assert all(0.0 <= r['accuracy'] <= r['token_accuracy'] <= 1.0
             for r in results['results'])
  with open(os.path.join(workdir, 'eval', 'accuracy_vs_length.png'),
            'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert 'exact match' in proc.stdout
  # A metric that does not fit the run's data is refused, naming both.
  proc = run_here('eval.py', f'--workdir={workdir}',
                  '--config.task.name=passkey')
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert "trained on the 'reverse' task" in proc.stderr
  assert "'passkey' task" in proc.stderr


def test_passkey_writes_a_depth_by_length_heatmap(tmp_path):
  workdir = str(tmp_path / 'passkey')
  run('train.py', '--config=configs/tasks/passkey.py:size=tiny',
      f'--workdir={workdir}', '--config.train.steps=2', '--progress=false')
  run('eval.py', f'--workdir={workdir}', '--lengths=1,4')
  with open(os.path.join(workdir, 'eval', 'results.json')) as f:
    grid = json.load(f)['passkey']
  assert grid['lengths'] == [1, 4]
  assert len(grid['accuracy']) == len(grid['depths']) == 5
  assert all(len(row) == 2 for row in grid['accuracy'])
  with open(os.path.join(workdir, 'eval', 'passkey_heatmap.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
