"""lmx.model.layer_plan: per-layer encodings, sliding windows, chunks, qk-norm and
length scalings (HWFA, iRoPE), in the model, its backends and its KV cache, and the config
checks of config.model.layers.

Tiny models (d_model 32, two heads); tiles of 4 tokens against odd lengths,
so the chunked backend has many tiles, a ragged last one and skipped ones.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from configs import hwfa
from configs import irope
from lmx.positions import length_scaling as LS
from lmx.model import attention as A
from lmx.config import validate as config_lib
from lmx.model import layer_plan
from lmx.model import transformer as model_lib
from lmx import positions as P
from lmx.errors import ConfigError
from scripts import run_here
from helpers import FAST_COMPILE, decode_steps, tiny_model_config

V = 257


def _config(num_layers=2, **fields):
  """The tiny config; ``fields`` are config.model paths with '__' for '.'."""
  return tiny_model_config(num_layers=num_layers, **fields)


def _tokens(b, t, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(0, V, (b, t)), jnp.int32)


# ------------------------------------------------------------------ the plan


def test_plan_repeats_patterns_and_fills_the_model_level_setting():
  c = _config(4, position='alibi', length_scaling__kind='logn',
              length_scaling__base_len=8)
  specs = layer_plan.plan(c.model)
  assert specs == [layer_plan.LayerSpec('alibi', 0, 'logn')] * 4
  c.model.layers.position = ('rope', 'none')
  c.model.layers.window = (3, 0, 5, 0)
  specs = layer_plan.plan(c.model)
  assert [s.position for s in specs] == ['rope', 'none', 'rope', 'none']
  assert [s.window for s in specs] == [3, 0, 5, 0]
  assert [s.length_scaling for s in specs] == ['logn'] * 4
  assert list(layer_plan.used_encodings(c.model)) == ['rope', 'none']


def test_shipped_hwfa_and_irope_configs_say_what_the_papers_say():
  c = hwfa.get_config('size=default')
  n, w = c.model.num_layers, c.train.seq_len // 4
  specs = layer_plan.plan(c.model)
  assert specs[:-1] == [layer_plan.LayerSpec('rope', w, 'off')] * (n - 1)
  assert specs[-1] == layer_plan.LayerSpec('none', 0, 'logn')
  assert c.model.length_scaling.base_len == c.train.seq_len
  c = irope.get_config('size=default')
  c.model.num_layers = 8       # the pattern of four repeats
  specs = layer_plan.plan(c.model)
  assert [s.position for s in specs] == ['rope', 'rope', 'rope', 'none'] * 2
  assert [s.length_scaling for s in specs] == ['off'] * 3 + ['llama4'] + [
      'off'] * 3 + ['llama4']
  # Llama 4: the RoPE layers attend within chunks and normalise q and k;
  # the NoPE layers see everything, unnormalised, with the temperature,
  # whose floor_scale is the chunk (both 8192 there).
  chunk = c.train.seq_len // 4
  assert [s.chunk for s in specs] == ([chunk] * 3 + [0]) * 2
  assert [s.qk_norm for s in specs] == [True, True, True, False] * 2
  assert not any(s.window for s in specs)
  assert c.model.length_scaling.floor_scale == chunk


def test_qk_norm_by_hand_and_its_logit_bound():
  """Llama 4's L2Norm: x / sqrt(mean(x^2) + 1e-5), no weight. For
  (3, 4): mean square 12.5, so (3, 4) / sqrt(12.5 + 1e-5). A normalised
  vector has length sqrt(K), so a qk-norm layer's q . k / sqrt(K) lies in
  [-sqrt(K), sqrt(K)] however large q and k are."""
  got = A.qk_norm(jnp.array([[[[3.0, 4.0]]]]))
  np.testing.assert_allclose(got[0, 0, 0], np.array([3.0, 4.0])
                             / np.sqrt(12.5 + 1e-5), rtol=1e-6)
  rng = np.random.default_rng(0)
  x = jnp.asarray(100.0 * rng.normal(size=(2, 9, 3, 16)), jnp.float32)
  y = A.qk_norm(x)
  np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), 4.0, rtol=1e-5)
  assert A.qk_norm(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16
  # In the model: the turned q and k of a qk-norm layer, at any scale.
  c = _config(1, layers__qk_norm=(True,))
  m = model_lib.build(c.model, 0)
  pos = jnp.arange(9)[None] + 40
  q, k = m.blocks[0].attn.turn(x[:1], 3.0 * x[:1], pos, pos)
  logits = jnp.einsum('bthk,bshk->bhts', q, k) / 4.0
  assert float(jnp.abs(logits).max()) <= 4.0 + 1e-4
  plain = model_lib.build(_config(1).model, 0)
  q, k = plain.blocks[0].attn.turn(x[:1], 3.0 * x[:1], pos, pos)
  assert float(jnp.abs(jnp.einsum('bthk,bshk->bhts', q, k)).max()) > 1e3


def test_chunked_layers_chunked_backend_equals_dense_in_every_gradient():
  """Chunks of 5 with qk-norm (tiles of 4 against 19 tokens, so chunks and
  tiles cut across each other): the chunked backend, visiting only the
  tiles from the chunk's start, equals the dense one in the loss and in
  every parameter's gradient."""
  t = 19
  fields = dict(layers__position=('rope', 'none'), layers__chunk=(5, 0),
                layers__qk_norm=(True, False),
                layers__length_scaling=('off', 'llama4'),
                length_scaling__floor_scale=5.0, attention_block=4)
  tokens = _tokens(2, t + 1, seed=5)
  x, y = tokens[:, :-1], tokens[:, 1:]
  pos = jnp.broadcast_to(jnp.arange(t) * 2 + 1, x.shape)
  grads = {}
  for be in ('dense', 'chunked'):
    c = _config(2, attention=be, **fields)
    config_lib.validate(c)
    graphdef, params, rest = nnx.split(model_lib.build(c.model, 0),
                                       nnx.Param, ...)

    def loss_fn(p, graphdef=graphdef, rest=rest):
      logits = nnx.merge(graphdef, p, rest)(x, pos)
      return model_lib.cross_entropy(logits, y).mean()

    grads[be] = jax.jit(jax.value_and_grad(loss_fn),
                        compiler_options=FAST_COMPILE)(params)
  (ld, gd), (lc, gc) = grads['dense'], grads['chunked']
  np.testing.assert_allclose(lc, ld, rtol=1e-6)
  flat_d = jax.tree_util.tree_leaves_with_path(gd)
  flat_c = dict(jax.tree_util.tree_leaves_with_path(gc))
  top = max(float(jnp.abs(g).max()) for _, g in flat_d)
  for path, g in flat_d:
    scale = max(float(jnp.abs(g).max()), 1e-3 * top)
    err = float(jnp.abs(flat_c[path] - g).max())
    assert err <= 1e-4 * scale, (jax.tree_util.keystr(path), err, scale)


def test_llama4_query_scale_by_hand():
  # 1 + 0.1 log(floor((p + 1) / 8192) + 1): floor is 0 up to p = 8190,
  # 1 at p = 8191, 2 at p = 16383.
  got = LS.llama4_query_scale(jnp.array([[0, 8190, 8191, 16383]]), 8192.0,
                             0.1)
  want = [1.0, 1.0, 1.0 + 0.1 * np.log(2.0), 1.0 + 0.1 * np.log(3.0)]
  np.testing.assert_allclose(got[0], want, rtol=1e-6)


# ------------------------------------------------------------ in the model


def test_empty_tuples_and_tuples_of_the_model_setting_are_the_same_model():
  """layers.position=('none', 'none') is config.model.position='none' to the
  bit, with the same parameters (and RoPE likewise)."""
  tokens = _tokens(2, 11)
  pos = jnp.broadcast_to(jnp.arange(11), (2, 11))
  for name in ('none', 'rope', 'kerple'):
    plain = model_lib.build(_config(2, position=name).model, 0)
    listed = model_lib.build(
        _config(2, position='alibi', layers__position=(name, name)).model, 0)
    a, b = nnx.state(plain, nnx.Param), nnx.state(listed, nnx.Param)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(plain(tokens, pos), listed(tokens, pos))


def test_per_layer_encodings_really_differ():
  """Each block asks its own encoding: the NoPE layer turns nothing, the
  RoPE layer turns q and k, and shared/per-layer instances follow each
  encoding's own rule among the blocks that use it."""
  c = _config(4, layers__position=('rope', 'none', 't5', 't5'))
  m = model_lib.build(c.model, 0)
  encs = [b.attn.position for b in m.blocks]
  assert [type(e) for e in encs] == [P.RoPE, P.NoPE, P.T5Bias, P.T5Bias]
  assert encs[2] is encs[3]       # T5 shares one table among its layers
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(1, 6, 2, 16)), jnp.float32)
  pos = jnp.arange(6)[None] + 3
  q_nope, k_nope = encs[1].rotate(q, q, pos, pos)
  np.testing.assert_array_equal(q_nope, q)
  np.testing.assert_array_equal(k_nope, q)
  q_rope, _ = encs[0].rotate(q, q, pos, pos)
  assert float(jnp.abs(q_rope - q).max()) > 0.1
  assert encs[1].bias(pos, pos) is None and encs[2].bias(pos, pos) is not None
  # The model's output depends on positions only through the RoPE and T5
  # layers: a NoPE-only model is shift invariant and unchanged by positions.
  nope = model_lib.build(_config(2, layers__position=('none', 'none')).model,
                         0)
  tokens = _tokens(1, 6)
  np.testing.assert_array_equal(nope(tokens, pos), nope(tokens, pos * 3))
  assert float(jnp.abs(m(tokens, pos) - m(tokens, pos * 3)).max()) > 1e-4


@pytest.mark.parametrize('kind', ['window', 'chunk'])
@pytest.mark.parametrize('backend', ['dense', 'chunked'])
def test_a_local_layer_never_sees_keys_beyond_its_window_or_chunk(backend,
                                                                   kind):
  """One layer with window w: the logits of query i change when token j
  changes iff i - w < j <= i (the query itself and the w - 1 keys before
  it); with a chunk of w (Llama 4) iff j <= i in the same chunk,
  j // w == i // w. Under the dense backend and the chunked one with its
  tile skipping (tiles of 4, T = 23)."""
  w, t = 5, 23
  c = _config(1, attention=backend, attention_block=4,
              **{f'layers__{kind}': (w,)})
  config_lib.validate(c)
  m = model_lib.build(c.model, 0)
  base_tokens = _tokens(1, t)
  # Row j < t changes token j alone; row t is the unchanged sequence, in
  # the same batch (so rounding is the same).
  rows = jnp.repeat(base_tokens, t + 1, axis=0)
  rows = rows.at[jnp.arange(t), jnp.arange(t)].set(
      (base_tokens[0] + 1) % V)
  pos = jnp.broadcast_to(jnp.arange(t), (t + 1, t))
  logits = jax.jit(lambda x, p: m(x, p), compiler_options=FAST_COMPILE)(
      rows, pos)
  diff = np.asarray(jnp.abs(logits[:t] - logits[t:]).max(axis=-1))
  changed = diff > 1e-4
  assert np.all((diff < 1e-6) | changed)   # a clear line between the two
  j, i = np.meshgrid(np.arange(t), np.arange(t), indexing='ij')
  local = (i - w < j) if kind == 'window' else (i // w == j // w)
  np.testing.assert_array_equal(changed, local & (j <= i))


MIXED = dict(
    layers__position=('rope', 'alibi', 'none'),
    layers__window=(5, 0, 3),
    layers__length_scaling=('off', 'ssmax', 'logn'),
    length_scaling__base_len=8)


_decode_all = decode_steps  # (decoded logits, the final cache)


@pytest.mark.parametrize('fields', [
    MIXED,
    # Every layer windowed alike: the cache is a ring of w slots.
    dict(layers__position=('rope', 'none'), layers__window=(6,),
         layers__length_scaling=('ssmax', 'llama4'),
         length_scaling__base_len=8, length_scaling__floor_scale=4.0),
    # Transformer-XL's content term (tiled) in a layer with SSMax and a
    # window, beside RoPE and NoPE.
    dict(layers__position=('txl', 'rope', 'none'), layers__window=(5, 0, 0),
         layers__length_scaling=('ssmax', 'off', 'logn'),
         length_scaling__base_len=8),
    # Llama 4's iRoPE layers: RoPE with chunks of 5 and qk-norm, then
    # NoPE with its temperature (floor_scale 5, so it acts within T).
    dict(layers__position=('rope', 'rope', 'none'), layers__chunk=(5, 5, 0),
         layers__qk_norm=(True, True, False),
         layers__length_scaling=('off', 'off', 'llama4'),
         length_scaling__floor_scale=5.0),
], ids=['mixed', 'ring', 'content', 'llama4'])
def test_dense_equals_chunked_equals_decoding(fields):
  """A model whose layers differ in encoding, window and length scaling
  (RoPE with a window, ALiBi with SSMax, NoPE with a window and log-n):
  the dense and chunked backends agree (positions with gaps), and decoding
  token by token equals the forward pass at an odd length."""
  t = 19
  n = len(fields['layers__position'])
  cfgs = {be: _config(n, attention=be, attention_block=4, **fields)
          for be in ('dense', 'chunked')}
  for c in cfgs.values():
    config_lib.validate(c)
  models = {be: model_lib.build(c.model, 0) for be, c in cfgs.items()}
  rng = np.random.default_rng(1)
  gaps = jnp.asarray(np.sort(rng.choice(60, (2, t), replace=False), axis=1))
  tokens = _tokens(2, t)
  out = {be: jax.jit(lambda x, p, m=m: m(x, p),
                     compiler_options=FAST_COMPILE)(tokens, gaps)
         for be, m in models.items()}
  np.testing.assert_allclose(out['chunked'], out['dense'], atol=2e-5, rtol=0)
  m = models['dense']
  one = tokens[:1]
  full = m(one, jnp.arange(t)[None])
  decoded, cache = _decode_all(m, one, n_prompt=6)
  np.testing.assert_allclose(decoded, full, atol=2e-5, rtol=0)
  windows = {s.window for s in layer_plan.plan(cfgs['dense'].model)}
  if windows == {6}:
    assert cache['k'][0].shape[1] == 6 == m.cache_capacity(t)
  else:
    assert m.cache_capacity(t) == t   # layers differ: a slot per token


@pytest.mark.parametrize('module', [hwfa, irope])
def test_a_few_steps_lower_the_loss(module):
  c = module.get_config('size=tiny')
  config_lib.validate(c)
  model = model_lib.build(c.model, 0)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tokens = _tokens(4, c.train.seq_len + 1, seed=3)
  x, y = tokens[:, :-1], tokens[:, 1:]
  pos = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape)
  opt = optax.adam(3e-3)

  def loss_fn(p):
    logits = nnx.merge(graphdef, p, rest)(x, pos)
    return model_lib.cross_entropy(logits, y).mean()

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def step(p, s):
    loss, g = jax.value_and_grad(loss_fn)(p)
    updates, s = opt.update(g, s, p)
    return optax.apply_updates(p, updates), s, loss

  state = opt.init(params)
  losses = []
  for _ in range(12):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  assert losses[-1] < losses[0] - 0.3, losses


# ---------------------------------------------------------------- bad input


BAD = {
    'length neither equals nor divides': (
        dict(layers__position=('rope', 'none', 'rope')),
        ['config.model.layers.position', '3 entries', 'num_layers=4']),
    'unknown encoding': (
        dict(layers__position=('rope', 'ropee')),
        ['config.model.layers.position', "'ropee'", 'alibi']),
    'absolute encoding per layer': (
        dict(layers__position=('rope', 'learned')),
        ['config.model.layers.position', "'learned'", 'embeddings']),
    'absolute model encoding beside a list': (
        dict(position='sinusoidal', layers__position=('rope', 'none')),
        ['config.model.position', "'sinusoidal'", 'act nowhere']),
    'scan over layers that differ': (
        dict(scan_layers=True, layers__window=(4, 0)),
        ['config.model.scan_layers', 'different']),
    'window and the Lambda mask': (
        dict(layers__window=(4, 0), lm_infinite__n_local=8),
        ['config.model.layers.window', 'config.model.lm_infinite.n_local']),
    'negative window': (
        dict(layers__window=(-1,)), ['config.model.layers.window', '-1']),
    'window not a tuple': (
        dict(layers=ml_collections.ConfigDict(
            dict(layer_plan.default_config().to_dict(), window=4))),
        ['config.model.layers.window', 'tuple']),
    'chunk and the Lambda mask': (
        dict(layers__chunk=(4, 0), lm_infinite__n_local=8),
        ['config.model.layers.chunk', 'config.model.lm_infinite.n_local']),
    'window and chunk on one layer': (
        dict(layers__window=(4, 0), layers__chunk=(8,)),
        ['layer 0', 'config.model.layers.window',
         'config.model.layers.chunk']),
    'negative chunk': (
        dict(layers__chunk=(-2,)), ['config.model.layers.chunk', '-2']),
    'qk_norm not a bool': (
        dict(layers__qk_norm=(1, 0)),
        ['config.model.layers.qk_norm', 'True or False']),
    'qk_norm undoing a query scaling': (
        dict(layers__qk_norm=(True, False),
             layers__length_scaling=('llama4', 'off')),
        ['layer 0', 'qk-norm', "'llama4'", "'ssmax'"]),
    'a layer list missing a field': (
        dict(layers=ml_collections.ConfigDict(
            {'position': (), 'window': (), 'length_scaling': ()})),
        ['config.model.layers.chunk is missing']),
    'unknown length scaling per layer': (
        dict(layers__length_scaling=('off', 'log')),
        ['config.model.layers.length_scaling', "'log'", "'ssmax'"]),
    'logn per layer without base_len': (
        dict(layers__length_scaling=('off', 'logn')),
        ['config.model.layers.length_scaling',
         'config.model.length_scaling.base_len']),
    'rerope without a rotary layer': (
        dict(position='alibi', layers__position=('alibi', 'none'),
             rerope__window=8),
        ['config.model.rerope.window', "'alibi', 'none'", 'not rotary']),
    'an unused rope setting': (
        dict(position='alibi', layers__position=('alibi', 'none'),
             rope__scaling='ntk', rope__factor=2.0),
        ['config.model.rope.scaling']),
    'a model encoding that acts in no layer': (
        dict(position='alibi', layers__position=('rope', 'none')),
        ["config.model.position='alibi'", 'act in no layer']),
}


@pytest.mark.parametrize('case', sorted(BAD))
def test_bad_layer_settings_are_refused_with_the_field(case):
  fields, words = BAD[case]
  c = _config(4)
  c.update_from_flattened_dict(
      {'model.' + k.replace('__', '.'): v for k, v in fields.items()})
  with pytest.raises(ConfigError) as err:
    config_lib.validate(c)
  for word in words:
    assert word in str(err.value), (case, str(err.value))


def test_rope_settings_apply_when_a_layer_uses_rope():
  c = _config(4, position='none', layers__position=('rope', 'none'),
              rope__scaling='ntk', rope__factor=2.0)
  config_lib.validate(c)


def test_train_py_exits_2_on_a_bad_layer_tuple(tmp_path):
  proc = run_here('train.py', '--config=configs/hwfa.py:size=tiny',
                  "--config.model.layers.window=(4, 4, 0)",
                  f'--workdir={tmp_path / "w"}')
  assert proc.returncode == 2, proc.stderr
  assert 'config.model.layers.window' in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1
  assert not (tmp_path / 'w').exists()


def test_describe_names_the_encoding_or_the_layers_in_order():
  c = _config(4, position='alibi')
  assert layer_plan.describe(c.model) == 'alibi'
  c = hwfa.get_config('size=default')
  w = c.train.seq_len // 4
  n = c.model.num_layers
  assert layer_plan.describe(c.model) == (
      f'rope window {w} x{n - 1}, none logn')
  c = irope.get_config('size=default')
  c.model.num_layers = 8
  layer = f'rope chunk {c.model.layers.chunk[0]} qknorm x3, none llama4'
  assert layer_plan.describe(c.model) == f'{layer}, {layer}'
