"""Fine-tuning from another run's parameters (config.init_from)."""

import jax
import numpy as np
import pytest

from lmx.training import run_state
from lmx.training import checkpoint
from lmx.training import trainer
from lmx.config import validate as config_lib
from lmx.positions.learned import Learned


def test_learned_table_resize_is_linear_interpolation():
  table = np.arange(8, dtype=np.float32).reshape(4, 2)  # rows 0..3
  out = Learned.resize('table', table, (7, 2))
  # New row r reads the old table at r * 3 / 6 = r / 2.
  expected = np.stack([np.arange(7) / 2 * 2, np.arange(7) / 2 * 2 + 1], 1)
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  np.testing.assert_array_equal(out[0], table[0])
  np.testing.assert_array_equal(out[-1], table[-1])
  assert Learned.resize('table', table, (7, 3)) is None
  assert Learned.resize('other', table, (7, 2)) is None


@pytest.fixture(scope='module')
def source(tmp_path_factory, cache_dir, tiny_rope_run):
  """A rope run (the session's, 4 steps) and a 3-step learned run (table of
  32)."""
  from configs import base  # pylint: disable=g-import-not-at-top
  c = base.get_config('size=tiny')
  c.model.position = 'learned'
  c.model.learned.max_len = 32
  c.data.cache_dir = cache_dir
  c.train.steps = 3
  workdir = str(tmp_path_factory.mktemp('src') / 'learned')
  trainer.train(c, workdir, progress=False)
  return {'rope': tiny_rope_run[0], 'learned': workdir}


def _source_params(workdir):
  cfg = checkpoint.read_config(workdir)
  _, target = run_state.abstract_state(cfg)
  return checkpoint.load(workdir, checkpoint.latest_step(workdir),
                         target)['params']


def test_fine_tuning_starts_from_the_parameters_with_a_fresh_optimizer(
    source, tiny_config, tmp_path):
  c = tiny_config('rope', **{'init_from': source['rope'],
                             'train.seq_len': 32, 'train.steps': 2,
                             'train.checkpoint_every': 1})
  _, target = run_state.abstract_state(c)
  params = trainer.params_from_run(c, target['params'])
  same = jax.tree.map(np.array_equal, params, _source_params(source['rope']))
  assert all(jax.tree.leaves(same))

  workdir = str(tmp_path / 'ft')
  trainer.train(c, workdir, progress=False)
  state, _ = checkpoint.restore_step(workdir, 1, target)
  assert int(state['step']) == 1
  # Adam's step count restarted: one update since the source, not four.
  counts = [int(x) for x in jax.tree.leaves(state['opt_state'])
            if np.ndim(x) == 0]
  assert counts and set(counts) == {1}


def test_a_run_with_its_own_checkpoints_resumes_instead(source, tiny_config,
                                                        tmp_path, capsys):
  workdir = str(tmp_path / 'ft')
  c = tiny_config('rope', **{'init_from': source['rope'], 'train.steps': 2})
  trainer.train(c, workdir, progress=False)
  c.train.steps = 3
  capsys.readouterr()
  trainer.train(c, workdir, progress=False)
  out = capsys.readouterr().out
  assert 'Resuming from the checkpoint at step 2' in out
  assert 'Initialised from' not in out


def test_a_different_model_is_refused_naming_the_parameters(source,
                                                            tiny_config):
  c = tiny_config('rope', **{'init_from': source['rope'],
                             'model.num_layers': 3})
  _, target = run_state.abstract_state(c)
  with pytest.raises(config_lib.ConfigError,
                     match=r'missing there: blocks/2/.*init_from=\'\''):
    trainer.params_from_run(c, target['params'])


def test_a_longer_learned_table_needs_interpolation(source, tiny_config):
  c = tiny_config('learned', **{'init_from': source['learned'],
                                'model.learned.max_len': 64,
                                'train.seq_len': 64})
  _, target = run_state.abstract_state(c)
  with pytest.raises(config_lib.ConfigError,
                     match=r'table has shape \(32, 32\).*\(64, 32\) here.*'
                           'init_interpolate=True'):
    trainer.params_from_run(c, target['params'])
  c.init_interpolate = True
  params = trainer.params_from_run(c, target['params'])
  old = np.asarray(_source_params(source['learned'])
                   ['blocks'][0]['attn']['position']['table'])
  new = np.asarray(params['blocks'][0]['attn']['position']['table'])
  assert new.shape == (64, 32)
  np.testing.assert_allclose(new, Learned.resize('table', old, (64, 32)))
  np.testing.assert_array_equal(new[0], old[0])


def test_a_missing_source_is_a_clear_error(tiny_config, tmp_path):
  c = tiny_config('rope', init_from=str(tmp_path / 'nowhere'))
  with pytest.raises(checkpoint.CheckpointError,
                     match='config.init_from=.*must name the --workdir'):
    trainer.params_from_run(c, run_state.abstract_state(c)[1]['params'])


def test_pose_fine_tuning_from_a_run(source, tiny_config, tmp_path):
  # PoSE extends a rope run to a target length of 4x its own with YaRN at
  # that scale, training on windows of the original length whose positions
  # skip ahead (lmx/positions/sampling.py).
  from lmx.data import windows  # pylint: disable=g-import-not-at-top
  c = tiny_config('rope', **{
      'init_from': source['rope'], 'train.steps': 2,
      'positions.train': 'pose', 'positions.max_position': 64,
      'model.rope.scaling': 'yarn', 'model.rope.factor': 4.0,
      'model.rope.original_max_len': 16})
  batch = windows.train_batch(np.arange(5000, dtype=np.int32), seed=0,
                              step=0, batch=64, seq_len=16, sampling='pose',
                              max_position=64)
  assert batch['positions'].max() > 15 and batch['positions'].max() < 64
  workdir = str(tmp_path / 'pose')
  trainer.train(c, workdir, progress=False)
  assert checkpoint.latest_step(workdir) == 2
  saved = checkpoint.read_config(workdir)
  assert saved.positions.train == 'pose' and saved.init_from == source['rope']
