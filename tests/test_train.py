"""Training lowers the loss for every encoding; checkpoints restore exactly."""

import jax
import numpy as np
import pytest

from lmx import run_state
from lmx import checkpoint, evaluation, positions, trainer
from lmx.data import corpus, windows


@pytest.fixture(scope='module')
def stream(cache_dir):
  import ml_collections
  cfg = ml_collections.ConfigDict(dict(source='stdlib', cache_dir=cache_dir,
                                       validation_fraction=0.05,
                                       text_key='text'))
  return corpus.token_stream(corpus.load_documents(cfg, 'train'))


@pytest.mark.parametrize('position', sorted(positions.REGISTRY))
def test_a_few_steps_lower_the_loss(position, tiny_config, stream):
  c = tiny_config(position, **{'train.steps': 30, 'train.warmup_steps': 3,
                               'train.batch_size': 8,
                               'train.learning_rate': 1e-2})
  tx = run_state.make_optimizer(c.train)
  graphdef, params = run_state.init_model(c)
  state = run_state.init_state(c, params, tx)
  step_fn = trainer.make_train_step(graphdef, tx, c)
  held_out = windows.train_batch(stream, seed=99, step=0, batch=32,
                                 seq_len=c.train.seq_len,
                                 sampling='contiguous', max_position=2048)
  loss_fn = evaluation.make_loss_fn(graphdef)

  def held_out_loss(p):
    return float(np.mean(loss_fn(p, held_out['inputs'], held_out['positions'],
                                 held_out['targets'])))

  before = held_out_loss(state['params'])
  for step in range(c.train.steps):
    batch = windows.train_batch(stream, seed=0, step=step, batch=8,
                                seq_len=c.train.seq_len, sampling='contiguous',
                                max_position=2048)
    state, m = step_fn(state, dict(batch))
    assert np.isfinite(float(m['loss']))
  after = held_out_loss(state['params'])
  assert int(state['step']) == c.train.steps
  # Untrained: about ln(257) = 5.55 nats. 30 steps learn byte frequencies.
  assert before > 5.0
  assert after < before - 1.0, (before, after)


def test_checkpoint_round_trip_gives_identical_logits(tiny_config, tmp_path):
  c = tiny_config('t5')
  tx = run_state.make_optimizer(c.train)
  graphdef, params = run_state.init_model(c)
  # Perturb so that restoring the init would not pass by accident.
  params = jax.tree.map(lambda p: p + 0.01 * np.arange(p.size).reshape(
      p.shape).astype(p.dtype) / max(p.size, 1), params)
  state = run_state.init_state(c, params, tx)
  workdir = str(tmp_path / 'run')
  saver = checkpoint.Saver(workdir, keep=1)
  saver.save(5, state, {'nonfinite_skips': 0})
  saver.close()
  assert checkpoint.verify(workdir, 5) is None  # sealed with checksums
  checkpoint.write_config(workdir, c)

  restored_cfg = checkpoint.read_config(workdir)
  g2, p2, step = run_state.load_params(restored_cfg, workdir)
  assert step == 0 and checkpoint.latest_step(workdir) == 5
  tokens = np.random.default_rng(0).integers(0, 257, (2, 16)).astype(np.int32)
  pos = np.broadcast_to(np.arange(16, dtype=np.int32), (2, 16))
  a = run_state.apply_fn(graphdef)(params, tokens, pos)
  b = run_state.apply_fn(g2)(p2, tokens, pos)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match='Train first'):
    checkpoint.require_checkpoint(str(tmp_path))
