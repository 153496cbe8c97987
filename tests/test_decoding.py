"""KV-cache decoding, sampling, generate.py and bf16 mixed precision."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import base
from lmx.training import checkpoint
from lmx.model import decoding
from lmx.model import transformer as model_lib
from lmx import positions
from lmx.config import validate as config_lib
from lmx.config.validate import ConfigError
from scripts import ROOT, run
from helpers import decode_steps


def tiny(position='rope', **overrides):
  c = base.get_config('size=tiny')
  c.model.position = position
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  config_lib.validate(c)
  return c


def tokens_1xT(t, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 257, (1, t)),
                     jnp.int32)


def decode_all(model, tokens, n_prompt):
  """(logits of every token decoded with the cache, the forward pass's
  logits, the final cache): helpers.decode_steps, and the full pass."""
  decoded, cache = decode_steps(model, tokens, n_prompt)
  pos = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None]
  return decoded, model(tokens, pos), cache


def prefix_logits(model, tokens):
  """Row i: the logits of token i from a forward pass over tokens 0..i alone
  (one batch: the later tokens are hidden by causality and given position
  0, so the largest position of row i is i)."""
  t = tokens.shape[1]
  pos_TxT = jnp.where(jnp.arange(t)[None] <= jnp.arange(t)[:, None],
                      jnp.arange(t)[None], 0)
  logits = model(jnp.repeat(tokens, t, axis=0), pos_TxT)
  return logits[jnp.arange(t), jnp.arange(t)][None]


CASES = {name: {} for name in positions.REGISTRY}
CASES.update({
    # One layer: see the test.
    'rope_dynamic': {'position': 'rope', 'model.num_layers': 1,
                     'model.rope.scaling': 'dynamic',
                     'model.rope.factor': 2.0,
                     'model.rope.original_max_len': 8},
    'rerope': {'position': 'rope', 'model.rerope.window': 5},
    'leaky_rerope': {'position': 'rope', 'model.rerope.window': 5,
                     'model.rerope.leak': 0.25},
    'lm_infinite_rope': {'position': 'rope', 'model.lm_infinite.n_global': 2,
                         'model.lm_infinite.n_local': 5,
                         'model.lm_infinite.distance_limit': 7},
    'lm_infinite_alibi': {'position': 'alibi', 'model.lm_infinite.n_global': 2,
                          'model.lm_infinite.n_local': 5,
                          'model.lm_infinite.distance_limit': 7},
    'chunked_prefill': {'position': 't5', 'model.attention': 'chunked',
                        'model.attention_block': 4},
    # Static keys cached turned: scaled RoPE, and the ring of a bounded
    # cache (Lambda mask without the distance limit: no clamp).
    'rope_yarn': {'position': 'rope', 'model.rope.scaling': 'yarn',
                  'model.rope.factor': 4.0, 'model.rope.original_max_len': 4},
    'lm_infinite_rope_no_limit': {'position': 'rope',
                                  'model.lm_infinite.n_global': 2,
                                  'model.lm_infinite.n_local': 5},
    # Self-Extend on a rotary and on a bias encoding; ReRoPE with log-n.
    'self_extend_rope': {'position': 'rope', 'model.self_extend.window': 4,
                         'model.self_extend.group': 3},
    'self_extend_alibi': {'position': 'alibi', 'model.self_extend.window': 4,
                          'model.self_extend.group': 3},
    'rerope_logn': {'position': 'rope', 'model.rerope.window': 5,
                    'model.length_scaling.kind': 'logn',
                    'model.length_scaling.base_len': 6},
    # Per-layer encodings, windows and length scalings (config.model.layers):
    # HWFA's RoPE layer with a window and NoPE layer with log-n; one window
    # for every layer (a ring of 4 slots); SSMax over ALiBi's bias.
    'hwfa': {'position': 'rope', 'model.layers.position': ('rope', 'none'),
             'model.layers.window': (4, 0),
             'model.layers.length_scaling': ('off', 'logn'),
             'model.length_scaling.base_len': 6},
    'window_ring': {'position': 'rope', 'model.layers.window': (4,)},
    'ssmax_alibi': {'position': 'alibi', 'model.length_scaling.kind': 'ssmax',
                    'model.length_scaling.base_len': 6},
    # Partial rotary (half the channels of the head of 16) and p-RoPE.
    'rope_partial': {'position': 'rope', 'model.rope.partial': 0.5},
    'p_rope': {'position': 'rope', 'model.rope.p': 0.5},
    # KeyNorm without RoPE: normalised keys alone, cached normalised.
    'keynorm_no_rope': {'position': 'keynorm', 'model.keynorm.rope': False},
    # LongRoPE switches to its long factors past original_max_len = 8 (one
    # layer: see the test).
    'rope_longrope': {'position': 'rope', 'model.num_layers': 1,
                      'model.rope.scaling': 'longrope',
                      'model.rope.factor': 2.0,
                      'model.rope.original_max_len': 8,
                      'model.rope.long_factor': (1.0, 1.5, 2.0, 2.0, 4.0,
                                                 4.0, 8.0, 8.0)},
})


@pytest.mark.parametrize('case', sorted(CASES))
def test_incremental_decoding_matches_forward(case):
  kw = dict(CASES[case])
  c = tiny(kw.pop('position', case), **kw)
  model = model_lib.build(c.model, 0)
  tokens = tokens_1xT(12)
  got, want, _ = decode_all(model, tokens, n_prompt=5)
  if case in ('rope_dynamic', 'rope_longrope'):
    # Dynamic NTK scales by the current length (largest position + 1): the
    # token at i is scored as a forward pass over the first i + 1 tokens
    # would score it, not as one over all 12. The cached keys are turned at
    # the current scale, which this checks exactly; with more than one
    # layer the cached keys of deeper layers also depend on hidden states
    # computed at the scale of their own time, so past original_max_len
    # decoding differs slightly from recomputing every prefix (as with any
    # KV cache under dynamic NTK). LongRoPE's switch from its short to its
    # long factors follows the length the same way.
    full, want = want, prefix_logits(model, tokens)
    assert np.abs(np.asarray(full - want)).max() > 1e-3  # scaling is active
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize('case,turned', [
    ('rope', True), ('rope_yarn', True), ('lm_infinite_rope_no_limit', True),
    ('alibi', True), ('keynorm', True), ('xpos', False),
    ('rope_dynamic', False),
    ('rerope', False), ('lm_infinite_rope', False)])
def test_decoding_turns_only_new_keys_where_keys_are_static(
    monkeypatch, case, turned):
  """With static keys (and no clamp) a decoding step asks the encoding to
  turn its one new key; otherwise every cached key, turned anew."""
  kw = dict(CASES.get(case, {}))
  c = tiny(kw.pop('position', case), **kw)
  model = model_lib.build(c.model, 0)
  cls = type(model.blocks[0].attn.position)
  static = model.blocks[0].attn.position.keys_static()
  assert static == (turned or case in ('rerope', 'lm_infinite_rope'))
  key_lengths = []
  rotate = cls.rotate

  def counting(self, q, k, qp, kp):
    key_lengths.append(k.shape[1])
    return rotate(self, q, k, qp, kp)

  # (keys_static looks at whether rotate is overridden: keep its answer.)
  monkeypatch.setattr(cls, 'keys_static', lambda self: static)
  monkeypatch.setattr(cls, 'rotate', counting)
  tokens = tokens_1xT(9)
  pos = jnp.arange(9, dtype=jnp.int32)[None]
  cache = model.init_cache(1, 9)
  _, cache = model.decode(tokens[:, :6], pos[:, :6], cache, prefill=True)
  key_lengths.clear()
  model.decode(tokens[:, 6:7], pos[:, 6:7], cache)
  assert key_lengths, 'the encoding was never asked'
  capacity = cache['idx'].shape[0]
  if turned:
    assert set(key_lengths) == {1}, key_lengths
  else:
    assert set(key_lengths) == {capacity} and capacity > 1, key_lengths


def test_an_encoding_that_turns_keys_must_say_they_are_static():
  """A new encoding that overrides rotate gets unturned caching (exact
  whatever its rotation does) unless it declares its keys static."""
  base_cls = positions.PositionEncoding

  class Turns(base_cls):
    def rotate(self, q, k, qp, kp):
      return q, k * 2.0

  class TurnsStatic(Turns):
    def keys_static(self):
      return True

  class Biases(base_cls):
    def bias(self, qp, kp):
      return None

  cfg = tiny().model
  rngs = nnx.Rngs(0)
  assert not Turns(cfg, rngs=rngs).keys_static()
  assert TurnsStatic(cfg, rngs=rngs).keys_static()
  assert Biases(cfg, rngs=rngs).keys_static()


@pytest.mark.parametrize('n_prompt', [3, 10])  # shorter / longer than the cache
def test_bounded_cache_has_global_plus_local_slots(n_prompt):
  c = tiny('rope', **{'model.lm_infinite.n_global': 2,
                      'model.lm_infinite.n_local': 5,
                      'model.lm_infinite.distance_limit': 7})
  model = model_lib.build(c.model, 0)
  assert model.cache_capacity(10_000) == 7
  tokens = tokens_1xT(12, seed=1)
  got, want, cache = decode_all(model, tokens, n_prompt)
  assert cache['k'][0].shape[1] == 7 and cache['idx'].shape == (7,)
  # The global tokens 0, 1 and the last five, 7..11, are what is kept.
  assert sorted(np.asarray(cache['idx']).tolist()) == [0, 1, 7, 8, 9, 10, 11]
  # want: the full forward pass, under the Lambda mask.
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  # Without the mask the same model would give other logits: the check is
  # not vacuous.
  causal = model_lib.build(tiny('rope').model, 0)(tokens,
                                                  jnp.arange(12)[None])
  assert np.abs(np.asarray(causal - want))[:, 7:].max() > 1e-3


# ------------------------------------------------------------------ sampling


def _logits(b=8, v=257, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(0, 2, (b, v)),
                     jnp.float32)


def _keys(n):
  return jax.vmap(lambda i: decoding.token_key(0, i))(jnp.arange(n))


def test_greedy_is_argmax():
  logits = _logits()
  want = np.argmax(np.asarray(logits), -1)
  np.testing.assert_array_equal(decoding.greedy(logits), want)
  np.testing.assert_array_equal(
      decoding.sample(logits, decoding.token_key(0, 0), temperature=0), want)


def test_top_k_one_is_greedy():
  logits = _logits()
  draws = jax.vmap(lambda k: decoding.sample(logits, k, 1.5, top_k=1))(
      _keys(64))
  assert (np.asarray(draws) == np.argmax(np.asarray(logits), -1)).all()


@pytest.mark.parametrize('k', [2, 5, 40])
def test_top_k_never_samples_outside_the_top_k(k):
  logits = _logits(seed=k)
  # Ties at the k-th value too: a threshold on values would let them in.
  logits = logits.at[0].set(jnp.round(logits[0]))
  draws = np.asarray(jax.vmap(
      lambda key: decoding.sample(logits, key, 3.0, top_k=k))(_keys(2000)))
  kth = np.sort(np.asarray(logits), -1)[:, -k]
  for row in range(logits.shape[0]):
    seen = np.unique(draws[:, row])
    assert len(seen) <= k
    assert (np.asarray(logits)[row, seen] >= kth[row]).all()
  # A hot temperature reaches every one of the k on the untied rows.
  assert len(np.unique(draws[:, 1])) == k


def test_sampling_follows_the_softmax():
  logits = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4]]))
  draws = np.asarray(jax.vmap(lambda key: decoding.sample(logits, key))(
      _keys(8000)))[:, 0]
  np.testing.assert_allclose(np.bincount(draws, minlength=4) / 8000,
                             [0.1, 0.2, 0.3, 0.4], atol=0.02)


def test_low_temperature_approaches_greedy():
  logits = _logits()
  best = np.argmax(np.asarray(logits), -1)
  agree = []
  for t in (2.0, 1.0, 0.3, 0.1, 1e-3):
    draws = jax.vmap(lambda key, t=t: decoding.sample(logits, key, t))(
        _keys(500))
    agree.append(float((np.asarray(draws) == best).mean()))
  assert agree == sorted(agree) and agree[0] < 0.5 and agree[-1] == 1.0


def test_bad_sampling_settings_are_refused():
  for kw, word in (({'temperature': -1.0}, 'temperature'),
                   ({'top_k': -2}, 'top_k'), ({'top_k': 1.5}, 'top_k')):
    with pytest.raises(ConfigError, match=word):
      decoding.sample(_logits(), decoding.token_key(0, 0), **kw)


# ------------------------------------------------------------------ generate


@pytest.fixture(scope='module')
def tiny_model():
  c = tiny('alibi')
  return c, model_lib.build(c.model, 0)


PROMPT = np.array([[100, 101, 102, 58], [1, 2, 3, 4]], np.int32)


def test_generate_same_seed_same_text(tiny_model):
  c, model = tiny_model
  kw = dict(temperature=1.0, top_k=20)
  a = decoding.generate(model, c, PROMPT, 12, seed=3, **kw)
  b = decoding.generate(nnx.split(model), c, PROMPT, 12, seed=3, **kw)
  d = decoding.generate(model, c, PROMPT, 12, seed=4, **kw)
  assert a.shape == (2, 12) and a.dtype == np.int32
  np.testing.assert_array_equal(a, b)
  assert (a != d).any()


def test_greedy_generation_is_the_forward_argmax(tiny_model):
  c, model = tiny_model
  new = decoding.generate(model, c, PROMPT, 12, temperature=0)
  np.testing.assert_array_equal(
      new, decoding.generate(model, c, PROMPT, 12, temperature=0.7, top_k=1))
  text = np.concatenate([PROMPT, new], axis=1)
  logits = model(jnp.asarray(text), jnp.arange(text.shape[1])[None])
  np.testing.assert_array_equal(np.argmax(logits[:, 3:-1], -1), new)


def test_generate_stops_at_end_of_document(tiny_model):
  c, model = tiny_model
  # A head whose logits always make EOD the likeliest token.
  model = nnx.clone(model)
  model.head = nnx.Linear(c.model.d_model, c.model.vocab_size,
                          kernel_init=nnx.initializers.zeros,
                          rngs=nnx.Rngs(0))
  model.head.bias[...] = model.head.bias[...].at[decoding.EOD].set(10.0)
  kw = dict(temperature=0)
  np.testing.assert_array_equal(
      decoding.generate(model, c, PROMPT[1], 12, stop_at_eod=True, **kw),
      [decoding.EOD])
  np.testing.assert_array_equal(
      decoding.generate(model, c, PROMPT[1], 12, **kw), [decoding.EOD] * 12)


def test_lengths_are_checked_before_compiling():
  c = tiny('learned', **{'model.learned.max_len': 32})
  model = model_lib.build(c.model, 0)
  with pytest.raises(ConfigError, match=r'config.model.learned.max_len=32.*'
                     r'at most 22 new tokens'):
    decoding.generate(model, c, list(range(10)), 23)
  with pytest.raises(ConfigError, match=r'max_len=16.*lm_infinite'):
    decoding.generate(model, c, list(range(10)), 7, max_len=16)
  with pytest.raises(ConfigError, match='prompt is empty'):
    decoding.generate(model, c, [], 5)
  # A bounded cache holds any length in n_global + n_local slots.
  lm = tiny('rope', **{'model.lm_infinite.n_global': 2,
                       'model.lm_infinite.n_local': 4})
  out = decoding.generate(model_lib.build(lm.model, 0), lm, [1, 2, 3], 40,
                          max_len=6)
  assert out.shape == (40,)


# ------------------------------------------------------- generate.py e2e


@pytest.fixture(scope='module')
def trained_rope(tmp_path_factory, cache_dir):
  workdir = str(tmp_path_factory.mktemp('gen') / 'rope')
  # A small corpus (this package's encodings) keeps the data build short.
  run('train.py', '--config=configs/rope.py:size=tiny', f'--workdir={workdir}',
      f'--config.data.cache_dir={cache_dir}',
      f'--config.data.source={os.path.join(ROOT, "lmx", "positions")}',
      # Too few files for a hashed validation split: one is given.
      '--config.data.validation_source='
      f'{os.path.join(ROOT, "lmx", "positions", "base.py")}',
      '--config.train.steps=2', '--config.train.checkpoint_every=1',
      '--progress=false')
  return workdir


def test_generate_py_end_to_end(trained_rope):
  # An older step and LM-Infinite's bounded cache through --config.
  flags = ['--step=1', '--config.model.lm_infinite.n_global=2',
           '--config.model.lm_infinite.n_local=8']
  out = run('generate.py', f'--workdir={trained_rope}', '--prompt=def main(',
            '--max_new_tokens=40', '--temperature=0.8', '--top_k=40',
            '--seed=0', *flags).stdout
  assert out.startswith('def main(')
  # Same seed, same text: the library call gives what the command printed.
  config = checkpoint.read_config(trained_rope)
  config.model.lm_infinite.n_global = 2
  config.model.lm_infinite.n_local = 8
  text, step = decoding.generate_from_run(
      config, trained_rope, 'def main(', 40, temperature=0.8, top_k=40,
      seed=0, step=1)
  assert out == text + '\n' and step == 1
  with pytest.raises(checkpoint.CheckpointError,
                     match='available steps: 1, 2'):
    decoding.generate_from_run(config, trained_rope, 'x', 5, step=7)


def test_generate_py_missing_workdir(tmp_path):
  proc = run('generate.py', f'--workdir={tmp_path / "missing"}',
             '--prompt=x', check=False)
  assert proc.returncode == 2
  assert 'does not exist. Train first' in proc.stderr
  assert 'Traceback' not in proc.stderr


# ---------------------------------------------------------------- bfloat16


def _eqns(jaxpr):
  """Every equation, inside sub-jaxprs (pjit, custom_jvp, ...) too."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in (value if isinstance(value, (tuple, list)) else [value]):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          yield from _eqns(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          yield from _eqns(sub)


def test_bf16_keeps_float32_params_and_computes_in_bf16():
  c = tiny('alibi', **{'model.dtype': 'bfloat16'})
  abstract = nnx.eval_shape(lambda: model_lib.build(c.model, 0))
  _, state = nnx.split(abstract)
  assert {x.dtype for x in jax.tree.leaves(state)} == {jnp.dtype('float32')}
  model = model_lib.build(c.model, 0)
  tokens = tokens_1xT(12)
  pos = jnp.arange(12)[None]
  assert jax.eval_shape(model, tokens, pos).dtype == jnp.float32
  jaxpr = jax.make_jaxpr(lambda t, p: model(t, p))(tokens, pos).jaxpr
  eqns = list(_eqns(jaxpr))
  dots = [e for e in eqns if e.primitive.name == 'dot_general']
  # q, k, v (three column slices of the qkv kernel), scores, values, out,
  # mlp up/down per layer, and the head.
  assert len(dots) == 8 * c.model.num_layers + 1
  for e in dots:
    assert all(v.aval.dtype == jnp.bfloat16 for v in e.invars), e
  # Every product accumulates in float32 and has a float32 result (the
  # dense layers and the attention-weighted values round it back to bf16;
  # the scores are biased and softmaxed in float32).
  f32_dots = [e for e in dots if e.outvars[0].aval.dtype == jnp.float32]
  assert f32_dots == dots
  exps = [e for e in eqns if e.primitive.name == 'exp']
  assert exps and all(e.outvars[0].aval.dtype == jnp.float32 for e in exps)


def test_bf16_logits_stay_close_to_float32():
  c32 = tiny('rope')
  c16 = tiny('rope', **{'model.dtype': 'bfloat16'})
  m32, m16 = model_lib.build(c32.model, 0), model_lib.build(c16.model, 0)
  # The same seed gives the same (float32) parameters.
  for a, b in zip(jax.tree.leaves(nnx.state(m32)),
                  jax.tree.leaves(nnx.state(m16))):
    np.testing.assert_array_equal(a, b)
  tokens = tokens_1xT(12, seed=2)
  pos = jnp.arange(12)[None]
  l32, l16 = np.asarray(m32(tokens, pos)), np.asarray(m16(tokens, pos))
  # Measured on the tiny rope and alibi models, token seeds 0-2: max |diff|
  # 0.028 to 0.042 for logits of std 0.98, max |diff| of the probabilities
  # 0.0006 to 0.0014, argmax agreement 97-100%. bf16 keeps 8 bits of
  # mantissa (a relative rounding step of 2^-8 = 0.4%), rounded at every
  # matmul input and residual add: a few percent of a logit's scale after
  # 2 layers. The bounds leave 2.3x (logits) and 3.5x (probabilities) room.
  assert np.abs(l16 - l32).max() < 0.1 * l32.std()
  p32, p16 = jax.nn.softmax(l32), jax.nn.softmax(l16)
  assert np.abs(p16 - p32).max() < 5e-3
  assert (np.argmax(l16, -1) == np.argmax(l32, -1)).mean() > 0.9
