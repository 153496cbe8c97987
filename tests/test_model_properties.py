"""Model-level properties: causality for every encoding, shift invariance for
the relative ones, and the sharing rules of the encodings' parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from lmx import model as model_lib
from lmx import positions as P

RELATIVE = ['none', 't5', 'alibi', 'kerple', 'xpos', 'rope']
ABSOLUTE = ['sinusoidal', 'learned']
B, T = 2, 12


def _model(position, **model_overrides):
  c = base.get_config('size=tiny').model
  c.position = position
  for k, v in model_overrides.items():
    c[k] = v
  return model_lib.build(c, seed=0)


def _tokens(seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 257, (B, T)),
                     jnp.int32)


def _contiguous(offset=0):
  return jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32) + offset, (B, T))


def test_all_encodings_are_covered():
  assert sorted(RELATIVE + ABSOLUTE) == sorted(P.REGISTRY)


@pytest.mark.parametrize('position', sorted(P.REGISTRY))
@pytest.mark.parametrize('sparse', [False, True])
def test_changing_a_future_token_never_changes_earlier_logits(position,
                                                              sparse):
  model = _model(position)
  tokens = _tokens()
  pos = _contiguous()
  if sparse:  # randomized-style positions: sorted with gaps
    pos = jnp.asarray(P.sample_positions('randomized', B, T, 200,
                                         np.random.default_rng(1)))
  base_logits = model(tokens, pos)
  for j in (0, T // 2, T - 1):
    changed = tokens.at[:, j].set((tokens[:, j] + 101) % 257)
    logits = model(changed, pos)
    np.testing.assert_allclose(logits[:, :j], base_logits[:, :j], atol=1e-5)
    # ...and the change is visible from position j on, so this can fail.
    assert float(jnp.abs(logits[:, j] - base_logits[:, j]).max()) > 1e-4


@pytest.mark.parametrize('position', RELATIVE)
def test_relative_encodings_are_shift_invariant(position):
  model = _model(position)
  tokens = _tokens()
  a = model(tokens, _contiguous())
  b = model(tokens, _contiguous(offset=17))
  c = model(tokens, _contiguous(offset=1000))
  np.testing.assert_allclose(a, b, atol=1e-4)
  np.testing.assert_allclose(a, c, atol=1e-4)


@pytest.mark.parametrize('position', ABSOLUTE)
def test_absolute_encodings_are_not_shift_invariant(position):
  model = _model(position)
  tokens = _tokens()
  a = model(tokens, _contiguous())
  b = model(tokens, _contiguous(offset=17))
  assert float(jnp.abs(a - b).max()) > 1e-3


def test_t5_table_is_shared_and_kerple_is_per_layer():
  t5 = _model('t5')
  assert t5.blocks[0].attn.position is t5.blocks[1].attn.position
  assert t5.blocks[0].attn.position is t5.position
  kerple = _model('kerple')
  assert kerple.blocks[0].attn.position is not kerple.blocks[1].attn.position
  # Parameters of a shared module are counted once.
  from flax import nnx
  n_t5 = sum(x.size for x in jax.tree.leaves(nnx.state(t5, nnx.Param)))
  n_none = sum(x.size for x in jax.tree.leaves(
      nnx.state(_model('none'), nnx.Param)))
  assert n_t5 - n_none == 32 * 2   # one [num_buckets, heads] table


def test_bfloat16_compute_returns_float32_logits():
  model = _model('rope', dtype='bfloat16')
  logits = model(_tokens(), _contiguous())
  assert logits.dtype == jnp.float32 and logits.shape == (B, T, 257)
  assert bool(jnp.all(jnp.isfinite(logits)))


def test_tied_embeddings_have_no_separate_head():
  from flax import nnx
  tied = _model('alibi', tie_embeddings=True)
  untied = _model('alibi')
  count = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  assert count(untied) - count(tied) == 32 * 257
  assert tied(_tokens(), _contiguous()).shape == (B, T, 257)
