"""The cross-run report: table rows, the 8x/1x ratio and the combined plot."""

import json
import os

import pytest

from lmx.evaluation import report
import scripts


def _cli(*args):
  """``python -m lmx.evaluation.report *args``, in this process: (exit status,
  stdout + stderr)."""
  proc = scripts.run_here('-m', 'lmx.evaluation.report', *args)
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
  assert 'python -m lmx.evaluation.report' in out           # the usage is printed
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


# ------------------------------------------------ mean reciprocal rank


def _task_at(task, position, acc, sampling='contiguous', train_length=8):
  """A task run's results.json with ``acc``: {length: accuracy}."""
  return {'kind': 'task', 'task': task, 'position': position,
          'train_sampling': sampling, 'eval_sampling': sampling,
          'train_length': train_length, 'step': 2,
          'results': [{'length': n, 'accuracy': a, 'token_accuracy': a,
                       'loss': 1 - a, 'examples': 10}
                      for n, a in sorted(acc.items())]}


# Mean accuracy over seeds at each length; training length 8. At length 8
# (not beyond training) the order is reversed: counting it would change
# every MRR. Length 64 exists for alibi only, so it is left out.
#            copy 16  copy 32  reverse 16  reverse 32
#   alibi    0.9 (1)  0.2 (2.5)  0.4 (2)   0.1 (3)   RR 1, .4, .5, 1/3
#   nope     0.5 (2)  0.6 (1)    0.7 (1)   0.3 (2)   RR .5, 1, 1, .5
#   rope     0.1 (3)  0.2 (2.5)  0.0 (3)   0.5 (1)   RR 1/3, .4, 1/3, 1
MRR = {'alibi': (1 + 0.4 + 0.5 + 1 / 3) / 4,      # 0.5583
       'nope': (0.5 + 1 + 1 + 0.5) / 4,           # 0.75
       'rope': (1 / 3 + 0.4 + 1 / 3 + 1) / 4}     # 0.5167


def _mrr_sweep(root):
  """The table above as runs; alibi and nope have two seeds each, whose
  means give the table (a per-seed ranking would not)."""
  runs = [
      ('copy', 'alibi', 0, {8: 0.0, 16: 1.0, 32: 0.2, 64: 0.5}),
      ('copy', 'alibi', 1, {8: 0.0, 16: 0.8, 32: 0.2, 64: 0.5}),
      ('copy', 'nope', 0, {8: 0.5, 16: 0.5, 32: 0.6}),
      ('copy', 'rope', 0, {8: 1.0, 16: 0.1, 32: 0.2}),
      ('reverse', 'alibi', 0, {8: 0.0, 16: 0.4, 32: 0.1}),
      ('reverse', 'nope', 0, {8: 0.5, 16: 0.4, 32: 0.3}),
      ('reverse', 'nope', 1, {8: 0.5, 16: 1.0, 32: 0.3}),
      ('reverse', 'rope', 0, {8: 1.0, 16: 0.0, 32: 0.5}),
  ]
  return [_write(root, f'{task}-{pos}-s{seed}', _task_at(task, pos, acc),
                 seed=seed) for task, pos, seed, acc in runs]


def test_mean_reciprocal_rank_by_hand(tmp_path):
  dirs = _mrr_sweep(str(tmp_path))
  table, train_lengths, notes, _ = report.mrr_table(
      report.group(report.load(dirs)))
  assert notes == [] and train_lengths == {'copy': 8, 'reverse': 8}
  assert table['copy']['alibi'][16] == pytest.approx(0.9)      # seeds mean
  assert table['reverse']['nope'][16] == pytest.approx(0.7)
  result = report.mean_reciprocal_rank(table, train_lengths)
  assert result['cells'] == [('copy', 16), ('copy', 32), ('reverse', 16),
                             ('reverse', 32)]
  assert result['ranks']['copy', 32] == {'alibi': 2.5, 'nope': 1,
                                         'rope': 2.5}           # the tie
  assert result['mrr'] == pytest.approx(MRR)
  assert result['mean_rank']['nope'] == pytest.approx(1.5)
  assert result['notes'] == ['task copy: lengths 64 left out, not '
                             'evaluated for every label']
  # Ties are symmetric: reordering the labels changes nothing.
  flipped = {t: dict(reversed(list(by.items()))) for t, by in table.items()}
  assert report.mean_reciprocal_rank(flipped, 8)['mrr'] == pytest.approx(MRR)
  # Seed 0 alone ties nope with alibi on reverse 16 (0.4 each): ranks 1.5.
  first = report.mean_reciprocal_rank(
      report.mrr_table(report.group(report.load(
          [d for d in dirs if not d.endswith('-s1')])))[0], 8)
  assert first['ranks']['reverse', 16]['nope'] == 1.5
  assert first['mrr']['nope'] == pytest.approx((0.5 + 1 + 1 / 1.5 + 0.5) / 4)


def test_mean_reciprocal_rank_as_the_authors_compute_it(tmp_path):
  """Per (task, seed), accuracy pooled beyond training, ties by row
  order. Seed 1 has only alibi (copy) or nope (reverse): left out.
    copy s0:    alibi (1 + .2 + .5)/3 = .567 (1), nope .55 (2), rope .15 (3)
    reverse s0: nope .35 (1), alibi .25 and rope .25 tie: row order"""
  dirs = _mrr_sweep(str(tmp_path))
  result, _, _ = report.mrr_of_groups(report.group(report.load(dirs)),
                                      'authors')
  assert result['cells'] == [('copy', 0), ('reverse', 0)]
  assert result['ranks']['reverse', 0] == {'nope': 1, 'alibi': 2, 'rope': 3}
  assert result['mrr'] == pytest.approx({'alibi': 0.75, 'nope': 0.75,
                                         'rope': 1 / 3})
  assert len(result['notes']) == 2 and 'seed 1' in result['notes'][0]
  # Row order decides the tie: with the runs in reverse order rope wins it.
  flipped, _, _ = report.mrr_of_groups(
      report.group(report.load(dirs[::-1])), 'authors')
  assert flipped['ranks']['reverse', 0] == {'nope': 1, 'rope': 2, 'alibi': 3}
  assert flipped['mrr']['rope'] == pytest.approx((1 / 3 + 1 / 2) / 2)
  out = str(tmp_path / 'authors')
  assert _cli(*dirs, '--out', out, '--mrr', 'authors')[0] == 0
  with open(os.path.join(out, 'report.md')) as f:
    md = f.read()
  assert 'ties broken by row order' in md and '| alibi | 0.750 |' in md
  one = [d for d in dirs if '-alibi-' in d]
  with pytest.raises(ValueError, match='at least two encodings'):
    report.mrr_of_groups(report.group(report.load(one)), 'authors')


def test_report_mrr_section_csv_and_plot(tmp_path):
  dirs = _mrr_sweep(str(tmp_path))
  out = str(tmp_path / 'report')
  written = report.write(dirs, out)
  assert 'mrr.png' in written
  with open(os.path.join(out, 'mrr.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  with open(os.path.join(out, 'report.md')) as f:
    md = f.read()
  section = md.split('## Mean reciprocal rank across tasks')[1]
  section = section.split('## Runs')[0]
  assert '| label | MRR | mean rank | first places | cells |' in section
  rows = [l for l in section.splitlines() if l.startswith('| ') and
          'MRR' not in l]
  assert rows == ['| nope | 0.750 | 1.50 | 2 | 4 |',           # by MRR
                  '| alibi | 0.558 | 2.12 | 1 | 4 |',
                  '| rope | 0.517 | 2.38 | 1 | 4 |']
  assert 'Cells: copy at 16, 32; reverse at 16, 32.' in section
  assert 'lengths 64 left out' in section
  assert '![mean reciprocal rank](mrr.png)' in section
  csv_rows = _csv(os.path.join(out, 'report.csv'))
  (nope,) = [r for r in csv_rows if r['metric'] == 'mrr' and
             r['group'] == 'nope']
  assert nope['task'] == 'all' and nope['n'] == '4'
  assert float(nope['mean']) == pytest.approx(0.75)
  rr = [r for r in csv_rows if r['metric'] == 'reciprocal_rank' and
        r['group'] == 'rope' and r['task'] == 'copy' and r['length'] == '32']
  assert len(rr) == 1 and float(rr[0]['mean']) == pytest.approx(0.4)


def test_mrr_refuses_one_label_and_skips_tasks_without_extrapolation(
    tmp_path):
  root = str(tmp_path)
  one = [_write(root, f'rope-{task}', _task_at(task, 'rope', {8: 1, 16: 0}),
                seed=0) for task in ('copy', 'reverse')]
  out = str(tmp_path / 'one')
  assert 'mrr.png' not in report.write(one, out)
  with open(os.path.join(out, 'report.md')) as f:
    md = f.read()
  assert ('Mean reciprocal rank across tasks: not computed: mean reciprocal '
          'rank needs task runs of at least two encodings; all are rope.'
          in md)
  assert '## Mean reciprocal rank' not in md
  with pytest.raises(ValueError, match='at least two encodings'):
    report.mean_reciprocal_rank({'copy': {'rope': {16: 1.0}}}, 8)

  # Sampling varies: it names the labels. 'sort' was only evaluated up to
  # its training length: skipped, with a note.
  dirs = [_write(root, 'copy-rr', _task_at('copy', 'rope', {16: 0.2},
                                           'randomized'), seed=0),
          _write(root, 'copy-rc', _task_at('copy', 'rope', {16: 0.1}),
                 seed=0),
          _write(root, 'sort-rr', _task_at('sort', 'rope', {4: 0.9, 8: 0.5},
                                           'randomized'), seed=0),
          _write(root, 'sort-rc', _task_at('sort', 'rope', {4: 1.0, 8: 0.9}),
                 seed=0)]
  table, train_lengths, _, _ = report.mrr_table(report.group(report.load(dirs)))
  result = report.mean_reciprocal_rank(table, train_lengths)
  assert result['cells'] == [('copy', 16)]
  assert result['mrr'] == {'rope (randomized)': 1.0, 'rope (contiguous)': 0.5}
  assert result['notes'] == ['task sort: skipped, no evaluation length '
                             'beyond the training length 8']
  out = str(tmp_path / 'two')
  report.write(dirs, out)
  with open(os.path.join(out, 'report.md')) as f:
    md = f.read()
  assert '| rope (randomized) | 1.000 | 1.00 | 1 | 1 |' in md
  assert 'Not counted: task sort: skipped, no evaluation length' in md


def test_report_reads_every_evaluation_folder_of_a_run(tmp_path):
  root = str(tmp_path)
  run = _write(root, 'rope-s0', _lm('rope', [2.0, 2.5, 4.0]), seed=0)
  yarn = _lm('rope', [1.9, 2.1, 2.2])
  yarn['overrides'] = {'model.rope.scaling': 'yarn'}
  folder = os.path.join(run, 'eval_model.rope.scaling=yarn')
  os.makedirs(folder)
  with open(os.path.join(folder, 'results.json'), 'w') as f:
    json.dump(yarn, f)
  os.makedirs(os.path.join(run, 'eval_empty'))  # no results.json: not read
  assert report.eval_dirs(run) == ['eval', 'eval_model.rope.scaling=yarn']
  runs = report.load([run])
  assert [r['name'] for r in runs] == [
      'rope-s0', 'rope-s0/eval_model.rope.scaling=yarn']
  groups = report.group(runs)
  assert report.label_groups(groups) == [
      'rope', 'rope (eval overrides: model.rope.scaling=yarn)']
  out = str(tmp_path / 'report')
  report.write([run], out)
  with open(os.path.join(out, 'report.md')) as f:
    md = f.read()
  assert ('| rope (eval overrides: model.rope.scaling=yarn) | 16 | 0 | '
          '1.900 | 2.100 | 2.200 | 1.16 |') in md
  assert '| rope-s0/eval_model.rope.scaling=yarn | rope |' in md
  rows = _csv(os.path.join(out, 'report.csv'))
  assert {r['eval_overrides'] for r in rows} == {
      '', 'model.rope.scaling=yarn'}
  code, out = _cli(run)
  assert code == 0 and 'rope-s0/eval_model.rope.scaling=yarn' in out


def test_many_groups_are_drawn_as_small_multiples(tmp_path):
  root = str(tmp_path)
  names = ['none', 'sinusoidal', 'learned', 't5', 'alibi', 'kerple', 'fire',
           'xpos', 'rope', 'cope']
  dirs = [_write(root, n, _lm(n, [2.0, 2.0 + i / 10, 2.0 + i / 5],
                              sliding=[1.9, 1.9, 1.9]), seed=0)
          for i, n in enumerate(names)]
  groups = report.group(report.load(dirs))
  labels = report.label_groups(groups)
  assert report.plot_lm(groups, labels, str(tmp_path / 'ten.png')) == 10
  assert report.plot_lm(groups[:3], labels[:3],
                        str(tmp_path / 'three.png')) == 1
  tasks = [_write(root, f'task-{n}', _task('reverse', n, [1.0, 0.1 * i]),
                  seed=0) for i, n in enumerate(names[:5])]
  tg = report.group(report.load(tasks))
  assert report.plot_task(tg, report.label_groups(tg), 'reverse',
                          str(tmp_path / 'task.png')) == 5
  for png in ('ten.png', 'three.png', 'task.png'):
    with open(tmp_path / png, 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_sweep_report_has_effective_lengths_and_longppl(tmp_path):
  root = str(tmp_path)
  dirs = []
  # Losses at 16 (training length), 32, 128; 0.85 lets the loss rise by
  # ln(1 / 0.85) = 0.1625 nats over the reference (the loss at 16).
  for s, losses, lp in ((0, [1.0, 1.1, 1.5], [None, 3.0, 6.0]),
                        (1, [1.2, 1.4, 1.3], [None, 3.2, 7.0])):
    r = _lm('alibi', losses)
    r['results'][2]['length'] = 128
    r['longppl'] = [{'length': n, 'longppl': v, 'key_fraction': 0.1}
                    for n, v in zip((16, 32, 128), lp)]
    dirs.append(_write(root, f'alibi-s{s}', r, seed=s))
  for s in (0, 1):
    dirs.append(_write(root, f'reverse-s{s}',
                       _task('reverse', 'rope', [1.0, 0.1 * (s + 1)]),
                       seed=s))
  out = str(tmp_path / 'report')
  report.write(dirs, out, title='t')
  with open(os.path.join(out, 'report.md')) as f:
    md = f.read()
  # Seed 0: +0.1 at 32 passes, +0.5 at 128 fails -> 32. Seed 1: +0.2 at 32
  # fails -> 16. Mean losses 1.1, 1.25, 1.4: +0.15 passes, +0.3 fails -> 32.
  assert ('| alibi | 0,1 | perplexity | 3.004 (16) | <= 3.534 | 32 | '
          '32, 16 |') in md
  # LongPPL has no value at the training length: no reference.
  assert '| alibi | 0,1 | LongPPL | n/a | n/a | n/a | n/a, n/a |' in md
  assert 'LongPPL (Fang et al. 2025' in md
  assert '3.100 ± 0.141' in md  # LongPPL at 32 over the seeds
  # Accuracy 1.0 at 8, then 0.1 / 0.2 at 16: only the training length.
  assert '| rope | 0,1 | accuracy | 1 (8) | >= 0.85 | 8 | 8, 8 |' in md
  rows = _csv(os.path.join(out, 'report.csv'))
  (e,) = [r for r in rows if r['metric'] == 'effective_length perplexity']
  assert e['mean'] == '32' and e['n'] == '2'
  (e,) = [r for r in rows if r['metric'] == 'effective_length LongPPL']
  assert e['mean'] == ''


def test_fine_tunes_from_each_seed_of_a_run_form_one_group():
  assert report.source_name('runs/sweep/lm-rope-s2') == 'lm-rope'
  assert report.source_name('runs/rope/') == 'rope'
  assert report.source_name('runs/s3') == 's3'     # a name, not a suffix


def test_a_fine_tunes_source_seed_does_not_split_its_group(tmp_path):
  dirs = []
  for seed in (0, 1):
    d = tmp_path / f'drope-s{seed}'
    (d / 'eval').mkdir(parents=True)
    (d / 'eval' / 'results.json').write_text(json.dumps(
        {'results': [{'length': 16, 'loss': 1.0}], 'train_length': 16,
         'position': 'none', 'train_sampling': 'contiguous'}))
    (d / 'config.json').write_text(json.dumps(
        {'seed': seed, 'init_from': f'/runs/sweep/lm-rope-s{seed}'}))
    dirs.append(str(d))
  a, b = report.load(dirs)
  assert a['config'] == b['config'] == {'init_from': 'lm-rope'}
