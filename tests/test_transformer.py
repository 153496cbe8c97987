"""Model-level properties of the decoder with every position encoding, on the
tiny config: causality, shift invariance of the relative encodings (and its
absence for the absolute ones), the per-layer / shared parameter rules, and
bfloat16 compute."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import base
from lmx.model import transformer as model_lib
from lmx import positions as P

ENCODINGS = sorted(P.REGISTRY)
B, T, V = 2, 12, 257
SHIFT = 17


def _model_cfg(position, dtype='float32'):
  cfg = base.get_config('size=tiny')
  cfg.model.position = position
  cfg.model.dtype = dtype
  return cfg.model


@functools.lru_cache(maxsize=None)
def _model(position, dtype='float32'):
  """One built model per (encoding, dtype); the tests only read it."""
  return model_lib.build(_model_cfg(position, dtype), seed=0)


def _param_count(model):
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _tokens(seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32)


def _positions(kind):
  if kind == 'contiguous':
    return jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  # Randomized-looking: sorted, distinct, with gaps, different per row.
  pos = P.sample_positions('randomized', B, T, 200, np.random.default_rng(1))
  assert np.any(np.diff(pos, axis=1) > 1) and not np.array_equal(pos[0], pos[1])
  return jnp.asarray(pos)


def _variants(model, tokens, pos):
  """Every forward pass the properties compare, in one jitted function (one
  compile per encoding): the logits at (tokens, pos), with token ``j``
  changed, with the last position moved further, and with every position
  shifted."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state):
    m = nnx.merge(graphdef, state)
    changed = [m(tokens.at[:, j].set((tokens[:, j] + 100) % V), pos)
               for j in CHANGED]
    return {'logits': m(tokens, pos), 'changed': changed,
            'moved': m(tokens, pos.at[:, T - 1].add(150)),
            'shifted': m(tokens, pos + SHIFT)}

  return run(state)


CHANGED = (1, T // 2, T - 1)


@pytest.mark.parametrize('kind', ['contiguous', 'randomized'])
@pytest.mark.parametrize('position', ENCODINGS)
def test_causal_finite_and_shift_invariant_as_the_encoding_says(position,
                                                                 kind):
  """One build per encoding, the properties together:

  * causality: changing token ``j`` never changes earlier logits (and does
    change its own, so the check can fail); moving the last token's
    position further (keeping them sorted) never reaches the tokens before
    it (xPos centres its scales on the key positions, so this is not
    trivial there);
  * finite float32 logits;
  * shift invariance where the encoding claims it
    (``PositionEncoding.shift_invariant``), and its absence for an encoding
    that adds positions to the embeddings.
  """
  encoding = P.get_encoding(position)
  model = _model(position)
  tokens, pos = _tokens(), _positions(kind)
  out = _variants(model, tokens, pos)
  logits = out['logits']
  assert logits.shape == (B, T, V) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  for j, new in zip(CHANGED, out['changed']):
    np.testing.assert_allclose(new[:, :j], logits[:, :j], atol=1e-5, rtol=0)
    assert float(jnp.abs(new[:, j] - logits[:, j]).max()) > 1e-3
  np.testing.assert_allclose(out['moved'][:, :T - 1], logits[:, :T - 1],
                             atol=1e-5, rtol=0)
  diff = jnp.abs(out['shifted'] - logits)
  if encoding.shift_invariant():
    np.testing.assert_allclose(out['shifted'], logits, atol=1e-4, rtol=0)
  elif encoding.embed is not P.PositionEncoding.embed:
    # Learned rows exist only below max_len (2048 by default).
    assert int(pos.max()) + SHIFT < _model_cfg(position).learned.max_len
    # Every index moved, so every index's logits change.
    assert float(diff.max(axis=-1).min()) > 1e-3


def test_every_encoding_is_shift_invariant_or_absolute_or_says_why():
  """The classes the property test above reads: an encoding that is neither
  shift invariant nor absolute has a test of its own (FIRE's below)."""
  odd = [n for n, e in P.REGISTRY.items() if not e.shift_invariant()
         and e.embed is P.PositionEncoding.embed]
  assert odd == ['fire']


def test_fire_is_shift_invariant_only_below_its_threshold():
  # psi(max(L, i)) is psi(L) for every query below L = 512 (the default):
  # then only i - j matters. With L = 4 the normaliser follows i.
  tokens, pos = _tokens(), _positions('randomized')
  assert int(pos.max()) + SHIFT < 512
  model = _model('fire')
  np.testing.assert_allclose(model(tokens, pos + SHIFT), model(tokens, pos),
                             atol=1e-4, rtol=0)
  cfg = _model_cfg('fire')
  cfg.fire.init_threshold = 4.0
  model = model_lib.build(cfg, seed=0)
  diff = jnp.abs(model(tokens, pos + SHIFT) - model(tokens, pos))
  assert float(diff.max()) > 1e-3


def test_t5_table_is_shared_by_all_layers():
  model = _model('t5')
  assert model.blocks[0].attn.position is model.blocks[1].attn.position
  assert model.blocks[0].attn.position is model.position
  # A shared module is counted once: t5 adds exactly one [num_buckets=32,
  # heads=2] table, 64 parameters, to the NoPE model.
  assert _param_count(model) - _param_count(_model('none')) == 32 * 2


def test_kerple_parameters_are_shared_by_all_layers_by_default():
  # The paper's Fig. 1 caption and its released code: one set per head,
  # handed to every layer.
  model = _model('kerple')
  assert not P.Kerple.is_per_layer(_model_cfg('kerple'))
  assert model.blocks[0].attn.position is model.blocks[1].attn.position
  assert model.blocks[0].attn.position is model.position
  # (r1, r2) for 2 heads, once.
  assert _param_count(model) - _param_count(_model('none')) == 2 * 2


def _per_layer_kerple():
  cfg = _model_cfg('kerple')
  cfg.kerple.per_layer = True
  return model_lib.build(cfg, seed=0)


def test_kerple_per_layer_has_its_own_parameters_in_every_layer():
  model = _per_layer_kerple()
  first, second = model.blocks[0].attn.position, model.blocks[1].attn.position
  assert first is not second
  # Separately initialised, so the values differ too.
  assert not np.allclose(first.scale[...], second.scale[...])
  assert not np.allclose(first.shape[...], second.shape[...])
  # Each instance holds (r1, r2) for the 2 heads, and there is no extra,
  # unused top-level copy: 2 layers x 2 x 2 = 8 over the NoPE model.
  for enc in (first, second):
    assert _param_count(enc) == 2 * 2
  assert _param_count(model) - _param_count(_model('none')) == 8


def _grads(position):
  model = _model(position) if isinstance(position, str) else position
  tokens, pos = _tokens(), _positions('contiguous')

  def loss(m):
    return jnp.mean(model_lib.cross_entropy(m(tokens, pos)[:, :-1],
                                            tokens[:, 1:]))

  # A clone of the model holding the gradients in place of the parameters,
  # so they are read by attribute, whatever path nnx files a shared module
  # under.
  holder = nnx.clone(model)
  nnx.update(holder, nnx.grad(loss)(model))
  return holder


def test_kerple_parameters_of_every_layer_are_trained():
  grads = _grads(_per_layer_kerple())
  for i in range(2):
    g = grads.blocks[i].attn.position
    assert float(jnp.abs(g.scale[...]).min()) > 0, i
    assert float(jnp.abs(g.shape[...]).min()) > 0, i


def test_t5_gradient_reaches_exactly_the_buckets_in_use():
  # The loss reads the predictions at indices 0..10 (index 11 has no next
  # token), so with positions 0..11 the causal distances are 0..10: buckets
  # 0..10 (all below max_exact = 16). Buckets 11..31 are never read.
  table = _grads('t5').position.table[...]
  assert table.shape == (32, 2)
  assert float(jnp.abs(table[:T - 1]).min()) > 0
  assert float(jnp.abs(table[T - 1:]).max()) == 0


def test_learned_gradient_reaches_exactly_the_rows_in_use():
  # Same loss: rows 0..10 feed a prediction, row 11 and beyond do not.
  table = _grads('learned').position.table[...]
  assert float(jnp.abs(table[:T - 1]).max(axis=-1).min()) > 0
  assert float(jnp.abs(table[T - 1:]).max()) == 0


@pytest.mark.parametrize('position', ENCODINGS)
def test_bfloat16_compute_returns_finite_float32_logits(position):
  tokens, pos = _tokens(), _positions('randomized')
  bf16 = _model(position, 'bfloat16')(tokens, pos)
  f32 = _model(position)(tokens, pos)   # same seed, same float32 params
  assert bf16.dtype == jnp.float32 and bf16.shape == (B, T, V)
  assert bool(jnp.all(jnp.isfinite(bf16)))
  # bfloat16 really was used (the logits are not bit-identical), and is close
  # to the float32 result: 8 bits of mantissa, ~1% relative error per op.
  diff = jnp.abs(bf16 - f32)
  assert float(diff.max()) > 0
  assert float(diff.max()) < 0.1 * float(jnp.abs(f32).max())


def test_tied_embeddings_replace_the_head():
  cfg = _model_cfg('alibi')
  cfg.tie_embeddings = True
  tied = model_lib.build(cfg, seed=0)
  # The untied model has one extra [d_model, vocab] head matrix.
  assert _param_count(_model('alibi')) - _param_count(tied) == 32 * V
  logits = tied(_tokens(), _positions('contiguous'))
  assert logits.shape == (B, T, V) and bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_attention_splits_the_qkv_kernel_into_q_k_v_columns(dtype):
  """The attention layer against its definition with NoPE: one product with
  the [D, 3D] kernel, its columns q | k | v (each head-major), causal
  softmax, the output product."""
  cfg = _model_cfg('none', dtype)
  attn = model_lib.build(cfg, seed=0).blocks[0].attn
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(B, T, cfg.d_model)), jnp.float32)
  got = attn(x.astype(model_lib.DTYPES[dtype]), _positions('contiguous'))
  h, d = cfg.num_heads, cfg.d_model
  qkv = np.asarray(x, np.float64) @ np.asarray(attn.qkv.kernel[...], np.float64)
  q, k, v = (qkv[..., i * d:(i + 1) * d].reshape(B, T, h, d // h)
             for i in range(3))
  logits = np.einsum('bthk,bshk->bhts', q, k) / np.sqrt(d // h)
  logits = np.where(np.tril(np.ones((T, T), bool)), logits, -np.inf)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  o = np.einsum('bhts,bshk->bthk', p, v).reshape(B, T, d)
  want = o @ np.asarray(attn.out.kernel[...], np.float64)
  tol = 1e-5 if dtype == 'float32' else 3e-2
  np.testing.assert_allclose(np.asarray(got, np.float64), want,
                             atol=tol * np.abs(want).max(), rtol=0)
