"""Gated attention (config.model.attention_gate; lmx/model/gating.py): the
gate against a naive recomputation, off equal to the model without the
field, decoding equal to the forward pass, the parameter count, bad
config."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmx import flops
from lmx import memory
from lmx.config import validate as config_lib
from lmx.errors import ConfigError
from lmx.model import gating
from lmx.model import transformer as model_lib
from helpers import decode_steps, tiny_model_config

V = 257


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _tokens(b, t, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, V, (b, t)),
                     jnp.int32)


def test_gate_function_by_hand():
  rng = np.random.default_rng(0)
  y = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  elem = rng.normal(size=(2, 3, 20)).astype(np.float32)
  got = np.asarray(gating.gate(jnp.asarray(y), jnp.asarray(elem)))
  np.testing.assert_allclose(got, y * _sigmoid(elem.reshape(2, 3, 4, 5)),
                             rtol=1e-6)
  head = rng.normal(size=(2, 3, 4)).astype(np.float32)
  got = np.asarray(gating.gate(jnp.asarray(y), jnp.asarray(head)))
  np.testing.assert_allclose(got, y * _sigmoid(head)[..., None], rtol=1e-6)
  # sigmoid(0) = 1/2.
  np.testing.assert_allclose(gating.gate(jnp.ones((1, 1, 2, 2)),
                                         jnp.zeros((1, 1, 2))), 0.5)


@pytest.mark.parametrize('kind', ['elementwise', 'headwise'])
def test_layer_output_against_a_naive_recomputation(kind):
  """With the output projection the identity, the layer's output is the
  heads' output; the gated layer's is that times sigmoid(x W)."""
  c_off = tiny_model_config(position='alibi', num_layers=1)
  c_on = tiny_model_config(position='alibi', num_layers=1,
                           attention_gate=kind)
  off = model_lib.build(c_off.model, 0).blocks[0].attn
  on = model_lib.build(c_on.model, 0).blocks[0].attn
  d = c_on.model.d_model
  for attn in (off, on):
    attn.qkv.kernel[...] = off.qkv.kernel[...]
    attn.out.kernel[...] = jnp.eye(d)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 9, d)),
                  jnp.float32)
  pos = jnp.broadcast_to(jnp.arange(9), (2, 9))
  y = np.asarray(off(x, pos)).reshape(2, 9, on.num_heads, on.head_dim)
  w = np.asarray(on.out_gate.kernel[...])
  assert w.shape == (d, gating.gate_width(kind, on.num_heads, on.head_dim))
  g = _sigmoid(np.asarray(x) @ w).reshape(2, 9, on.num_heads, -1)
  np.testing.assert_allclose(np.asarray(on(x, pos)),
                             (y * g).reshape(2, 9, d), rtol=1e-5, atol=1e-6)


def test_off_is_the_model_without_the_field():
  c = tiny_model_config(position='rope')
  assert c.model.attention_gate == 'off'
  before = model_lib.build(c.model, 0)
  del c.model['attention_gate']
  after = model_lib.build(c.model, 0)
  tokens = _tokens(2, 10)
  pos = jnp.broadcast_to(jnp.arange(10), (2, 10))
  np.testing.assert_array_equal(before(tokens, pos), after(tokens, pos))
  assert 'out_gate' not in nnx.state(before, nnx.Param).to_pure_dict()[
      'blocks'][0]['attn']


@pytest.mark.parametrize('kind', ['elementwise', 'headwise'])
def test_decoding_equals_forward(kind):
  c = tiny_model_config(position='kerple', attention_gate=kind)
  config_lib.validate(c)
  m = model_lib.build(c.model, 0)
  tokens = _tokens(1, 10)
  full = m(tokens, jnp.arange(10)[None])
  decoded, _ = decode_steps(m, tokens, 4)
  np.testing.assert_allclose(decoded, full, rtol=1e-4, atol=1e-4)


def test_parameter_count():
  base = tiny_model_config(position='rope')
  m = base.model
  d, h, layers = m.d_model, m.num_heads, m.num_layers
  n0, f0 = memory.param_count(base), flops.matmul_params(m)
  for kind, width in (('elementwise', d), ('headwise', h)):
    c = tiny_model_config(position='rope', attention_gate=kind)
    assert memory.param_count(c) - n0 == layers * d * width, kind
    assert flops.matmul_params(c.model) - f0 == layers * d * width, kind


def test_bad_config():
  with pytest.raises(ConfigError, match=r'config.model.attention_gate'):
    config_lib.validate(tiny_model_config(attention_gate='sigmoid'))
