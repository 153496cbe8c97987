"""The cross-run report: table rows, the 8x/1x ratio and the combined plot."""

import json
import os

import pytest

from lmx import report
import scripts


def _cli(*args):
  """``python -m lmx.report *args``: (exit status, stdout + stderr)."""
  proc = scripts.run('-m', 'lmx.report', *args, check=False)
  return proc.returncode, proc.stdout + proc.stderr


def _fake_run(root, name, position, losses, sampling='contiguous'):
  os.makedirs(os.path.join(root, name, 'eval'))
  results = {'position': position, 'train_sampling': sampling,
             'eval_sampling': sampling, 'train_length': 64, 'step': 10,
             'results': [{'length': 64 * m, 'loss': l}
                         for m, l in zip((1, 2, 4, 8), losses)]}
  with open(os.path.join(root, name, 'eval', 'results.json'), 'w') as f:
    json.dump(results, f)
  return os.path.join(root, name)


def test_table_and_plot(tmp_path):
  a = _fake_run(str(tmp_path), 'a', 'alibi', [2.0, 1.9, 1.9, 1.8])
  b = _fake_run(str(tmp_path), 'b', 'rope', [2.0, 3.0, 3.5, 5.0],
                sampling='randomized')
  missing = str(tmp_path / 'never_evaluated')
  plot = str(tmp_path / 'all.png')
  assert _cli(a, b, missing, '--plot', plot)[0] == 0
  rows = report.table(report.load([a, b])).splitlines()
  assert rows[2].startswith('| a | alibi | contiguous | 2.000 | 1.900')
  assert rows[2].endswith('| 0.90 |')            # 1.8 / 2.0
  assert rows[3].endswith('| 2.50 |')            # 5.0 / 2.0
  assert report.label(report.load([b])[0]) == 'rope (randomized)'
  with open(plot, 'rb') as f:
    assert f.read(4) == b'\x89PNG'
  code, out = _cli(missing)
  assert code == 2 and 'run eval.py' in out and 'Traceback' not in out


def test_usage_with_no_run_and_help():
  code, out = _cli()
  assert code == 2 and 'Name at least one run directory' in out
  assert 'python -m lmx.report' in out           # the usage is printed
  code, out = _cli('--help')
  assert code == 0 and '--plot' in out and '--out' in out


def _write(root, name, results, seed=None, config=None):
  os.makedirs(os.path.join(root, name, 'eval'))
  with open(os.path.join(root, name, 'eval', 'results.json'), 'w') as f:
    json.dump(results, f)
  if seed is not None:
    with open(os.path.join(root, name, 'config.json'), 'w') as f:
      json.dump({'seed': seed, 'name': name, **(config or {})}, f)
  return os.path.join(root, name)


def _lm(position, losses, sampling='contiguous', sliding=None):
  r = {'kind': 'lm', 'position': position, 'train_sampling': sampling,
       'eval_sampling': sampling, 'train_length': 16, 'step': 2,
       'results': [{'length': 16 * m, 'loss': l, 'bits_per_byte': l / 0.693}
                   for m, l in zip((1, 2, 8), losses)]}
  if sliding:
    r['sliding'] = [{'length': 16 * m, 'stride': 8 * m, 'loss': l}
                    for m, l in zip((1, 2, 8), sliding)]
  return r


def _task(task, position, acc, sampling='contiguous', passkey=None):
  r = {'kind': 'task', 'task': task, 'position': position,
       'train_sampling': sampling, 'eval_sampling': sampling,
       'train_length': 8, 'step': 2,
       'results': [{'length': n, 'accuracy': a, 'token_accuracy': a,
                    'loss': 1 - a, 'examples': 10}
                   for n, a in zip((8, 16), acc)]}
  if passkey:
    r['passkey'] = {'lengths': [8, 16], 'depths': [0.0, 0.5, 1.0],
                    'accuracy': passkey}
  return r


def _csv(path):
  import csv  # pylint: disable=g-import-not-at-top
  with open(path) as f:
    return list(csv.DictReader(f))


def test_sweep_report_aggregates_seeds(tmp_path):
  root = str(tmp_path)
  model = {'model': {'position': 'alibi'}}
  dirs = [_write(root, f'alibi-s{s}', _lm('alibi', ls, sliding=sl), seed=s,
                 config=model)
          for s, ls, sl in ((0, [2.0, 1.9, 1.8], [1.9, 1.8, 1.7]),
                            (1, [2.2, 2.1, 2.0], [2.1, 2.0, 1.9]),
                            (2, [2.4, 2.0, 1.6], [2.0, 1.9, 1.8]))]
  dirs.append(_write(root, 'rope-randomized-s0',
                     _lm('rope', [2.0, 3.0, 4.0], 'randomized'), seed=0,
                     config={'model': {'position': 'rope'}}))
  pk0 = [[1.0, 0.5], [1.0, 0.0], [0.5, 0.0]]
  pk1 = [[1.0, 1.0], [0.0, 0.0], [0.5, 0.5]]
  for s, acc, pk in ((0, [1.0, 0.4], pk0), (1, [0.8, 0.2], pk1)):
    dirs.append(_write(root, f'passkey-alibi-s{s}',
                       _task('passkey', 'alibi', acc, passkey=pk), seed=s))
    dirs.append(_write(root, f'reverse-rope-s{s}',
                       _task('reverse', 'rope', [1.0, 0.1 * (s + 1)]),
                       seed=s))
  dirs.append(str(tmp_path / 'failed-member'))
  out = str(tmp_path / 'report')
  written = report.write(dirs, out, title='test')
  assert written[:2] == ['report.md', 'report.csv']
  for png in ('loss_vs_length.png', 'accuracy_passkey.png',
              'accuracy_reverse.png', 'passkey_passkey_alibi.png'):
    assert png in written
    with open(os.path.join(out, png), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'

  rows = _csv(os.path.join(out, 'report.csv'))
  def pick(group, metric, length, depth=''):
    (row,) = [r for r in rows if r['group'] == group and
              r['metric'] == metric and r['length'] == str(length) and
              r['depth'] == depth]
    return row
  r = pick('alibi (contiguous)', 'loss', 16)   # sampling varies: named
  assert r['n'] == '3' and r['seeds'] == '0,1,2'
  assert float(r['mean']) == pytest.approx(2.2)
  assert float(r['std']) == pytest.approx(0.2)       # sample std, ddof=1
  assert (float(r['min']), float(r['max'])) == (2.0, 2.4)
  r = pick('alibi (contiguous)', 'sliding_loss', 128)
  assert float(r['mean']) == pytest.approx(1.8)
  assert float(r['std']) == pytest.approx(0.1)
  r = pick('rope (randomized)', 'loss', 128)
  assert r['n'] == '1' and float(r['std']) == 0.0
  r = pick('alibi', 'accuracy', 16)
  assert r['task'] == 'passkey' and float(r['mean']) == pytest.approx(0.3)
  assert float(r['std']) == pytest.approx(0.1414213, rel=1e-5)
  r = pick('alibi', 'passkey_accuracy', 16, depth='0.5')
  assert float(r['mean']) == 0.0
  r = pick('alibi', 'passkey_accuracy', 16, depth='0.0')
  assert float(r['mean']) == pytest.approx(0.75)
  r = pick('rope', 'accuracy', 16)
  assert r['task'] == 'reverse' and float(r['mean']) == pytest.approx(0.15)

  with open(os.path.join(out, 'report.md')) as f:
    md = f.read()
  assert 'Not evaluated (no eval/results.json): failed-member.' in md
  assert '| alibi (contiguous) | 16 | 0,1,2 | 2.200 ± 0.200 |' in md
  assert '| rope (randomized) | 16 | 0 | 2.000 | 3.000 | 4.000 | 2.00 |' in md
  assert '0.900' in md.split('Sliding-window')[1]   # 8x / 1x of the means
  assert '## Task passkey' in md and '## Task reverse' in md
  assert '| alibi | 8 | 0,1 | 0.900 ± 0.141 | 0.300 ± 0.141 |' in md


def test_groups_split_on_other_config_fields(tmp_path):
  root = str(tmp_path)
  a = _write(root, 'a', _lm('alibi', [2.0, 2.0, 2.0]), seed=0,
             config={'train': {'learning_rate': 0.001}})
  b = _write(root, 'b', _lm('alibi', [3.0, 3.0, 3.0]), seed=0,
             config={'train': {'learning_rate': 0.002}})
  groups = report.group(report.load([a, b]))
  assert len(groups) == 2
  assert report.label_groups(groups) == ['alibi, learning_rate=0.001',
                                         'alibi, learning_rate=0.002']
  # The command line writes the full report with --out.
  out = str(tmp_path / 'out')
  assert _cli(a, b, '--out', out)[0] == 0
  assert os.path.isfile(os.path.join(out, 'report.md'))
