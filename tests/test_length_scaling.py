"""SSMax (Scalable-Softmax, Nakanishi 2025): config.model.length_scaling.kind
='ssmax'. The scale by hand, which terms it scales, that s is learned, the
backends and decoding against each other, old saved configs, bad input."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import base
from lmx.positions import length_scaling as LS
from lmx.model import attention as A
from lmx.config import validate as config_lib
from lmx.config import defaults
from lmx.model import layer_plan
from lmx.model import transformer as model_lib
from lmx.errors import ConfigError
from helpers import FAST_COMPILE, tiny_model_config

V = 257


def _config(position='rope', num_layers=1, **fields):
  return tiny_model_config(**{
      'position': position, 'num_layers': num_layers,
      'length_scaling.kind': 'ssmax', 'length_scaling.base_len': 8, **fields})


def _tokens(b, t, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, V, (b, t)),
                     jnp.int32)


def test_visible_count_is_the_number_of_visible_keys():
  for mask in (A.Mask(), A.Mask(0, 1), A.Mask(0, 4), A.Mask(3, 4),
               A.Mask(6, 2)):
    vis = np.asarray(mask(jnp.arange(20), jnp.arange(20)))
    np.testing.assert_array_equal(mask.visible_count(jnp.arange(20)),
                                  vis.sum(axis=1), err_msg=str(mask))


def test_the_scale_by_hand():
  s = jnp.array([0.5, 2.0])
  got = LS.ssmax_logit_scale(s, jnp.array([0, 1, 4, 9]), A.Mask())
  n = np.array([1, 2, 5, 10])
  np.testing.assert_allclose(got, np.outer([0.5, 2.0], np.log(n)), rtol=1e-6)
  # A window of 3 stops n at 3; the Lambda mask (2 global, 3 local) at 5.
  got = LS.ssmax_logit_scale(s, jnp.array([0, 1, 4, 9]), A.Mask(0, 3))
  np.testing.assert_allclose(got[0], 0.5 * np.log([1, 2, 3, 3]), rtol=1e-6)
  got = LS.ssmax_logit_scale(s, jnp.array([4, 9]), A.Mask(2, 3))
  np.testing.assert_allclose(got[1], 2.0 * np.log([5, 5]), rtol=1e-6)


def test_initial_s_averages_the_scale_to_one_over_the_training_length():
  # mean(log n), n = 1 .. L, is log(L!) / L = lgamma(L + 1) / L.
  for length in (8, 64, 1024):
    want = length / math.lgamma(length + 1)
    assert abs(LS.ssmax_init(length) - want) < 1e-9
  m = model_lib.build(_config().model, 0)
  np.testing.assert_allclose(m.blocks[0].attn.ssmax[...],
                             [LS.ssmax_init(8)] * 2, rtol=1e-6)
  m = model_lib.build(_config(length_scaling__ssmax_init=0.3).model, 0)
  np.testing.assert_allclose(m.blocks[0].attn.ssmax[...], [0.3, 0.3])


@pytest.mark.parametrize('position', ['rope', 'alibi', 'txl'])
def test_ssmax_scales_the_whole_score_bias_included(position):
  """The masked logits of an SSMax layer are those of the same layer
  without it (same parameters) times s_h log(i + 1) for query i: q.k,
  ALiBi's bias and Transformer-XL's content term alike, the scores of the
  paper's definition."""
  t = 9
  tokens = _tokens(1, t)
  pos = jnp.arange(t)[None] + 2
  s = jnp.array([0.7, -0.4])

  def logits(kind):
    c = _config(position, length_scaling__kind=kind)
    m = model_lib.build(c.model, 0)
    if kind == 'ssmax':
      m.blocks[0].attn.ssmax[...] = s
    probe = model_lib.Probe(logits=True)
    m(tokens, pos, probe=probe)
    return np.asarray(probe.logits[0])

  plain, scaled = logits('off'), logits('ssmax')
  vis = np.tril(np.ones((t, t), bool))
  factor = np.asarray(s)[:, None, None] * np.log(np.arange(1, t + 1))[
      None, :, None]
  np.testing.assert_allclose(np.where(vis, scaled[0], 0),
                             np.where(vis, plain[0] * factor, 0),
                             atol=1e-5, rtol=1e-5)
  assert np.all(scaled[0][:, ~vis] == A.NEG_INF)   # the mask is kept


def test_s_is_learned_in_every_layer_and_head():
  c = _config('alibi', num_layers=2)
  m = model_lib.build(c.model, 0)
  graphdef, params, rest = nnx.split(m, nnx.Param, ...)
  tokens = _tokens(2, 12)
  pos = jnp.broadcast_to(jnp.arange(12), (2, 12))

  def loss(p):
    logits = nnx.merge(graphdef, p, rest)(tokens[:, :-1], pos[:, :-1])
    return model_lib.cross_entropy(logits, tokens[:, 1:]).mean()

  grads = jax.jit(jax.grad(loss), compiler_options=FAST_COMPILE)(params)
  for i in range(2):
    g = np.asarray(grads['blocks'][i]['attn']['ssmax'])
    assert g.shape == (2,) and np.all(np.abs(g) > 1e-6), (i, g)


@pytest.mark.parametrize('position', ['rope', 'alibi'])
def test_dense_equals_chunked_equals_decoding(position):
  t = 21
  cfgs = {be: _config(position, num_layers=2, attention=be, attention_block=4)
          for be in ('dense', 'chunked')}
  for c in cfgs.values():
    config_lib.validate(c)
  models = {be: model_lib.build(c.model, 0) for be, c in cfgs.items()}
  tokens = _tokens(2, t)
  gaps = jnp.asarray(np.sort(np.random.default_rng(2).choice(
      70, (2, t), replace=False), axis=1))

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def both(x, p):
    return {be: m(x, p) for be, m in models.items()}

  out = both(tokens, gaps)
  np.testing.assert_allclose(out['chunked'], out['dense'], atol=2e-5, rtol=0)
  m = models['dense']
  one = tokens[:1]
  pos = jnp.arange(t)[None]
  cache = m.init_cache(1, t)
  logits, cache = m.decode(one[:, :5], pos[:, :5], cache, prefill=True)
  got = [logits]
  for i in range(5, t):
    logits, cache = m.decode(one[:, i:i + 1], pos[:, i:i + 1], cache)
    got.append(logits)
  np.testing.assert_allclose(jnp.concatenate(got, axis=1), m(one, pos),
                             atol=2e-5, rtol=0)


def test_old_saved_configs_keep_their_meaning():
  """A config.json written before config.model.layers and the SSMax and
  Llama 4 settings existed is completed with every layer as the model and
  the length scaling it had: the same model, no SSMax parameter."""
  saved = base.get_config('size=tiny').to_dict()
  del saved['model']['layers']
  saved['model']['length_scaling'] = {'kind': 'logn', 'base_len': 16}
  done = defaults.complete(saved)
  # Every per-layer field empty; the depth record 0 (written for any depth).
  assert done['model']['layers'] == {**{f: () for f in layer_plan.FIELDS},
                                     layer_plan.DEPTH: 0}
  assert done['model']['length_scaling']['kind'] == 'logn'
  cfg = base.get_config('size=tiny')
  cfg.update_from_flattened_dict(defaults.flatten(done))
  config_lib.validate(cfg)
  assert layer_plan.plan(cfg.model) == [
      layer_plan.LayerSpec('rope', 0, 'logn')] * cfg.model.num_layers
  m = model_lib.build(cfg.model, 0)
  assert not any(hasattr(b.attn, 'ssmax') for b in m.blocks)
  assert all(b.attn.spec.scaling == LS.LogN(16) for b in m.blocks)
  # One written before layers.chunk and layers.qk_norm keeps its windows
  # and gets neither.
  saved = base.get_config('size=tiny').to_dict()
  saved['model']['layers'] = {'position': ['rope', 'none'], 'window': [4, 0],
                              'length_scaling': []}
  done = defaults.as_tuples(defaults.complete(saved))
  cfg = base.get_config('size=tiny')
  cfg.update_from_flattened_dict(defaults.flatten(done))
  config_lib.validate(cfg)
  assert layer_plan.plan(cfg.model) == [
      layer_plan.LayerSpec('rope', 4, 'off'),
      layer_plan.LayerSpec('none', 0, 'off')]


BAD = {
    'ssmax without base_len': (
        dict(length_scaling__base_len=0),
        ['config.model.length_scaling.kind', "'ssmax'",
         'config.model.length_scaling.base_len']),
    'negative init': (
        dict(length_scaling__ssmax_init=-0.5),
        ['config.model.length_scaling.ssmax_init']),
    'llama4 floor scale 0': (
        dict(length_scaling__kind='llama4', length_scaling__floor_scale=0.0),
        ['config.model.length_scaling.floor_scale']),
    'llama4 negative attn scale': (
        dict(length_scaling__kind='llama4', length_scaling__attn_scale=-1.0),
        ['config.model.length_scaling.attn_scale']),
    'flash with a bias': (
        dict(position='alibi', attention='flash'),
        ["'flash'", 'SSMax', "'alibi'"]),
}


@pytest.mark.parametrize('case', sorted(BAD))
def test_bad_ssmax_settings_are_refused(case):
  fields, words = BAD[case]
  fields = dict(fields)
  c = _config(fields.pop('position', 'rope'), **fields)
  if case == 'flash with a bias' and jax.default_backend() == 'gpu':
    pytest.skip('flash is refused on a GPU for another reason')
  with pytest.raises(ConfigError) as err:
    config_lib.validate(c)
  for word in words:
    assert word in str(err.value), (case, str(err.value))
