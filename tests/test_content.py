"""The content hook (``PositionEncoding.content``) through every path: the
dense and chunked backends, a far branch, KV-cache decoding (a running sum
carried by ``previous``, a bounded ring cache) and the backend choice for a
term that does not decompose over key tiles.

A test-only encoding exercises every field of ``Tile``: a data-dependent
decay ``F_i - F_j`` from a prefix sum of per-token gates (the key side is
cached and continued across calls), a product of query features with key
positions, and a fraction of the logits so far. The encodings that use the
hook are tested beside their own modules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import base
from lmx.model import attention as A
from lmx.config import validate as config_lib
from lmx.model import transformer as model_lib
from lmx import positions as P
from lmx.positions import base as pbase
import attention_calls as AC
from content_encodings import built, tokens as random_tokens
from helpers import decode_steps
from lmx.errors import ConfigError

NAME = 'content_toy'


class _Toy(P.PositionEncoding):
  """logit_ij += (F_i - F_j) + a_i . [k_pos_j / 10] + 0.25 * logits_ij, with
  F the prefix sum over tokens of log sigmoid(x . w) per head and a_i a
  per-head query feature. ``tiled`` from the config (the math is tiled
  either way; False checks that such a term runs dense)."""

  per_layer = True

  def __init__(self, cfg, *, rngs):
    super().__init__(cfg, rngs=rngs)
    self.w = nnx.Param(0.3 * jax.random.normal(
        rngs.params(), (cfg.d_model, self.num_heads)))
    self.tiled = bool(cfg[NAME].tiled)

  @classmethod
  def default_config(cls):
    import ml_collections  # pylint: disable=g-import-not-at-top
    return ml_collections.ConfigDict({'tiled': True})

  @classmethod
  def relative(cls):
    return True

  def content(self, x_BxTxD, q_BxTxHxK, k_BxTxHxK, positions_BxT,
              previous=None):
    del k_BxTxHxK
    log_f = jax.nn.log_sigmoid(
        x_BxTxD.astype(jnp.float32) @ self.w[...])          # [B, T, H]
    f_BxTxH = jnp.cumsum(log_f, axis=1)
    if previous is not None:
      f_BxTxH = f_BxTxH + previous['F'][:, None]
    a_BxTxH = jnp.tanh(q_BxTxHxK.astype(jnp.float32).sum(-1))

    def fn(tile: pbase.Tile):
      decay = (jnp.transpose(tile.q_side['F'], (0, 2, 1))[:, :, :, None]
               - jnp.transpose(tile.k_side['F'], (0, 2, 1))[:, :, None, :])
      feature = (jnp.transpose(tile.q_side['a'], (0, 2, 1))[:, :, :, None]
                 * tile.k_pos.astype(jnp.float32)[:, None, None, :] / 10.0)
      return decay + feature + 0.25 * tile.logits

    return pbase.ContentTerm({'F': f_BxTxH, 'a': a_BxTxH}, {'F': f_BxTxH},
                             fn, tiled=self.tiled)


@pytest.fixture
def toy():
  P.register(NAME, _Toy)
  yield
  P.REGISTRY.pop(NAME)


def _cfg(**overrides):
  c = base.get_config('size=tiny')
  c.model.position = NAME
  c.model.num_layers = 2
  c.model.attention_block = 8
  c.update_from_flattened_dict({f'model.{k}': v for k, v in overrides.items()})
  config_lib.validate(c)
  return c


def _tokens(t, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 257, (2, t)),
                     jnp.int32)


def _loss_and_grads(model, tokens, pos):
  graphdef, state = nnx.split(model)

  def loss(state):
    return jnp.mean(nnx.merge(graphdef, state)(tokens, pos) ** 2)

  return jax.jit(jax.value_and_grad(loss))(state)


@pytest.mark.parametrize('variant', [
    {}, {'lm_infinite.n_global': 2, 'lm_infinite.n_local': 5},
    # The distance limit: a far branch at clamped positions.
    {'lm_infinite.n_global': 2, 'lm_infinite.n_local': 5,
     'lm_infinite.distance_limit': 9}])
def test_chunked_equals_dense_forward_and_gradients(toy, variant):
  del toy
  t = 37   # 5 tiles of 8, the last ragged
  tokens = _tokens(t)
  pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (2, t))
  dense = model_lib.build(_cfg(attention='dense', **variant).model, 0)
  chunked = model_lib.build(_cfg(attention='chunked', **variant).model, 0)
  (l1, g1), (l2, g2) = (_loss_and_grads(m, tokens, pos)
                        for m in (dense, chunked))
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(g1),
                               jax.tree_util.tree_leaves_with_path(g2)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4, err_msg=str(path))
  # The gate weights get a gradient: the term is in the loss.
  w_grad = g1['blocks'][0]['attn']['position']['w'][...]
  assert float(jnp.abs(w_grad).max()) > 1e-4


def test_the_term_reaches_the_logits(toy):
  del toy
  model = model_lib.build(_cfg().model, 0)
  tokens = _tokens(12)
  pos = jnp.broadcast_to(jnp.arange(12, dtype=jnp.int32), (2, 12))
  before = model(tokens, pos)
  for block in model.blocks:
    block.attn.position.w[...] = block.attn.position.w[...] * 3.0
  assert float(jnp.abs(model(tokens, pos) - before).max()) > 1e-3


@pytest.mark.parametrize('variant', [
    {},
    # A ring cache of 2 global + 5 local slots: the running sum continues
    # through `previous` though the early tokens' slots are overwritten.
    {'lm_infinite.n_global': 2, 'lm_infinite.n_local': 5}])
def test_decoding_with_the_cache_equals_the_forward_pass(toy, variant):
  del toy
  model = model_lib.build(_cfg(**variant).model, 0)
  t, n_prompt = 14, 4
  tokens = _tokens(t)[:1]
  pos = jnp.arange(t, dtype=jnp.int32)[None]
  cache = model.init_cache(1, t)
  assert cache['aux'][0]['F'].shape[:2] == (1, model.cache_capacity(t))
  logits, cache = model.decode(tokens[:, :n_prompt], pos[:, :n_prompt], cache,
                               prefill=True)
  got = [logits]
  # Two tokens in one call, then one at a time.
  logits, cache = model.decode(tokens[:, n_prompt:n_prompt + 2],
                               pos[:, n_prompt:n_prompt + 2], cache)
  got.append(logits)
  for i in range(n_prompt + 2, t):
    logits, cache = model.decode(tokens[:, i:i + 1], pos[:, i:i + 1], cache)
    got.append(logits)
  np.testing.assert_allclose(jnp.concatenate(got, axis=1), model(tokens, pos),
                             atol=1e-5, rtol=0)


def test_a_term_that_is_not_tiled_runs_dense(toy):
  del toy
  t = 37
  tokens = _tokens(t)
  pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (2, t))
  # auto with a chunk threshold below T would choose chunked for a tiled
  # term; the untiled one stays dense, and gives the dense result.
  auto = model_lib.build(_cfg(**{'chunk_threshold': 8,
                                 f'{NAME}.tiled': False}).model, 0)
  dense = model_lib.build(_cfg(**{'attention': 'dense',
                                  f'{NAME}.tiled': False}).model, 0)
  np.testing.assert_allclose(auto(tokens, pos), dense(tokens, pos),
                             atol=1e-6, rtol=0)
  assert AC.chosen('auto', num_keys=t, q_dtype=jnp.float32,
                      head_dim=16, far=False, threshold=8,
                      content=True, tiled=False) == 'dense'
  assert AC.chosen('auto', num_keys=t, q_dtype=jnp.float32,
                      head_dim=16, far=False, threshold=8,
                      content=True) == 'chunked'
  # Asked for by name, the chunked backend falls back to dense with the
  # reason (the one fallback walk), and gives the dense result.
  assert AC.chosen('chunked', num_keys=t, content=True,
                      tiled=False) == 'dense'
  chunked = model_lib.build(_cfg(**{'attention': 'chunked',
                                    f'{NAME}.tiled': False}).model, 0)
  np.testing.assert_allclose(chunked(tokens, pos), dense(tokens, pos),
                             atol=1e-6, rtol=0)


def test_fused_kernels_refuse_a_content_term():
  assert AC.why_not(A.FLASH, content=True) == A.CONTENT_REFUSAL
  assert AC.why_not(A.FLASH) is None


# -------------------- the content-term encodings through the whole model
# The generic suites build every encoding at its initialisation, where
# CoPE's embeddings are zero (its term is 0). These give them values, and
# run FoX and CoPE through the ring cache of the Lambda mask, whose slots
# are not in token order.


@pytest.mark.parametrize('position,fields,table', [
    ('cope', {}, 'emb'),
    ('shaw', {'shaw__value_embeddings': True, 'shaw__max_distance': 3},
     'value_table')])
def test_content_tables_are_causal_shift_invariant_and_act(position, fields,
                                                          table):
  # CoPE's embeddings (given values, see _built) and Shaw's value table.
  model = built(position, **fields)
  tokens = random_tokens(2, 12)
  pos = jnp.asarray(P.sample_positions('randomized', 2, 12, 200,
                                       np.random.default_rng(1)))
  logits = model(tokens, pos)
  for j in (1, 6, 11):
    new = model(tokens.at[:, j].set((tokens[:, j] + 100) % 257), pos)
    np.testing.assert_allclose(new[:, :j], logits[:, :j], atol=1e-5, rtol=0)
    assert float(jnp.abs(new[:, j] - logits[:, j]).max()) > 1e-3
  np.testing.assert_allclose(model(tokens, pos + 17), logits, atol=1e-4,
                             rtol=0)
  # The table acts: zero it and the logits change.
  for block in model.blocks:
    param = getattr(block.attn.position, table)
    param[...] = jnp.zeros(param.shape, jnp.float32)
  assert float(jnp.abs(model(tokens, pos) - logits).max()) > 1e-3


def _decode_all(model, tokens, n_prompt):
  """(logits decoded with the cache, the full pass's logits)."""
  decoded, _ = decode_steps(model, tokens, n_prompt)
  pos = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None]
  return decoded, model(tokens, pos)


@pytest.mark.parametrize('position', ['cope', 'fox', 'shaw_values'])
@pytest.mark.parametrize('mask', ['causal', 'lambda'])
def test_decoding_matches_the_full_pass(position, mask):
  # Lambda: 2 global + 5 local slots, so after 7 tokens the ring holds its
  # keys out of token order (CoPE counts in token order; FoX continues F
  # from the latest token, not the latest slot; Shaw's value rows follow the
  # cached keys' positions).
  fields = ({'lm_infinite__n_global': 2, 'lm_infinite__n_local': 5}
            if mask == 'lambda' else {})
  if position == 'shaw_values':
    position, fields = 'shaw', {**fields, 'shaw__value_embeddings': True,
                                'shaw__max_distance': 3}
  model = built(position, **fields)
  got, want = _decode_all(model, random_tokens(1, 13), n_prompt=4)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize('position', ['shaw', 'fox'])
def test_flash_is_refused_where_the_config_asks_for_it(position):
  # The fused kernel computes no content term: asked for by name, the
  # config says so before anything compiles (a call outside a config
  # falls back to another backend instead).
  from configs import base
  from lmx.config import validate as config_lib
  c = base.get_config('size=tiny')
  c.model.position = position
  c.model.attention = 'flash'
  with pytest.raises(ConfigError, match="attention='flash'.*content"):
    config_lib.validate(c)
