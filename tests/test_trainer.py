"""Training lowers the loss for every encoding; checkpoints restore exactly."""

import jax
import numpy as np
import pytest

from lmx.training import run_state
from lmx import positions
from lmx.training import checkpoint
from lmx.evaluation import runner as evaluation
from lmx.training import trainer
from lmx.data import corpus, windows


@pytest.fixture(scope='module')
def stream(cache_dir):
  import ml_collections
  cfg = ml_collections.ConfigDict(dict(source='stdlib', cache_dir=cache_dir,
                                       validation_fraction=0.05,
                                       text_key='text'))
  return corpus.token_stream(corpus.load_documents(cfg, 'train'))


# Every encoding with contiguous positions; CAPE's real-valued positions on
# the sinusoidal embeddings it augments; Shaw's value embeddings.
RUNS = [(p, 'contiguous', {}) for p in sorted(positions.REGISTRY)] + [
    ('sinusoidal', 'cape', {}),
    ('shaw', 'contiguous', {'model.shaw.value_embeddings': True})]


@pytest.mark.parametrize('position,sampling,fields', RUNS, ids=[
    '-'.join([p, s, *f]) for p, s, f in RUNS])
def test_a_few_steps_lower_the_loss(position, sampling, fields, tiny_config,
                                    stream):
  c = tiny_config(position, **{'train.steps': 30, 'train.warmup_steps': 3,
                               'train.batch_size': 8,
                               'train.learning_rate': 1e-2,
                               'positions.train': sampling, **fields})
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
                                seq_len=c.train.seq_len, sampling=sampling,
                                max_position=2048,
                                positions_cfg=c.positions)
    if sampling == 'cape':   # real positions reach the step
      assert batch['positions'].dtype == np.float32
      assert np.any(batch['positions'] % 1 != 0)
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


def _kerple_leaves(params):
  """{(block, name): array} of the KERPLE parameters in a params dict."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = [getattr(k, 'key', getattr(k, 'idx', k)) for k in path]
    if 'position' in keys:
      out[tuple(keys)] = np.asarray(leaf)
  return out


@pytest.mark.parametrize('kernel', ['power', 'log'])
def test_kerple_parameters_are_projected_after_every_update(kernel,
                                                            tiny_config,
                                                            stream):
  # As KERPLE's released code does: the stored parameters are clipped back
  # into the constraint set, so one pushed past a bound restarts from it.
  # A large learning rate swings them by about lr per step (Adam), so some
  # cross a bound.
  import jax.numpy as jnp
  import optax
  from lmx.model import transformer as model_lib
  eps = 0.01
  c = tiny_config('kerple', **{'model.kerple.kernel': kernel,
                               'train.warmup_steps': 0,
                               'train.learning_rate': 3.0,
                               'train.grad_clip': 1e9})
  tx = run_state.make_optimizer(c.train)
  graphdef, params = run_state.init_model(c)
  state = run_state.init_state(c, params, tx)
  step_fn = trainer.make_train_step(graphdef, tx, c)
  apply = run_state.apply_fn(graphdef)

  def loss(p, batch):
    logits = apply(p, batch['inputs'], batch['positions'])
    return model_lib.cross_entropy(logits, batch['targets']).mean()

  # The reference, from the trainer's own state at each step: plain AdamW
  # on the gradient at the stored (projected) values, then the clip.
  upper = 2.0 if kernel == 'power' else np.inf

  @jax.jit
  def reference(params, opt_state, batch):
    updates, _ = tx.update(jax.grad(loss)(params, batch), opt_state, params)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.clip(x, eps, upper if path[-1].key == 'shape'
                                 else np.inf)
        if 'position' in [getattr(k, 'key', None) for k in path] else x,
        optax.apply_updates(params, updates))

  on_bound = 0
  for step in range(6):
    batch = dict(windows.train_batch(stream, seed=0, step=step, batch=4,
                                     seq_len=c.train.seq_len,
                                     sampling='contiguous', max_position=2048))
    ref_params = reference(state['params'], state['opt_state'], batch)
    state, _ = step_fn(state, batch)
    got, want = _kerple_leaves(state['params']), _kerple_leaves(ref_params)
    assert set(got) == set(want) and got
    for key in got:
      np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-5)
      lo_ok = got[key] >= np.float32(eps)
      assert lo_ok.all(), (step, key, got[key])
      if key[-1] == 'shape':
        assert (got[key] <= upper).all()
      on_bound += int(np.sum(got[key] == np.float32(eps)))
  # Some parameter was pushed past eps and sits exactly on it.
  assert on_bound > 0


def test_headless_log_line_has_step_loss_lr_speed_and_times():
  from lmx.training import trainer  # pylint: disable=g-import-not-at-top
  m = {'loss': 1.23456, 'learning_rate': 0.00125, 'tokens_per_second': 17832.4}
  line = trainer.log_line(50, 1500, m, elapsed=3725.2, eta=59.6)
  # 3725 s = 1 h 2 min 5 s; 59.6 s rounds to one minute.
  assert line == ('step   50/1500 loss 1.2346 lr 0.00125 17,832 tok/s '
                  'elapsed 1:02:05 ETA 0:01:00')
  # With the model's FLOP rate, and the MFU where the peak is known.
  m['tflops_per_second'] = 0.0123456
  assert trainer.log_line(50, 1500, m, 3725.2, 59.6) == (
      'step   50/1500 loss 1.2346 lr 0.00125 17,832 tok/s 0.0123 TFLOP/s '
      'elapsed 1:02:05 ETA 0:01:00')
  m['mfu'] = 0.4567
  assert trainer.log_line(50, 1500, m, 3725.2, 59.6) == (
      'step   50/1500 loss 1.2346 lr 0.00125 17,832 tok/s 0.0123 TFLOP/s '
      'MFU 45.7% elapsed 1:02:05 ETA 0:01:00')


def test_cape_run_trains_on_real_positions_and_evaluates_on_integers(
    tiny_config, tmp_path):
  """configs/cape.py end to end: the trainer's batches carry CAPE's float32
  positions, and the evaluation of the run (positions.eval='train') uses
  contiguous integer positions, as the paper evaluates."""
  from configs import cape
  c = cape.get_config('size=tiny')
  c.data.cache_dir = tiny_config().data.cache_dir
  c.train.steps = 2
  c.eval.lengths = (16, 32)
  c.eval.sliding = False
  c.eval.diagnostics_windows = 0
  batch = trainer.make_batch_fn(c)(0)
  assert batch['positions'].dtype == np.float32
  assert np.any(batch['positions'] % 1 != 0)
  workdir = str(tmp_path / 'cape')
  trainer.train(c, workdir, progress=False)
  results = evaluation.evaluate(c, workdir, plots=False, progress=False)
  assert results['train_sampling'] == 'cape'
  assert results['eval_sampling'] == 'contiguous'
  losses = [r['loss'] for r in results['results']]
  assert len(losses) == 2 and all(np.isfinite(losses))
