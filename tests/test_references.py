"""Methods checked against their reference code: p-RoPE's kept pairs (gemma's
``apply_rope``), PoSE's sequential skips (the paper's Sec. 3.2), YaRN's
options as Hugging Face's ``_compute_yarn_parameters`` reads them (an
independent re-derivation here, not an import), Llama 4's temperature from
the token index (Hugging Face's ``cache_position``), and the memory slots'
keys under qk-norm and KeyNorm (x-transformers' ``num_mem_kv`` with
``qk_norm``)."""

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from helpers import FAST_COMPILE, tiny_model_config
from lmx.config import validate as config_lib
from lmx.errors import ConfigError
from lmx.model import attention as A
from lmx.model import transformer as model_lib
from lmx.positions import far
from lmx.positions import length_scaling as LS
from lmx.positions import rope as P
from lmx.positions import rope_scaling as RS
from lmx.positions import sampling


@functools.partial(jax.jit, static_argnums=0, compiler_options=FAST_COMPILE)
def _jit_forward(graphdef, state, tokens, pos):
  return nnx.merge(graphdef, state)(tokens, pos)


@functools.partial(jax.jit, static_argnums=(0, 5),
                   compiler_options=FAST_COMPILE)
def _jit_decode(graphdef, state, tokens, pos, cache, prefill):
  return nnx.merge(graphdef, state).decode(tokens, pos, cache,
                                           prefill=prefill)


def _forward(model, tokens, pos):
  """The model's logits, jitted (one compile per model structure)."""
  graphdef, state = nnx.split(model)
  return _jit_forward(graphdef, state, tokens, pos)


# ------------------------------------------------------------------ p-RoPE


@pytest.mark.parametrize('head_dim,p,pairs', [
    (128, 0.9, 57),     # 115.2 / 2 = 57.6: rounded down (round() gave 58)
    (128, 0.25, 16),    # exact: 32 / 2
    (128, 0.5, 32),     # exact
    (64, 0.3, 9),       # 19.2 / 2 = 9.6
    (16, 0.75, 6),      # exact: 12 / 2
    (10, 0.5, 2),       # 5 / 2 = 2.5: the half goes down
    (8, 0.0, 0),
    (8, 1.0, 4),
])
def test_p_rope_keeps_floor_of_p_k_over_2_pairs(head_dim, p, pairs):
  assert P.kept_pairs(head_dim // 2, p) == pairs
  inv = P.p_rope(P.rope_inv_freq(head_dim), p)
  assert int(jnp.sum(inv > 0)) == pairs
  np.testing.assert_array_equal(inv[:pairs], P.rope_inv_freq(head_dim)[:pairs])


def test_runs_saved_before_the_floor_keep_their_rounding():
  from lmx.config import defaults
  # 128 x 0.9 / 2 = 57.6: 57 pairs by the reference's floor, 58 rounded.
  assert P.kept_pairs(64, 0.9) == 57
  assert P.kept_pairs(64, 0.9, 'half_up') == 58
  assert P.kept_pairs(5, 0.5, 'half_up') == 3     # 2.5: the half goes up
  old = defaults.get_config().to_dict()
  old['model']['rope'].pop('p_rounding')
  old['model']['rope']['p'] = 0.9
  assert defaults.complete(old)['model']['rope']['p_rounding'] == 'half_up'
  plain = defaults.get_config().to_dict()
  plain['model']['rope'].pop('p_rounding')          # p = 1: nothing to keep
  assert defaults.complete(plain)['model']['rope']['p_rounding'] == 'floor'
  c = tiny_model_config()
  c.model.rope.p_rounding = 'nearest'
  with pytest.raises(ConfigError, match='config.model.rope.p_rounding'):
    config_lib.validate(c)


def test_runs_saved_before_the_index_keep_llama4_by_position():
  from lmx.config import defaults
  for where in ('model', 'layers'):
    old = defaults.get_config().to_dict()
    old['model']['length_scaling'].pop('llama4_from')
    if where == 'model':
      old['model']['length_scaling']['kind'] = 'llama4'
    else:
      old['model']['layers']['length_scaling'] = ['off', 'llama4']
    done = defaults.complete(old)
    assert done['model']['length_scaling']['llama4_from'] == 'position'
  plain = defaults.get_config().to_dict()
  plain['model']['length_scaling'].pop('llama4_from')
  assert defaults.complete(plain)['model']['length_scaling'][
      'llama4_from'] == 'index'


# -------------------------------------------------------------------- PoSE


def test_pose_two_chunks_are_the_released_codes_draws():
  # The code: first chunk length l ~ U{1 .. (T + 1) // 2}, then one skip
  # u ~ U{0 .. max_position - T} for the second chunk; drawn here from the
  # same seed by hand.
  t, max_pos = 12, 50
  got = sampling.pose_positions(6, t, max_pos, np.random.default_rng(3))
  rng = np.random.default_rng(3)
  for row in got:
    l = rng.integers(1, (t + 1) // 2 + 1)
    u = rng.integers(0, max_pos - t + 1)
    want = np.arange(t) + np.where(np.arange(t) >= l, u, 0)
    np.testing.assert_array_equal(row, want)


@pytest.mark.parametrize('chunks', [3, 5])
def test_pose_many_chunks_properties(chunks):
  t, max_pos, n = 16, 40, 300
  pos = sampling.pose_positions(n, t, max_pos, np.random.default_rng(0),
                                chunks=chunks)
  assert pos.min() >= 0 and pos.max() < max_pos
  for row in pos:
    step = np.diff(row)
    assert np.all(step >= 1)                      # skips never decrease
    breaks = np.flatnonzero(step > 1)
    assert len(breaks) <= chunks - 1
    assert row[0] == 0                             # u_0 = 0
    # Chunk lengths sum to T, and each chunk is consecutive.
    lengths = np.diff(np.concatenate([[0], breaks + 1, [t]]))
    assert lengths.sum() == t and np.all(lengths >= 1)


def test_pose_skips_are_drawn_one_after_another():
  # Three chunks, room R: the paper's u_2 ~ U{u_1 .. R} with u_1 ~ U{0 .. R}
  # has E[u_2] = E[(u_1 + R) / 2] = 3R/4; the largest of two sorted
  # independent draws has E = sum_k k ((k + 1)^2 - k^2) / (R + 1)^2 ~ 2R/3.
  t, room, n = 6, 400, 4000
  pos = sampling.pose_positions(n, t, room + t, np.random.default_rng(1),
                                chunks=3)
  last_skip = pos[:, -1] - (t - 1)
  k = np.arange(room + 1)
  sorted_mean = float(np.sum(k * ((k + 1) ** 2 - k ** 2)) / (room + 1) ** 2)
  se = last_skip.std() / math.sqrt(n)
  assert abs(last_skip.mean() - 0.75 * room) < 5 * se
  assert last_skip.mean() - sorted_mean > 10 * se


# -------------------------------------------------------------------- YaRN


def _hf_yarn(dim, base, factor, original, beta_fast=32.0, beta_slow=1.0,
             truncate=True, mscale=None, mscale_all_dim=None,
             attention_factor=None):
  """Hugging Face's yarn rope type, re-derived in numpy (float64) from its
  formulas: ``(inv_freq, attention_factor)``."""
  def m(s, c=1.0):
    return 1.0 if s <= 1 else 0.1 * c * math.log(s) + 1.0
  if attention_factor is None:
    if mscale and mscale_all_dim:
      attention_factor = m(factor, mscale) / m(factor, mscale_all_dim)
    else:
      attention_factor = m(factor)

  def dim_of(turns):
    return dim * math.log(original / (turns * 2 * math.pi)) / (
        2 * math.log(base))
  low, high = dim_of(beta_fast), dim_of(beta_slow)
  if truncate:
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, dim - 1)
  if low == high:
    high += 0.001
  pos_freqs = base ** (np.arange(0, dim, 2) / dim)
  extrapolation, interpolation = 1 / pos_freqs, 1 / (factor * pos_freqs)
  keep = 1 - np.clip((np.arange(dim // 2) - low) / (high - low), 0, 1)
  return interpolation * (1 - keep) + extrapolation * keep, attention_factor


def _rope_cfg(**fields):
  cfg = P.RoPE.default_config()
  cfg.update(scaling='yarn', **fields)
  return ml_collections.FrozenConfigDict(cfg)


YARN_CASES = {
    # Llama-3-style base and length, factor 8.
    'factor 8 L 8192': (128, 500000.0, dict(factor=8.0, original_max_len=8192),
                        {}),
    # DeepSeek-V3: factor 40, mscale = mscale_all_dim = 1 -> a = 1.
    'deepseek v3': (64, 10000.0, dict(factor=40.0, original_max_len=4096,
                                      mscale=1.0, mscale_all_dim=1.0),
                    dict(mscale=1.0, mscale_all_dim=1.0)),
    # mscale alone is ignored (mscale_all_dim unset): the paper's a.
    'mscale alone': (64, 10000.0, dict(factor=40.0, original_max_len=4096,
                                       mscale=0.707),
                     dict(mscale=0.707, mscale_all_dim=0)),
    'mscale ratio': (64, 10000.0, dict(factor=16.0, original_max_len=4096,
                                       mscale=0.707, mscale_all_dim=1.0),
                     dict(mscale=0.707, mscale_all_dim=1.0)),
    'truncate false': (64, 10000.0, dict(factor=4.0, original_max_len=2048,
                                         truncate=False),
                       dict(truncate=False)),
    'explicit factor': (32, 10000.0, dict(factor=4.0, original_max_len=512,
                                          attention_factor=1.25),
                        dict(attention_factor=1.25)),
}


@pytest.mark.parametrize('case', list(YARN_CASES))
def test_yarn_matches_hugging_face_formulas(case):
  dim, theta, fields, hf = YARN_CASES[case]
  inv, logit_scale = RS.scaled_frequencies(_rope_cfg(**fields), dim, theta)
  want_inv, want_a = _hf_yarn(dim, theta, fields['factor'],
                              fields['original_max_len'], **hf)
  np.testing.assert_allclose(np.asarray(inv), want_inv, rtol=2e-6)
  # lmx's scale is on the logits: q and k each get a, as cos/sin do there.
  assert logit_scale == pytest.approx(want_a ** 2, rel=1e-12)
  if case == 'deepseek v3':
    assert logit_scale == 1.0
  if case == 'truncate false':   # the fractional bounds move the ramp
    floored, _ = _hf_yarn(dim, theta, 4.0, 2048)
    assert np.abs(floored - want_inv).max() > 1e-4


def test_yarn_defaults_are_the_papers_factor():
  _, scale = RS.scaled_frequencies(_rope_cfg(factor=math.e,
                                             original_max_len=64), 16, 10000.0)
  assert scale == pytest.approx(1.1 ** 2)


@pytest.mark.parametrize('fields,names', [
    (dict(truncate=False, ramp='turns'), 'config.model.rope.truncate'),
    (dict(mscale=-1.0), 'config.model.rope.mscale'),
    (dict(attention_factor=-0.5), 'config.model.rope.attention_factor'),
    (dict(attention_factor=1e30), 'config.model.rope.attention_factor'),
])
def test_yarn_bad_options_are_refused(fields, names):
  c = tiny_model_config(position='rope', rope__scaling='yarn',
                        rope__factor=4.0, rope__original_max_len=16,
                        **{f'rope__{k}': v for k, v in fields.items()})
  with pytest.raises(ConfigError, match=names.replace('.', r'\.')):
    config_lib.validate(c)


def test_yarn_attention_factor_is_applied_once():
  # YaRN with a = 1.5 against NTK-by-parts (the same frequencies) whose
  # queries are multiplied by a^2: the logits are then the same, so the
  # outputs are; a factor applied twice (a^4) or not at all (1) is not.
  a = 1.5
  common = dict(position='rope', num_layers=1, rope__factor=4.0,
                rope__original_max_len=16)
  yarn = tiny_model_config(rope__scaling='yarn', rope__attention_factor=a,
                           **common)
  parts = tiny_model_config(rope__scaling='ntk_by_parts', **common)
  for c in (yarn, parts):
    config_lib.validate(c)
  t = 20
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 257, (1, t)),
                       jnp.int32)
  pos = jnp.arange(t, dtype=jnp.int32)[None]
  outs = []
  for q_factor in (a ** 2, a ** 4, 1.0):
    model = model_lib.build(parts.model, 0)
    kernel = model.blocks[0].attn.qkv.kernel
    d = kernel.shape[0]
    kernel[...] = kernel[...].at[:, :d].multiply(q_factor)
    outs.append(_forward(model, tokens, pos))
  got = _forward(model_lib.build(yarn.model, 0), tokens, pos)
  np.testing.assert_allclose(got, outs[0], atol=2e-5, rtol=1e-5)
  for wrong in outs[1:]:
    assert float(jnp.abs(got - wrong).max()) > 1e-3


# ---------------------------------------------------- Llama 4's temperature


def _llama4(**fields):
  section = LS.default_config()
  section.update(kind='llama4', floor_scale=4.0, attn_scale=0.5, **fields)
  return LS.build(ml_collections.ConfigDict({'length_scaling': section}),
                  'llama4')


def test_llama4_temperature_from_the_token_index():
  idx = jnp.arange(10)
  # By hand: 1 + 0.5 log(floor((i + 1) / 4) + 1).
  hand = np.array([1 + 0.5 * math.log((i + 1) // 4 + 1) for i in range(10)])
  contiguous = idx[None]
  shifted = contiguous + 37
  by_index, by_position = _llama4(), _llama4(llama4_from='position')
  for member in (by_index, by_position):  # contiguous: the two agree
    np.testing.assert_allclose(member.query_scale_at(contiguous, idx)[0], hand,
                               rtol=1e-6)
  np.testing.assert_allclose(by_index.query_scale_at(shifted, idx)[0], hand,
                             rtol=1e-6)
  hand_shifted = [1 + 0.5 * math.log((i + 38) // 4 + 1) for i in range(10)]
  np.testing.assert_allclose(by_position.query_scale_at(shifted, idx)[0],
                             hand_shifted, rtol=1e-6)


def _nope_llama4(**fields):
  c = tiny_model_config(position='none', num_layers=1,
                        length_scaling__kind='llama4',
                        length_scaling__floor_scale=4.0,
                        length_scaling__attn_scale=0.5,
                        **{f'length_scaling__{k}': v
                           for k, v in fields.items()})
  config_lib.validate(c)
  return model_lib.build(c.model, 0)


def test_llama4_model_follows_the_index_and_decodes_as_the_forward_pass():
  t, n_prompt, shift = 10, 7, 100
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, 257, (1, t)),
                       jnp.int32)
  pos = jnp.arange(t, dtype=jnp.int32)[None]
  model = _nope_llama4()
  full = _forward(model, tokens, pos)
  # NoPE reads no positions and the temperature follows the index: a shift
  # of every position changes nothing.
  np.testing.assert_allclose(_forward(model, tokens, pos + shift), full,
                             atol=1e-5)
  by_position = _nope_llama4(llama4_from='position')
  np.testing.assert_allclose(_forward(by_position, tokens, pos), full,
                             atol=1e-5)
  assert float(jnp.abs(_forward(by_position, tokens, pos + shift)
                       - full).max()) > 1e-3
  # KV-cache decoding at shifted positions: the temperature of each step is
  # that of its cache index, as in the full pass.
  graphdef, state = nnx.split(model)
  cache = model.init_cache(1, t)
  logits, cache = _jit_decode(graphdef, state, tokens[:, :n_prompt],
                              pos[:, :n_prompt] + shift, cache, True)
  steps = [logits]
  for i in range(n_prompt, t):
    logits, cache = _jit_decode(graphdef, state, tokens[:, i:i + 1],
                                pos[:, i:i + 1] + shift, cache, False)
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=1e-4)


# ---------------------------------------- memory slots under qk-norm, KeyNorm


def _layer_logits(position, qk_norm):
  """The first layer's logits over the keys (visible pairs) and over its
  memory slots, its turned queries, for large inputs and memory keys."""
  fields = {'position': position, 'num_layers': 1, 'sinks.memory': 3}
  if qk_norm:
    fields['layers.qk_norm'] = (True,)
  c = tiny_model_config(**fields)
  config_lib.validate(c)
  attn = model_lib.build(c.model, 0).blocks[0].attn
  attn.mem_k[...] = attn.mem_k[...] * 50.0
  t = 12
  x = 10.0 * jax.random.normal(jax.random.key(1), (2, t, c.model.d_model))
  graphdef, state = nnx.split(attn)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def run(state, x):
    attn = nnx.merge(graphdef, state)
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (2, t))
    idx = jnp.arange(t)
    q, k, v = attn._project(x, pos, idx)  # pylint: disable=protected-access
    near, far_branch = attn.branches(q, k, pos, pos)
    call = attn._call(near, far_branch, v, None, None)  # pylint: disable=protected-access
    _, logits = A.explicit(attn.spec, call, idx, idx)
    visible = attn.spec.mask(idx, idx)
    seq = jnp.where(visible[None, None], jnp.abs(logits), 0.0)
    raw = far.sink_prefix(near.q, None, attn.mem_k[...], attn.mem_v[...])
    return seq, call.prefix.logits, raw.logits, near.q

  return (*run(state, x), attn.head_dim)


@pytest.mark.parametrize('position,qk_norm', [
    ('rope', True), ('keynorm', True)])
def test_memory_logits_keep_the_qk_norm_bound(position, qk_norm):
  seq, mem, raw, _, head_dim = _layer_logits(position, qk_norm)
  bound = math.sqrt(head_dim) * (1 + 1e-5)
  assert float(seq.max()) <= bound
  assert float(jnp.abs(mem).max()) <= bound
  assert float(jnp.abs(raw).max()) > bound   # unnormalised, they exceed it


def test_memory_logits_keep_the_keynorm_bound():
  # KeyNorm alone: logit = q . k / |k| lies in [-|q|, |q|] for every key.
  seq, mem, raw, q, _ = _layer_logits('keynorm', False)
  q_norm = jnp.linalg.norm(q.astype(jnp.float32), axis=-1)   # [B, T, H]
  bound = jnp.transpose(q_norm, (0, 2, 1))[..., None] * (1 + 1e-5)
  assert bool(jnp.all(seq <= bound))
  assert bool(jnp.all(jnp.abs(mem) <= bound))
  assert not bool(jnp.all(jnp.abs(raw) <= bound))
