"""The comparison of RoPE extensions on one checkpoint (lmx.evaluation.extensions)."""

import json
import os

import pytest

import scripts
from lmx.positions import far
from lmx.config import validate as config_lib
from lmx.evaluation import extensions
from lmx.training import trainer
from lmx.positions import rope_scaling


@pytest.fixture(scope='module')
def rope_run(tiny_rope_run):
  """A tiny trained RoPE run (the session's, in conftest.py): its folder."""
  return tiny_rope_run[0]


def test_every_method_at_every_length(rope_run, tmp_path):
  out = str(tmp_path / 'out')
  results = extensions.compare(rope_run, [16, 32], out)
  loss = {(r['method'], r['length']): r['loss'] for r in results['results']}
  assert set(m for m, _ in loss) == set(extensions.METHODS)
  # At the training length every scaling is plain RoPE, to the bit, and so
  # are Leaky ReRoPE (no leak needed), Self-Extend (off), LM-Infinite
  # (n_global + n_local covers the window) and log-n (1 below L); ReRoPE
  # clamps at L/2 at every length, and DCA (chunks of 3L/4 - L/8) and
  # STRING (offset 0.33 n) act within L too.
  within = {'rerope', 'rerope_logn', 'dca', 'string'}
  plain = set(extensions.METHODS) - within
  assert len({loss[(m, 16)] for m in plain}) == 1
  for m in within:
    assert loss[(m, 16)] != loss[('none', 16)], m
  assert loss[('rerope_logn', 16)] == loss[('rerope', 16)]
  for m in ('rerope', 'leaky_rerope', 'lm_infinite', 'self_extend',
            'rerope_logn', 'longrope', 'dca', 'string'):
    assert loss[(m, 32)] != loss[('none', 32)], m
  assert loss[('rerope_logn', 32)] != loss[('rerope', 32)]
  # Beyond it they change the model: interpolation differs from none, and
  # dynamic NTK at a full window equals NTK with s = length / L.
  assert loss[('linear', 32)] != loss[('none', 32)]
  assert loss[('dynamic', 32)] == pytest.approx(loss[('ntk', 32)], rel=1e-6)
  factors = {(r['method'], r['length']): r['factor']
             for r in results['results']}
  assert factors[('yarn', 32)] == 2.0 and factors[('yarn', 16)] == 1.0
  with open(os.path.join(out, 'results.json')) as f:
    assert json.load(f)['lengths'] == [16, 32]
  with open(os.path.join(out, 'results.csv')) as f:
    assert len(f.read().strip().splitlines()) == 1 + 2 * len(
        extensions.METHODS)
  with open(os.path.join(out, 'loss_vs_length.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert '| yarn |' in extensions.format_table(results)


def test_bad_requests_are_refused(rope_run, tmp_path, cache_dir):
  with pytest.raises(config_lib.ConfigError, match='Unknown extension'):
    extensions.compare(rope_run, [16], str(tmp_path), methods=['yarnn'])
  from configs import base  # pylint: disable=g-import-not-at-top
  c = base.get_config('size=tiny')
  c.model.position = 'alibi'
  c.data.cache_dir = cache_dir
  c.train.steps = 2
  workdir = str(tmp_path / 'alibi')
  trainer.train(c, workdir, progress=False)
  with pytest.raises(config_lib.ConfigError, match="'alibi' model"):
    extensions.compare(workdir, [16], str(tmp_path / 'o'))


def test_scaling_on_another_encoding_is_refused():
  from configs import base  # pylint: disable=g-import-not-at-top
  c = base.get_config('size=tiny')
  c.model.position = 'alibi'
  c.model.rope.scaling = 'linear'
  c.model.rope.factor = 2.0
  with pytest.raises(config_lib.ConfigError,
                     match="rescales RoPE frequencies.*'alibi'"):
    config_lib.validate(c)


def test_the_methods_come_from_the_registries():
  assert extensions.METHODS[:len(rope_scaling.METHODS)] == rope_scaling.METHODS
  assert extensions.METHODS[len(rope_scaling.METHODS):] == (
      'rerope', 'leaky_rerope', 'rerope_logn', 'self_extend', 'lm_infinite',
      'dca', 'string')


@pytest.mark.parametrize('train_len,length,group', [
    # W = 8: (31 // 2) + 8 - 4 = 19 > 15; G = 3: 10 + 8 - 2 = 16 > 15;
    # G = 4: 7 + 8 - 2 = 13 <= 15.
    (16, 32, 4),
    # W = 32, n = 1024: G = 32: 31 + 32 - 1 = 62 <= 63; G = 31: 33 + 31 = 64.
    (64, 1024, 32),
    (64, 65, 2),
])
def test_self_extend_group_fits_the_training_length(train_len, length, group):
  w = train_len // 2
  assert far.self_extend_group(train_len, w, length) == group
  assert (length - 1) // group + w - w // group <= train_len - 1
  g = group - 1
  assert g == 0 or (length - 1) // g + w - w // g > train_len - 1


def test_the_command_line(rope_run, tmp_path):
  out = str(tmp_path / 'cli')
  proc = scripts.run('-m', 'lmx.evaluation.extensions', f'--workdir={rope_run}',
                     '--methods=none,yarn', '--lengths=16,32', f'--out={out}')
  assert '| yarn |' in proc.stdout and '| none |' in proc.stdout
  with open(os.path.join(out, 'results.json')) as f:
    assert json.load(f)['methods'] == ['none', 'yarn']
  proc = scripts.run('-m', 'lmx.evaluation.extensions', f'--workdir={rope_run}',
                     '--lengths=16,x', check=False)
  assert proc.returncode == 2 and '--lengths must be integers' in proc.stderr
  assert 'Traceback' not in proc.stderr
  proc = scripts.run('-m', 'lmx.evaluation.extensions', check=False)
  assert proc.returncode != 0 and '--workdir is required' in proc.stderr
