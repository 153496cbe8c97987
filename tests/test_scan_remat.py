"""Layers under a scan and rematerialisation: compute choices that leave the
values, the gradients and the checkpoint layout as they are."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmx.config import validate as config_lib
from lmx.model import ops
from lmx.training import run_state
from lmx.errors import ConfigError
import attention_calls as AC
from helpers import FAST_COMPILE


def _batch(t=37, b=2, seed=0):
  rng = np.random.default_rng(seed)
  tokens = jnp.asarray(rng.integers(0, 257, (b, t)), jnp.int32)
  # Shifted positions: the encodings see positions that are not indices.
  positions = jnp.broadcast_to(jnp.arange(t) + 5, (b, t))
  return tokens, positions


def _loss(config, tokens, positions):
  graphdef, _ = run_state.abstract_model(config)
  apply = run_state.apply_fn(graphdef)

  def loss(params):
    logits = apply(params, tokens, positions)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits
  return loss


def _variant(config, **model):
  c = config.copy_and_resolve_references()
  c.model.update(model)
  return c


# A shared encoding (alibi: no parameters; kerple: shared parameters read by
# every layer), a per-layer one (fire), and alike layers of
# config.model.layers (one sliding window, SSMax's s in every layer).
@pytest.mark.parametrize('position', ['alibi', 'kerple', 'fire',
                                      'alibi_window_ssmax'])
def test_scan_and_remat_give_the_unrolled_values_and_gradients(
    tiny_config, position):
  extra = {}
  if position == 'alibi_window_ssmax':
    position, extra = 'alibi', {'model.layers.window': (5,),
                                'model.length_scaling.kind': 'ssmax',
                                'model.length_scaling.base_len': 8}
  config = tiny_config(position, **{'model.num_layers': 3}, **extra)
  _, params = run_state.init_model(config)
  tokens, positions = _batch()
  (ref, ref_logits), ref_grads = jax.jit(jax.value_and_grad(
      _loss(config, tokens, positions), has_aux=True),
      compiler_options=FAST_COMPILE)(params)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(ref_grads))
  for scan, remat in [(True, 'off'), (False, 'full'), (True, 'dots'),
                      (True, 'full')]:
    c = _variant(config, scan_layers=scan, remat=remat)
    (value, logits), grads = jax.jit(jax.value_and_grad(
        _loss(c, tokens, positions), has_aux=True),
        compiler_options=FAST_COMPILE)(params)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(value, ref, atol=1e-6)
    assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
      np.testing.assert_allclose(g, r, atol=1e-5 * scale + 1e-7, rtol=1e-4)


def test_remat_is_in_the_backward_pass_only_when_asked(tiny_config):
  config = tiny_config('rope', **{'model.num_layers': 2})
  _, params = run_state.init_model(config)
  tokens, positions = _batch(t=16)
  for remat, policy in [('off', None), ('full', 'nothing_saveable'),
                        ('dots', 'DotsSaveable(only_if_no_batch_dims=True)')]:
    for scan in (False, True):
      c = _variant(config, remat=remat, scan_layers=scan)
      grad = jax.grad(lambda p, c=c: _loss(c, tokens, positions)(p)[0])
      text = str(jax.make_jaxpr(grad)(params))
      assert ('remat' in text) == (policy is not None), (remat, scan)
      if policy:
        assert policy in text
      assert ('scan[' in text) == scan


def test_scanned_layers_trace_once_whatever_the_depth(tiny_config):
  """The property that keeps compile time flat in depth: the lowered
  forward pass has as many products at 6 layers as at 2 under the scan,
  and three times as many unrolled."""
  tokens, positions = _batch(t=16)

  def products(layers, scan):
    c = tiny_config('rope', **{'model.num_layers': layers,
                               'model.scan_layers': scan})
    graphdef, params = run_state.abstract_model(c)
    apply = run_state.apply_fn(graphdef)
    with ops.on_platform('tpu'):  # the plain products, as an accelerator
      text = jax.jit(apply).lower(params, tokens, positions).as_text()
    return text.count('dot_general')

  assert products(6, True) == products(2, True)
  unrolled_2, unrolled_6 = products(2, False), products(6, False)
  assert unrolled_6 > 2.5 * unrolled_2 - 4  # the head's product is shared
  assert products(6, True) < unrolled_6


def test_a_run_switches_freely_between_the_layouts(tiny_config):
  """One parameter layout: the parameters of an unrolled model are the
  parameters of a scanned one (blocks/<i>/...), so old checkpoints load."""
  config = tiny_config('t5')
  _, unrolled = run_state.abstract_model(config)
  _, scanned = run_state.abstract_model(_variant(config, scan_layers=True,
                                                 remat='full'))
  assert jax.tree.structure(unrolled) == jax.tree.structure(scanned)
  assert '0' in unrolled['blocks'] or 0 in unrolled['blocks']


def test_a_bad_remat_value_gets_one_message(tiny_config):
  with pytest.raises(ConfigError, match="model.remat.*'off', 'full', 'dots'"):
    config_lib.validate(tiny_config('rope', **{'model.remat': 'some'}))


def test_auto_attention_never_goes_dense_at_2048_keys_on_an_accelerator():
  def chosen(platform, keys):
    with ops.on_platform(platform):
      return AC.chosen(
          'auto', num_keys=keys, q_dtype=jnp.bfloat16, head_dim=64,
          far=False, threshold=2048, accelerator_threshold=512)
  assert chosen('cpu', 2048) == 'dense'
  assert chosen('cpu', 2049) == 'chunked'
  assert chosen('tpu', 512) == 'dense'
  assert chosen('tpu', 2048) == 'chunked'
  # On a "GPU" traced from this host cudnn is refused only by the dtype or
  # shape, so float32 shows the fallback.
  with ops.on_platform('gpu'):
    assert AC.chosen(
        'auto', num_keys=2048, q_dtype=jnp.float32, head_dim=64, far=False,
        threshold=2048, accelerator_threshold=512) == 'chunked'


def test_chunked_loss_gives_the_per_token_losses_and_gradients(tiny_config):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from lmx.model import transformer as model_lib  # pylint: disable=g-import-not-at-top
  config = tiny_config('alibi')
  graphdef, params = run_state.init_model(config)
  tokens, positions = _batch(t=37)
  targets = jnp.roll(tokens, -1, axis=1)

  def losses(p, chunk):
    return model_lib.token_losses(nnx.merge(graphdef, p), tokens, positions,
                                  targets, chunk=chunk)

  ref = losses(params, 0)
  ref_grads = jax.grad(lambda p: losses(p, 0).mean())(params)
  for chunk in (8, 37, 64):  # a ragged last chunk, one chunk, more than T
    np.testing.assert_allclose(losses(params, chunk), ref, atol=1e-5)
    grads = jax.grad(lambda p, c=chunk: losses(p, c).mean())(params)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
      np.testing.assert_allclose(g, r, atol=1e-6, rtol=1e-4)
  # Under the chunks no [B, T, V] array is built: the largest logits-shaped
  # value in the backward pass is [B, chunk, V].
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: losses(p, 8).mean()))(params))
  assert 'f32[2,37,257]' not in jaxpr and 'f32[2,8,257]' in jaxpr


@pytest.mark.parametrize('weights', [False, True])
def test_microbatches_give_the_whole_batch_update(tiny_config, weights):
  """Gradient accumulation over 4 slices of rows: the loss, the gradient
  norm and the updated parameters of one step at once, also with per-token
  weights that differ between the slices (the total weight divides)."""
  from lmx.training import trainer  # pylint: disable=g-import-not-at-top
  config = tiny_config('kerple', **{'train.batch_size': 8})
  _, params = run_state.init_model(config)
  rng = np.random.default_rng(1)
  tokens = jnp.asarray(rng.integers(0, 257, (8, 16)), jnp.int32)
  batch = {'inputs': tokens, 'targets': jnp.roll(tokens, -1, 1),
           'positions': jnp.broadcast_to(jnp.arange(16), (8, 16))}
  if weights:
    batch['weights'] = jnp.asarray(rng.random((8, 16)) < 0.3, jnp.float32)
  out = {}
  for micro in (1, 4):
    c = config.copy_and_resolve_references()
    c.train.microbatches = micro
    tx = run_state.make_optimizer(c.train)
    graphdef, _ = run_state.abstract_model(c)
    step = trainer.make_train_step(graphdef, tx, c)
    state = run_state.init_state(c, jax.tree.map(jnp.copy, params), tx)
    state = {**state, 'step': jnp.asarray(5, jnp.int32)}  # past warm-up
    out[micro] = step(state, batch)
  (s1, m1), (s4, m4) = out[1], out[4]
  np.testing.assert_allclose(m4['loss'], m1['loss'], rtol=1e-6)
  np.testing.assert_allclose(m4['grad_norm'], m1['grad_norm'], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s4['params']), jax.tree.leaves(s1['params'])):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_microbatches_must_divide_the_batch(tiny_config):
  with pytest.raises(ConfigError, match='microbatches=3 does not divide'):
    config_lib.validate(tiny_config('rope', **{'train.batch_size': 4,
                                               'train.microbatches': 3}))
