"""Dual Chunk Attention (lmx.positions.dca) and STRING (lmx.positions.
string_shift): their relative-distance matrices against hand-worked rows
and a naive reimplementation of the papers' cases, their RoPE logits against
a pair-by-pair computation at those positions, the chunked backend against
the dense one, decoding against the forward pass, plain attention where
they change nothing, causality, their setup for a length and the refusals.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import FAST_COMPILE, decode_steps, tiny_model_config
from lmx import positions as P
from lmx.config import validate as config_lib
from lmx.errors import ConfigError
from lmx.evaluation import extensions
from lmx.model import attention as A
from lmx.model import transformer as model_lib
from lmx.positions import dca as D
from lmx.positions import far as F
from lmx.positions import string_shift as S


# ------------------------------------------------------ naive definitions


def naive_dca(t, s, w):
  """``(query position, key position)`` of every causal pair ``[t, t, 2]``
  by the paper's three cases, written out with loops (Sec. 3: intra
  ``(i mod s, j mod s)``, successive ``(min(s + i mod s, s + w), j mod s)``,
  inter ``(s + w, j mod s)``); -1 above the diagonal."""
  out = np.full((t, t, 2), -1)
  for i in range(t):
    for j in range(i + 1):
      ci, cj = i // s, j // s
      if ci == cj:
        qp = i % s
      elif ci == cj + 1:
        qp = min(s + i % s, s + w)
      else:
        qp = s + w
      out[i, j] = qp, j % s
  return out


def naive_string(t, offset, local):
  """STRING's relative distance of every causal pair (Sec. 4): ``d`` below
  the offset, ``d - S + W`` from it on; -1 above the diagonal."""
  out = np.full((t, t), -1)
  for i in range(t):
    for j in range(i + 1):
      d = i - j
      out[i, j] = d if d < offset else d - offset + local
  return out


def _distances(rule, t):
  """The relative distance the model's rule gives each causal pair."""
  pos = jnp.arange(t)[None]
  near = np.subtract.outer(np.arange(t), np.arange(t))
  if isinstance(rule, D.DualChunk):
    which = np.asarray(rule.select(pos, pos))[0]
    fars = [np.subtract.outer(np.asarray(q)[0], np.asarray(k)[0])
            for q, k in rule.branch_positions(pos, pos)]
    d = near.copy()
    for i, f in enumerate(fars, 1):
      d = np.where(which == i, f, d)
  else:
    q, k = rule.far_positions(pos, pos)
    d = np.where(near >= rule.window,
                 np.subtract.outer(np.asarray(q)[0], np.asarray(k)[0]), near)
  return np.where(np.tril(np.ones((t, t), bool)), d, -1)


# ------------------------------------------------------ position matrices


def test_dca_defaults_and_rows_by_hand():
  # L = 8: the code's chunk_size 3 * 8 // 4 = 6, local 8 // 8 = 1, so the
  # chunk length s = 6 - 1 = 5 and the top query position s + w = 6.
  assert D.dca_params(8) == (5, 1)
  assert D.dca_params(4096) == (2560, 512)   # 3072 - 512
  d = _distances(D.DualChunk(5, 1), 20)
  # Query 11 (chunk 2, 11 mod 5 = 1): keys 0-4 inter (6 - k), 5-9
  # successive (min(5 + 1, 6) - (k mod 5)), 10-11 its own chunk.
  np.testing.assert_array_equal(d[11, :12],
                                [6, 5, 4, 3, 2, 6, 5, 4, 3, 2, 1, 0])
  # Query 13 (13 mod 5 = 3): successive query position min(8, 6) = 6.
  np.testing.assert_array_equal(d[13, :14],
                                [6, 5, 4, 3, 2, 6, 5, 4, 3, 2, 3, 2, 1, 0])
  # Query 19 (chunk 3, 19 mod 5 = 4): chunks 0 and 1 inter, chunk 2
  # successive, chunk 3 its own.
  np.testing.assert_array_equal(
      d[19], [6, 5, 4, 3, 2] * 3 + [4, 3, 2, 1, 0])
  # Query 5 (chunk 1, 5 mod 5 = 0 < w): successive at 5, the true distance.
  np.testing.assert_array_equal(d[5, :6], [5, 4, 3, 2, 1, 0])
  assert d.max() == 6    # never past s + w


@pytest.mark.parametrize('t,s,w', [(20, 5, 1), (20, 6, 2), (23, 4, 4),
                                   (9, 3, 0)])
def test_dca_matrix_against_the_papers_cases(t, s, w):
  want = naive_dca(t, s, w)
  d = _distances(D.DualChunk(s, w), t)
  causal = np.tril(np.ones((t, t), bool))
  np.testing.assert_array_equal(d[causal], (want[..., 0] - want[..., 1])[
      causal])
  for i in range(t):
    for j in range(i + 1):
      assert D.dca_positions(i, j, s, w) == tuple(want[i, j]), (i, j)


def test_string_rows_by_hand_and_against_the_paper():
  # S = 6, W = 2: distances 6.. scored at d - 4.
  d = _distances(S.Shift(6, 2), 12)
  np.testing.assert_array_equal(d[11],
                                [7, 6, 5, 4, 3, 2, 5, 4, 3, 2, 1, 0])
  np.testing.assert_array_equal(d[6, :7], [2, 5, 4, 3, 2, 1, 0])
  for t, offset, local in ((12, 6, 2), (20, 7, 3), (9, 9, 1)):
    np.testing.assert_array_equal(_distances(S.Shift(offset, local), t),
                                  naive_string(t, offset, local))


def test_string_defaults():
  # The code's Llama 3.1 setting: L = n = 131072, S = int(0.33 n) = 43253
  # (its README), W = 128.
  assert S.string_params(131072, 131072) == (43253, 128)
  # A small model: W = 64 // 8 = 8; n = 64: S = int(21.12) = 21.
  assert S.string_params(64, 64) == (21, 8)
  # n = 256 > L = 64: int(0.33 * 256) = 84 would leave distance
  # 255 - 84 + 8 = 179 > 63; S = 256 - 64 + 8 = 200 gives 63.
  offset, local = S.string_params(64, 256)
  assert (offset, local) == (200, 8)
  assert 255 - offset + local == 63


def test_extensions_set_them_up():
  c = tiny_model_config()
  c.train.seq_len = 64
  m = extensions.method_config(c, 'dca', 256).model
  assert (m.dca.chunk, m.dca.local) == (40, 8)   # 48 - 8, 64 // 8
  m = extensions.method_config(c, 'string', 64).model
  assert (m.string.offset, m.string.local) == (21, 8)
  for method in ('dca', 'string'):
    config_lib.validate(extensions.method_config(c, method, 256))


# ------------------------------------------------------- logits (RoPE)


def _rope_scores(rule, t=19, h=2, k=8, seed=3):
  """(``attention.scores`` under ``rule``, the queries and keys, rot)."""
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(1, t, h, k)), jnp.float32)
  kk = jnp.asarray(rng.normal(size=(1, t, h, k)), jnp.float32)
  pos = jnp.arange(t, dtype=jnp.int32)[None]
  inv = P.rope_inv_freq(k)
  rot = lambda x, p: P.apply_rope(x, p, inv)
  near = A.Branch(rot(q, pos), rot(kk, pos), pos, pos)
  if isinstance(rule, D.DualChunk):
    far = tuple(A.Branch(rot(q, fq), rot(kk, fk), fq, fk)
                for fq, fk in rule.branch_positions(pos, pos))
  else:
    fq, fk = rule.far_positions(pos, pos)
    far = A.Branch(rot(q, fq), rot(kk, fk), fq, fk)
  spec = A.Spec(far=rule)
  got = np.asarray(A.scores(spec, A.Call(near, None, far)))[0]
  return got, q, kk, rot


@pytest.mark.parametrize('rule', [D.DualChunk(5, 2), S.Shift(7, 3)])
def test_rope_logits_at_the_papers_positions(rule):
  t = 19
  got, q, kk, rot = _rope_scores(rule, t)
  if isinstance(rule, D.DualChunk):
    pairs = naive_dca(t, rule.chunk, rule.local)
  for i in range(t):
    for j in range(i + 1):
      if isinstance(rule, D.DualChunk):
        qp, kp = pairs[i, j]
      else:   # STRING: any positions at the shifted distance
        qp, kp = 40, 40 - naive_string(t, rule.window, rule.local)[i, j]
      qi = rot(q[:, i:i + 1], jnp.full((1, 1), qp))
      kj = rot(kk[:, j:j + 1], jnp.full((1, 1), kp))
      want = np.einsum('hk,hk->h', qi[0, 0], kj[0, 0]) / np.sqrt(q.shape[-1])
      np.testing.assert_allclose(got[:, i, j], want, atol=2e-5, rtol=0,
                                 err_msg=f'{rule} i={i} j={j}')


# --------------------------------------------------------- whole models

DCA = {'dca.chunk': 5, 'dca.local': 2}
STRING = {'string.offset': 7, 'string.local': 3}


def _cfg(position='rope', backend='dense', **fields):
  c = tiny_model_config(position=position, attention=backend,
                        attention_block=8, num_layers=2, **fields)
  config_lib.validate(c)
  return c


def _forward(cfgs, tokens, pos):
  """Logits of every config's model (seed 0) in one jitted call."""
  parts = [nnx.split(model_lib.build(c.model, 0)) for c in cfgs]

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def run(states):
    return [nnx.merge(g, s)(tokens, pos) for (g, _), s in zip(parts, states)]

  return run([s for _, s in parts])


def _tokens(t, seed=0, b=2):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(0, 257, (b, t)), jnp.int32)


def test_chunked_equals_dense_and_plain_up_to_the_chunk():
  t = 37
  tokens = _tokens(t)
  # Positions with gaps, as the backends must agree on any positions.
  rng = np.random.default_rng(1)
  pos = jnp.asarray(np.stack([np.sort(rng.choice(3 * t, t, replace=False))
                              for _ in range(2)]), jnp.int32)
  arange = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (2, t))
  # Shaw's content term adds each branch's share of the values too.
  cases = [('rope', DCA), ('alibi', DCA), ('rope', STRING),
           ('alibi', STRING), ('shaw', DCA)]
  cfgs = [_cfg(enc, backend, **{k.replace('.', '__'): v
                                for k, v in extra.items()})
          for enc, extra in cases for backend in ('dense', 'chunked')]
  out = _forward(cfgs, tokens, pos)
  for n, (enc, extra) in enumerate(cases):
    dense, chunked = out[2 * n], out[2 * n + 1]
    scale = max(1.0, float(jnp.abs(dense).max()))
    assert float(jnp.abs(chunked - dense).max()) <= 1e-5 * scale, (enc, extra)
  # Within the first chunk / below the offset every pair is near: exactly
  # plain attention; past it, not.
  short = 5
  plain = _forward([_cfg('rope'), _cfg('rope', 'chunked')],
                   tokens[:, :short], arange[:, :short])
  for n, (enc, extra) in enumerate(cases):
    if enc != 'rope':
      continue
    for b in (0, 1):   # dense, chunked
      got = _forward([cfgs[2 * n + b]], tokens[:, :short],
                     arange[:, :short])[0]
      np.testing.assert_array_equal(got, plain[b], err_msg=str(extra))
  longer = _forward([_cfg('rope'), cfgs[0], cfgs[4]], tokens, arange)
  for other in longer[1:]:
    assert float(jnp.abs(other - longer[0]).max()) > 1e-3


@pytest.mark.parametrize('extra', [DCA, STRING])
def test_decoding_equals_the_forward_pass_and_is_causal(extra):
  fields = {k.replace('.', '__'): v for k, v in extra.items()}
  model = model_lib.build(_cfg(**fields).model, 0)
  t, n_prompt = 17, 4
  tokens = _tokens(t, seed=2, b=1)
  pos = jnp.arange(t, dtype=jnp.int32)[None]
  full = model(tokens, pos)
  got, _ = decode_steps(model, tokens, n_prompt)
  np.testing.assert_allclose(got, full, atol=1e-5, rtol=0)
  # Causal: later tokens changed, earlier logits unchanged.
  changed = tokens.at[:, 12:].set((tokens[:, 12:] + 1) % 257)
  np.testing.assert_allclose(model(changed, pos)[:, :12], full[:, :12],
                             atol=1e-6, rtol=0)


# ------------------------------------------------------------- refusals


@pytest.mark.parametrize('fields,words', [
    ({'dca__chunk': 4, 'dca__local': 5}, 'config.model.dca.local'),
    ({'dca__local': 3}, 'config.model.dca.local'),
    ({'string__offset': 4, 'string__local': 4}, 'config.model.string.local'),
    ({'string__local': 4}, 'config.model.string.local'),
    ({'dca__chunk': 5, 'position': 'learned'}, 'config.model.dca.chunk'),
    ({'string__offset': 5, 'string__local': 2, 'position': 'sinusoidal'},
     'config.model.string.offset'),
    ({'dca__chunk': 5, 'string__offset': 9, 'string__local': 2},
     'config.model.dca.chunk'),
    ({'dca__chunk': 5, 'attention': 'flash'}, 'Dual Chunk Attention'),
    ({'string__offset': 5, 'string__local': 2, 'attention': 'flash'},
     'STRING'),
])
def test_bad_settings_are_refused(fields, words):
  c = tiny_model_config(**fields)
  with pytest.raises(ConfigError, match=words.replace('.', r'\.')):
    config_lib.validate(c)


def test_auto_and_flash_fall_back_for_several_far_branches():
  shape = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
  ipos = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)
  br = A.Branch(shape(1, 8, 1, 16), shape(1, 8, 1, 16), ipos(1, 8),
                ipos(1, 8))
  call = A.Call(br, shape(1, 8, 1, 16), (br, br))
  for backend in ('flash', 'auto'):
    spec = A.Spec(far=D.DualChunk(5, 1), backend=backend)
    assert A.choose(spec, call).name in ('dense', 'chunked'), backend
  assert 'far' in A.FLASH.unavailable(A.Spec(far=D.DualChunk(5, 1)), call)
  for name, rules in (('dca', D.DualChunkAttention), ('string', S.String)):
    member = F.REGISTRY[name]
    assert issubclass(member, rules) and issubclass(member, F.Member)
    assert member.name == name and member.far_switch in member.FIELDS
