"""The replication report (experiments.replication) on synthetic results: each
verdict follows from the numbers, for findings that hold and that do not."""

import json
import os

import pytest

from configs.sweeps import replicate
from experiments import replication
from lmx import sweeps as sweep

L = 16
LENGTHS = (16, 32, 64, 128)


def _lm(position, losses, seed=0, sliding=None, extensions=None, name=None):
  r = {'kind': 'lm', 'task': None, 'position': position,
       'train_sampling': 'contiguous', 'eval_sampling': 'contiguous',
       'train_length': L, 'seed': seed, 'config': {},
       'name': name or f'{position}-s{seed}',
       'results': [{'length': n, 'loss': l}
                                 for n, l in zip(LENGTHS, losses)]}
  if sliding:
    r['sliding'] = [{'length': n, 'loss': l, 'stride': n // 4}
                    for n, l in zip(LENGTHS, sliding)]
  if extensions:
    r['extensions'] = {'results': [
        {'method': m, 'length': n, 'loss': l}
        for m, losses_ in extensions.items()
        for n, l in zip(LENGTHS, losses_)]}
  return r


def _task(task, position, acc, sampling='contiguous', seed=0):
  return {'kind': 'task', 'task': task, 'position': position,
          'train_sampling': sampling, 'eval_sampling': sampling,
          'train_length': 8, 'seed': seed, 'config': {},
          'name': f'{task}-{position}-{sampling}-s{seed}',
          'results': [{'length': n, 'accuracy': a, 'examples': 10}
                      for n, a in sorted(acc.items())]}


def _parts(number, runs, mrr='length'):
  """The parts of finding ``number`` (1-10) of the replicate sweep."""
  (found,) = replication.evaluate([replicate.FINDINGS[number - 1]], runs, mrr)
  return found['parts']


def _press_runs(alibi):
  runs = []
  for seed in range(3):
    runs += [_lm('sinusoidal', [1, 2, 3, 4 + 0.1 * seed], seed),
             _lm('rope', [1, 1.2, 1.5, 2], seed),
             _lm('t5', [1, 1.05, 1.3, 1.6], seed),
             _lm('alibi', alibi, seed)]
  return runs


def test_press_holds_partly_and_not():
  parts = _parts(1, _press_runs([1, 0.98, 0.97, 0.97]))
  assert [p['holds'] for p in parts] == [True] * 5
  assert replication.verdict(parts) == 'holds'
  assert parts[0]['measured'] == '4.10 ± 0.10 (n=3)'      # 4.0, 4.1, 4.2
  assert parts[0]['text'] == ('sinusoidal explodes: loss at longest / at L '
                              '>= 1.5')
  assert parts[2]['measured'] == '1.05 ± 0.00 (n=3)'      # T5 at 2L / L
  assert parts[3]['measured'] == '1.52 ± 0.00 (n=3)'      # 1.6 / 1.05
  rising = _parts(1, _press_runs([1, 1.2, 1.5, 2]))
  assert [p['holds'] for p in rising] == [True, True, True, True, False]
  assert replication.verdict(rising) == 'partly'
  flat = [_lm(p, [1, 1, 1, 1]) for p in ('sinusoidal', 'rope')]
  flat += [_lm('t5', [1, 2, 2, 2]), _lm('alibi', [1, 2, 3, 4])]
  assert replication.verdict(_parts(1, flat)) == 'does not hold'
  assert replication.verdict(_parts(1, [])) == 'not measured'


def test_sliding_finding_follows_the_appendix():
  # ALiBi: non-overlapping windows gain past L (1.39 / 1.44 = 0.965), the
  # sliding ones do not (lowest beyond L 1.380 / 1.376 = 1.003 >= 0.99).
  runs = [_lm('alibi', [1.44, 1.41, 1.40, 1.39],
              sliding=[1.376, 1.380, 1.386, 1.39]),
          _lm('sinusoidal', [1, 2, 2, 2], sliding=[1, 1.5, 1.5, 1.6])]
  no_gain, early, explodes = _parts(2, runs)
  assert no_gain['holds'] is True and no_gain['measured'] == '1.003'
  assert early['holds'] is True
  assert early['measured'] == ('lowest loss beyond L / at L: '
                               'non-overlapping 0.965; sliding 1.003')
  assert explodes['holds'] is True      # 1.6 / 1 >= 1.5
  assert replication.verdict([no_gain, early, explodes]) == 'holds'
  # Sliding windows that gain 7% past L: neither ALiBi part holds.
  runs[0]['sliding'][2]['loss'] = 1.28            # 1.28 / 1.376 = 0.930
  no_gain, early, _ = _parts(2, runs)
  assert no_gain['holds'] is False and early['holds'] is False
  # Per seed, then the mean: seeds 1.004 and 0.97 -> 0.987 < 0.99.
  runs = [_lm('alibi', [1, 1, 1, 1], 0, sliding=[1, 1.004, 1.01, 1.02]),
          _lm('alibi', [1, 1, 1, 1], 1, sliding=[1, 0.97, 1.0, 1.0])]
  no_gain, early, explodes = _parts(2, runs)
  assert no_gain['measured'] == '0.987 ± 0.024 (n=2)'
  assert no_gain['holds'] is False
  assert explodes['holds'] is None      # no sinusoidal runs


def test_drope_and_dape_findings_compare_labelled_runs():
  # DroPE is a nested run labelled 'drope'; DAPE a member lm-dape-s0 whose
  # position is its base's (kerple), kept apart from lm-kerple-s0.
  drope = _lm('none', [1.01, 1.2, 1.4, 1.5])
  drope['label'] = 'drope'
  runs = [_lm('rope', [1.0, 1.5, 2.5, 3.0], name='lm-rope-s0'),
          _lm('none', [1.2, 1.4, 1.8, 2.0], name='lm-none-s0'), drope,
          _lm('kerple', [1.0, 1.0, 1.1, 1.2], name='lm-kerple-s0'),
          _lm('kerple', [0.95, 0.96, 1.0, 1.05], name='lm-dape-s0')]
  below_rope, below_none, keeps = _parts(9, runs)
  assert below_rope['holds'] and below_none['holds']
  assert below_rope['measured'] == 'drope 1.500; rope 3.000'
  assert keeps['holds'] is True         # 1.01 < 1.02 x 1.0
  assert keeps['text'] == ('DroPE keeps its loss at L: loss at L, drope < '
                           'rope x 1.02')
  drope['results'][0]['loss'] = 1.05    # 5% above RoPE at L
  assert _parts(9, runs)[2]['holds'] is False
  longest, within = _parts(10, runs)
  assert longest['holds'] and within['holds']
  assert longest['measured'] == 'dape 1.050; kerple 1.200'
  runs[-1]['results'][0]['loss'] = 1.1
  assert _parts(10, runs)[1]['holds'] is False
  assert [p['holds'] for p in _parts(9, runs[3:])] == [None, None, None]
  assert replication.label(_lm('rope', [1] * 4)) == 'rope'  # no lm- name


def test_mrr_order_one_part_per_pair():
  order = ('none', 't5', 'alibi', 'rope', 'sinusoidal')
  runs = [_task('copy', p, {8: 1.0, 16: 0.9 - 0.1 * i, 32: 0.5 - 0.1 * i})
          for i, p in enumerate(order)]
  parts = _parts(3, runs)
  assert len(parts) == 10 and all(p['holds'] for p in parts)
  assert parts[0]['text'] == 'NoPE above T5'
  runs[0]['results'][1]['accuracy'] = 0.0    # NoPE last at 16, first at 32
  runs[0]['results'][2]['accuracy'] = 0.0
  parts = _parts(3, runs)
  assert [p['holds'] for p in parts[:4]] == [False] * 4
  assert replication.verdict(parts) == 'partly'
  one = _parts(3, runs[:1])
  assert one[0]['holds'] is None and 'at least two encodings' in one[0][
      'measured']


def test_ruoss_and_mamba():
  runs = [_task('reverse', 'rope', {8: 1, 12: 0.0, 16: 0.0}),
          _task('reverse', 'rope', {8: 0.9, 12: 0.6, 16: 0.2}, 'randomized'),
          _task('duplicate_string', 'rope', {8: 1, 12: 0.5}),
          _task('duplicate_string', 'rope', {8: 1, 12: 0.1}, 'randomized')]
  parts = _parts(4, runs)
  assert [p['holds'] for p in parts] == [True, False]
  assert 'randomized 0.400; contiguous 0.000' in parts[0]['measured']
  assert replication.verdict(parts) == 'partly'
  assert replication.verdict(_parts(4, runs[2:])) == \
      'does not hold where measured'            # no reverse runs
  runs = [_task('induction_heads', 'rope', {8: 1.0, 16: 0.9, 17: 0.5,
                                            64: 0.1, 128: 0.0}),
          _task('induction_heads', 'xpos', {8: 0.2, 64: 0.0})]
  parts = _parts(8, runs)
  assert parts[0]['holds'] is None                   # no sinusoidal runs
  assert parts[1]['holds'] is True                   # 0.05 < 0.5 x 1.0
  assert parts[2]['holds'] is None and 'not learned' in parts[2]['measured']
  assert replication.verdict(parts) == 'holds where measured'


EXT = {'none': [1.0, 1.5, 2.0, 3.0], 'linear': [1.0, 1.8, 2.4, 3.2],
       'ntk': [1.0, 1.2, 1.6, 2.2], 'dynamic': [1.0, 1.2, 1.6, 2.2],
       'yarn': [1.0, 1.4, 2.0, 2.9],
       'rerope': [1.0, 0.98, 1.0, 1.02],            # rises past 2x
       'lm_infinite': [1.0, 0.99, 0.98, 0.98]}      # flat


def test_extension_findings():
  runs = [_lm('rope', [1, 1.5, 2, 3], seed=s, extensions=EXT)
          for s in range(2)]
  assert [p['holds'] for p in _parts(5, runs)] == [True, True, True]
  rerope = _parts(6, runs)
  assert [p['holds'] for p in rerope] == [False, False]
  han = _parts(7, runs)
  assert han[0]['holds'] is True and han[0]['measured'].startswith('0.98')
  ext = dict(EXT, rerope=[1.0, 0.98, 0.97, 0.97])
  assert all(p['holds'] for p in _parts(
      6, [_lm('rope', [1, 1, 1, 1], extensions=ext)]))
  # Seeds that differ: each length's mean with its spread.
  spread = [_lm('rope', [1, 1, 1, 1], seed=s, extensions=dict(
      EXT, rerope=[1.0, 0.98, 0.97 + 0.02 * s, 0.97])) for s in range(2)]
  assert '64: 0.980 ± 0.014' in _parts(6, spread)[0]['measured']
  assert _parts(6, spread)[0]['measured'].endswith('(n=2)')


def _write(root, run):
  d = os.path.join(root, run['name'])
  os.makedirs(os.path.join(d, 'eval'))
  ext = run.pop('extensions', None)
  with open(os.path.join(d, 'eval', 'results.json'), 'w') as f:
    json.dump({k: v for k, v in run.items()
               if k not in ('seed', 'config', 'name')}, f)
  with open(os.path.join(d, 'config.json'), 'w') as f:
    json.dump({'seed': run['seed']}, f)
  if ext:
    os.makedirs(os.path.join(d, 'extensions'))
    with open(os.path.join(d, 'extensions', 'results.json'), 'w') as f:
      json.dump(ext, f)
  return d


def test_write_puts_the_findings_first(tmp_path):
  runs = _press_runs([1, 0.98, 0.97, 0.97])
  runs[1] = _lm('rope', [1, 1.2, 1.5, 2], seed=0, extensions=EXT)
  dirs = [_write(str(tmp_path), r) for r in runs]
  out = str(tmp_path / 'report')
  written = replicate.write(dirs, out, 'replicate')
  assert {'report.md', 'findings.json', 'extensions.png'} <= set(written)
  with open(os.path.join(out, 'report.md')) as f:
    md = f.read()
  assert md.startswith('# Replication: published findings beside lmx')
  rows = [l for l in md.splitlines() if l.startswith('| ') and '**' in l]
  assert len(rows) == 10
  assert rows[0].startswith('| 1 | Press et al. 2022 |')
  assert rows[0].endswith('| **holds** |')
  assert rows[5].endswith('| **does not hold** |')    # ReRoPE rises
  assert rows[6].endswith('| **holds** |')            # LM-Infinite flat
  assert rows[7].endswith('| **not measured** |')     # no induction runs
  assert rows[8].endswith('| **not measured** |')     # no DroPE runs
  assert '## Language modelling' in md                 # the standard report
  with open(os.path.join(out, 'findings.json')) as f:
    assert [x['verdict'] for x in json.load(f)][5] == 'does not hold'


def test_findings_read_only_the_plain_evaluation(tmp_path):
  d = _write(str(tmp_path), _lm('rope', [1, 1.2, 1.5, 2], seed=0))
  other = os.path.join(d, 'eval_model.rope.scaling=yarn')
  os.makedirs(other)
  with open(os.path.join(d, 'eval', 'results.json')) as f:
    results = json.load(f)
  with open(os.path.join(other, 'results.json'), 'w') as f:
    json.dump({**results, 'overrides': {'model.rope.scaling': 'yarn'}}, f)
  runs = replication.load([d])
  assert [r['eval_dir'] for r in runs] == ['eval']  # not a second seed


def test_load_finds_the_nested_drope_run(tmp_path):
  d = _write(str(tmp_path), _lm('rope', [1, 1.2, 1.5, 2], name='lm-rope-s0'))
  _write(d, _lm('none', [1, 1.1, 1.2, 1.3], name='drope'))
  runs = replication.load([d])
  assert sorted((r['name'], replication.label(r)) for r in runs) == [
      ('lm-rope-s0', 'rope'), ('lm-rope-s0/drope', 'drope')]
  assert replication.nested_dirs([d, str(tmp_path)], 'drope') == [
      os.path.join(d, 'drope')]


def test_the_replicate_declaration(tmp_path):
  quick = sweep.prepare('configs/sweeps/replicate.py:quick', str(tmp_path))
  full = sweep.prepare('configs/sweeps/replicate.py', str(tmp_path))
  assert len(quick) == 23 and len(full) == 50
  assert sweep.report_module('configs/sweeps/replicate.py') == \
      'configs.sweeps.replicate'
  names = [m.name for m in full]
  assert len(set(names)) == len(names)
  assert sum(m.name.startswith('lm-alibi-') for m in full) == 3
  (rope,) = [m for m in quick if m.name == 'lm-rope-s0']
  assert rope.after[0].done == 'extensions/results.json'
  assert rope.after[1].command(rope.workdir)[1:] == [
      '-m', 'experiments.drope', f'--workdir={rope.workdir}', '--steps=50']
  assert rope.after[1].done == 'drope/eval/results.json'
  assert f'--workdir={rope.workdir}' in rope.after[0].command(rope.workdir)
  assert rope.overrides['train.steps'] == 500
  (ind,) = [m for m in quick
            if m.name == 'task-induction_heads-rope-contiguous-s0']
  assert 'task.eval_stride' not in ind.overrides       # its own, 64
  (copy,) = [m for m in quick if m.name == 'task-copy-none-contiguous-s0']
  assert copy.overrides['task.eval_stride'] == 4
  with pytest.raises(sweep.SweepError, match='not key=value.*the word quick'):
    sweep.prepare('configs/sweeps/replicate.py:fast', str(tmp_path))


def test_drope_recalibrates_with_the_runs_data_and_evaluation(tmp_path):
  from experiments import drope
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump({'seed': 3, 'data': {'source': '/corpus', 'cache_dir': '/c'},
               'eval': {'tokens': 8192}, 'train': {'steps': 500},
               'model': {'position': 'rope'}}, f)
  train, evaluate = drope.commands(str(tmp_path), 50, 'size=tiny')
  assert train[2].endswith(f'configs/drope.py:from={tmp_path},steps=50,'
                           'size=tiny')
  assert sorted(train[3:-2]) == ['--config.data.cache_dir=/c',
                                 '--config.data.source=/corpus',
                                 '--config.eval.tokens=8192', '--config.seed=3']
  assert train[-2] == f'--workdir={tmp_path / "drope"}'
  assert evaluate[-1] == f'--out={tmp_path / "drope" / "eval"}'
  assert drope.main(['--workdir', str(tmp_path / 'missing')]) == 2


def test_the_drope_recipe():
  from configs import drope
  from lmx.config import validate as config_lib
  from lmx.errors import ConfigError
  c = drope.get_config('from=runs/rope,size=tiny,steps=40,qk_norm=true')
  config_lib.validate(c)
  assert (c.init_from, c.model.position, c.train.steps,
          c.train.warmup_steps, c.model.layers.qk_norm) == (
              'runs/rope', 'none', 40, 4, (True,))
  for arg, match in ((None, 'from=runs/rope'), ('from=r,steps=0', 'steps'),
                     ('from=r,qk_norm=yes', 'qk_norm')):
    with pytest.raises(ConfigError, match=match):
      drope.get_config(arg)
