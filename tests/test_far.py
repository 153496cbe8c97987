"""Attention sinks (config.model.sinks; lmx.model.attention.sink_prefix): the
softmax with a sink logit and memory slots by hand, the chunked backend and
KV-cache decoding against the dense forward pass (under the Lambda-shaped
mask, whose far queries still see the sinks), gradients reaching the sink
parameters, and the refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import decode_steps
from lmx.positions import far
from lmx.model import attention as A
from lmx.config import validate as config_lib
from lmx.model import transformer as model_lib
from lmx.errors import ConfigError
from helpers import tiny_model_config

LAMBDA = {'lm_infinite.n_global': 2, 'lm_infinite.n_local': 5}


def _cfg(position='rope', **overrides):
  c = tiny_model_config(**{
      'position': position, 'num_layers': 2, 'attention_block': 8,
      'sinks.logit': True, 'sinks.memory': 3, **overrides})
  config_lib.validate(c)
  return c


def _perturbed(model):
  """The model with non-zero sink logits (they start at 0)."""
  for block in model.blocks:
    block.attn.sink_logit[...] = jnp.array([0.7, -1.3])
  return model


def test_sink_logit_and_memory_by_hand():
  # One head, one query; keys with logits 0 and ln 2 and values 1 and 3.
  # Memory slot: key with q.k / sqrt(K) = ln 3 (K = 1: q = 1, k = ln 3),
  # value 5. Sink logit 0, value 0. Weights 1 : 2 : 3 : 1 over 7.
  logits = jnp.array([0.0, np.log(2.0)]).reshape(1, 1, 1, 2)
  v = jnp.array([1.0, 3.0]).reshape(1, 2, 1, 1)
  q = jnp.ones((1, 1, 1, 1))
  prefix = far.sink_prefix(q, jnp.zeros(1), jnp.full((1, 1, 1), np.log(3.0)),
                         jnp.full((1, 1, 1), 5.0))
  got = float(A.attend(logits, v, prefix)[0, 0, 0, 0])
  assert got == pytest.approx((1 * 1 + 2 * 3 + 3 * 5 + 1 * 0) / 7, rel=1e-6)
  # Without sinks: the plain softmax, (1 + 2 * 3) / 3.
  assert float(A.attend(logits, v)[0, 0, 0, 0]) == pytest.approx(7 / 3)


def _loss_and_grads(model, tokens, pos):
  graphdef, state = nnx.split(model)

  def loss(state):
    return jnp.mean(nnx.merge(graphdef, state)(tokens, pos) ** 2)

  return jax.jit(jax.value_and_grad(loss))(state)


@pytest.mark.parametrize('position,variant', [('rope', {}), ('alibi', LAMBDA)])
def test_chunked_equals_dense_and_the_sinks_learn(position, variant):
  t = 37
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 257, (2, t)),
                       jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (2, t))
  results = [_loss_and_grads(_perturbed(model_lib.build(
      _cfg(position, attention=backend, **variant).model, 0)), tokens, pos)
             for backend in ('dense', 'chunked')]
  (l1, g1), (l2, g2) = results
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(g1),
                               jax.tree_util.tree_leaves_with_path(g2)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4, err_msg=str(path))
  attn = g1['blocks'][0]['attn']
  for name in ('sink_logit', 'mem_k', 'mem_v'):
    assert float(jnp.abs(attn[name][...]).max()) > 1e-6, name


def test_sinks_change_the_output():
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 257, (1, 12)),
                       jnp.int32)
  pos = jnp.arange(12, dtype=jnp.int32)[None]
  with_sinks = model_lib.build(_cfg().model, 0)
  plain = model_lib.build(_cfg(**{'sinks.logit': False,
                                  'sinks.memory': 0}).model, 0)
  # The same weights elsewhere (the sink parameters are drawn last).
  graph, state = nnx.split(plain)
  del graph
  assert float(jnp.abs(with_sinks(tokens, pos) - plain(tokens, pos)).max()
               ) > 1e-3
  assert 'mem_k' not in state['blocks'][0]['attn']


@pytest.mark.parametrize('variant', [{}, LAMBDA])
def test_decoding_equals_the_forward_pass(variant):
  model = _perturbed(model_lib.build(_cfg(**variant).model, 0))
  t, n_prompt = 13, 4
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, 257, (1, t)),
                       jnp.int32)
  pos = jnp.arange(t, dtype=jnp.int32)[None]
  got, _ = decode_steps(model, tokens, n_prompt)
  np.testing.assert_allclose(got, model(tokens, pos), atol=1e-5, rtol=0)


@pytest.mark.parametrize('overrides,words', [
    ({'sinks.memory': -1}, 'config.model.sinks.memory'),
    ({'sinks.memory': 5000}, 'config.model.sinks.memory'),
    ({'attention': 'flash'}, 'config.model.sinks'),
])
def test_bad_sink_settings_are_refused(overrides, words):
  with pytest.raises(ConfigError, match=words.replace('.', r'\.')):
    _cfg(**overrides)
