"""lmx.model.attention: the chunked backend against the dense one, the masks and
distance clamps as properties, skipped tiles, and the config checks.

Tiny models (one layer, d_model 32, two heads) and tiles of 8 tokens, so a
37-token sequence has many tiles and a ragged last one. XLA compile time is
most of the cost here, so each comparison compiles every encoding (and both
backends) into one jitted function.
"""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import base
from lmx.model import attention as A
from lmx.positions import far as F
from lmx.positions import length_scaling as LS
import attention_calls as AC
from lmx.config import validate as config_lib
from lmx.model import transformer as model_lib
from lmx import positions as P
from helpers import FAST_COMPILE

ENCODINGS = sorted(P.REGISTRY)
# Encodings whose content term is not tiled (CoPE's counts couple the keys):
# they refuse the chunked backend, so the comparisons leave them out
# (tests/test_shaw_fox_cope.py checks the refusal).
DENSE_ONLY = ('cope',)
CHUNKABLE = [e for e in ENCODINGS if e not in DENSE_ONLY]
ROTARY = [e for e in ENCODINGS if P.REGISTRY[e].rotary]
BLOCK = 8
LENGTHS = (1, 7, 37)   # none a multiple of BLOCK
B, V = 2, 257
TOL = 1e-5

# Attention settings compared between the backends (config.model fields).
VARIANTS = {
    'causal': {},
    # n_local 5 with tiles of 8: the Lambda path that visits only the global
    # tile and the few local ones (fewer than the 5 tiles of 37 keys).
    'lambda': {'lm_infinite.n_global': 2, 'lm_infinite.n_local': 5},
    'lambda_limit': {'lm_infinite.n_global': 2, 'lm_infinite.n_local': 5,
                     'lm_infinite.distance_limit': 9},
    'rerope': {'rerope.window': 5},
    'leaky_rerope': {'rerope.window': 5, 'rerope.leak': 0.25},
    # Self-Extend's grouped positions, a far branch of integer positions.
    'self_extend': {'self_extend.window': 5, 'self_extend.group': 3},
    # ReRoPE with log-n query scaling, as the ReRoPE author's patch runs it.
    'rerope_logn': {'rerope.window': 5, 'length_scaling.kind': 'logn',
                    'length_scaling.base_len': 8},
    # RoPE settings that change the rotation: LongRoPE past its L (the
    # positions of _inputs(37) reach past 16), partial rotary with p-RoPE.
    'longrope': {'rope.scaling': 'longrope', 'rope.factor': 4.0,
                 'rope.original_max_len': 16,
                 'rope.long_factor': (1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 4.0, 4.0)},
    'partial_p_rope': {'rope.partial': 0.5, 'rope.p': 0.75},
}
# Seen from the attention, an encoding does nothing there (none, learned,
# sinusoidal: they act on the embedding), turns q and k (rope, xpos) or adds
# a bias, learned (t5, kerple) or fixed (alibi). Every encoding is compared
# at the multi-tile length; a rotary one and one with a learned bias also at
# the single-tile lengths and with the Lambda mask alone (without the
# distance limit). XLA compile time sets the budget: each backward pass of
# the chunked backend takes about a second to compile.
REPRESENTATIVE = ('rope', 't5')
MULTI_TILE = 37


def _cases(variant):
  """{encoding: lengths} compared under ``variant``."""
  if variant == 'causal':
    return {e: LENGTHS if e in REPRESENTATIVE else (MULTI_TILE,)
            for e in CHUNKABLE}
  if variant == 'lambda':
    return {e: (MULTI_TILE,) for e in REPRESENTATIVE}
  if variant == 'lambda_limit':
    return {e: (MULTI_TILE,) for e in CHUNKABLE}
  if variant == 'self_extend':
    return {e: (MULTI_TILE,) for e in REPRESENTATIVE}
  if variant in ('rerope_logn', 'longrope', 'partial_p_rope'):
    return {'rope': (MULTI_TILE,)}
  return {e: (MULTI_TILE,) for e in ROTARY}   # rerope, leaky_rerope


def _set(node, path, value):
  *parents, leaf = path.split('.')
  for p in parents:
    node = node[p]
  node[leaf] = value


def _config(position, backend='dense', block=BLOCK, **fields):
  """The tiny config with one layer; ``fields`` are config.model paths with
  '__' for '.' (e.g. ``rerope__window=5``) or a dict under ``model``."""
  c = base.get_config('size=tiny')
  c.model.position = position
  c.model.attention = backend
  c.model.attention_block = block
  c.model.num_layers = 1
  for path, value in fields.items():
    _set(c.model, path.replace('__', '.'), value)
  return c


def _variant_config(position, backend, variant, block=BLOCK):
  return _config(position, backend, block, **{
      k.replace('.', '__'): v for k, v in VARIANTS[variant].items()})


def _split(cfg):
  model = model_lib.build(cfg.model, seed=0)
  return nnx.split(model, nnx.Param, ...)


def _inputs(t, seed=0):
  """Tokens, targets and sorted positions with gaps (not arange: the
  backends must agree on positions that are not token indices)."""
  rng = np.random.default_rng(seed + t)
  tokens = rng.integers(0, V, (B, t + 1))
  pos = np.stack([np.sort(rng.choice(3 * t + 5, t, replace=False))
                  for _ in range(B)])
  return (jnp.asarray(tokens[:, :-1], jnp.int32),
          jnp.asarray(tokens[:, 1:], jnp.int32), jnp.asarray(pos, jnp.int32))


def _max_abs(x):
  return float(jnp.max(jnp.abs(x))) if x.size else 0.0


def _loss_and_grads(cfgs, lengths):
  """For every config and each of its lengths: (loss, logits, grads w.r.t.
  all params) of the mean cross-entropy, all in one jitted call."""
  parts = [_split(c) for c in cfgs]
  graphdefs = [g for g, _, _ in parts]

  def loss(graphdef, params, rest, x, y, pos):
    logits = nnx.merge(graphdef, params, rest)(x, pos)
    return model_lib.cross_entropy(logits, y).mean(), logits

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def run(params, rests, data):
    return [[jax.value_and_grad(functools.partial(loss, g), has_aux=True)(
        p, r, *data[t]) for t in ts]
            for g, p, r, ts in zip(graphdefs, params, rests, lengths)]

  data = {t: _inputs(t) for t in set(sum(map(tuple, lengths), ()))}
  return run([p for _, p, _ in parts], [r for _, _, r in parts], data), [
      p for _, p, _ in parts]


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_chunked_equals_dense_forward_and_gradients(variant):
  cases = _cases(variant)
  encodings = sorted(cases)
  cfgs, lengths = [], []
  for enc in encodings:
    for backend in ('dense', 'chunked'):
      cfg = _variant_config(enc, backend, variant)
      config_lib.validate(cfg)   # a setting users can actually choose
      cfgs.append(cfg)
      lengths.append(cases[enc])
  results, params = _loss_and_grads(cfgs, lengths)
  checked_bias_grads = 0
  for n, enc in enumerate(encodings):
    dense, chunked = results[2 * n], results[2 * n + 1]
    # The same seed gives both models the same parameters.
    for a, b in zip(jax.tree.leaves(params[2 * n]),
                    jax.tree.leaves(params[2 * n + 1])):
      np.testing.assert_array_equal(a, b)
    for t, ((ld, logits_d), gd), ((lc, logits_c), gc) in zip(
        cases[enc], dense, chunked):
      where = f'{enc} {variant} T={t}'
      scale = max(1.0, _max_abs(logits_d))
      assert _max_abs(logits_c - logits_d) <= TOL * scale, where
      assert abs(float(lc - ld)) <= TOL * max(1.0, abs(float(ld))), where
      flat_d = jax.tree_util.tree_leaves_with_path(gd)
      flat_c = dict(jax.tree_util.tree_leaves_with_path(gc))
      grad_scale = max(_max_abs(g) for _, g in flat_d)
      assert grad_scale > 0, where
      for path, g_d in flat_d:
        g_c = flat_c[path]
        # Relative to this parameter's own gradient, floored at a
        # thousandth of the largest one (a parameter with a vanishing
        # gradient has no scale of its own).
        # A gradient that is zero by symmetry (FIRE's output bias, added to
        # every logit of a head, cancels in the softmax) is rounding noise
        # in both backends: an absolute slack of 1e-6 of the largest.
        leaf_scale = max(_max_abs(g_d), 1e-3 * grad_scale)
        err = _max_abs(g_c - g_d)
        name = jax.tree_util.keystr(path)
        assert err <= TOL * leaf_scale + 1e-6 * grad_scale, (
            where, name, err, leaf_scale)
        if 'position' in name and _max_abs(g_d) > 0:
          checked_bias_grads += 1
  if set(encodings) & {'t5', 'kerple', 'learned'}:
    # The encodings' own parameters got (and matched) nonzero gradients.
    assert checked_bias_grads > 0


@pytest.mark.parametrize('variant', ['causal', 'lambda', 'lambda_limit',
                                     'leaky_rerope'])
def test_chunked_attention_queries_the_last_t_keys(variant):
  """T < S at the chunked_attention level, against the dense backend and a
  numpy brute force: queries are the last T of S keys. q and k are turned
  by RoPE, and an ALiBi bias is added except under Leaky ReRoPE (whose
  fractional far positions are for rotary encodings only)."""
  s, h, k = 37, 2, 8
  mask = A.Mask(2, 6) if 'lambda' in variant else A.Mask()
  clamp = {'lambda_limit': F.Clamp(9), 'leaky_rerope': F.Clamp(9, 0.25)}.get(
      variant)
  with_bias = variant != 'leaky_rerope'
  rng = np.random.default_rng(3)
  q_full = jnp.asarray(rng.normal(size=(B, s, h, k)), jnp.float32)
  k_all = jnp.asarray(rng.normal(size=(B, s, h, k)), jnp.float32)
  v_all = jnp.asarray(rng.normal(size=(B, s, h, k)), jnp.float32)
  pos_s = jnp.asarray(np.sort(rng.choice(80, (B, s), replace=False), axis=1),
                      jnp.int32)
  inv_freq = P.rope_inv_freq(k)
  slopes = P.alibi_slopes(h)
  bias_fn = (lambda qp, kp: P.alibi_bias(qp, kp, slopes)) if with_bias else None
  lengths = (1, 13)    # (T = S is the model-level comparison above)

  def branches(t):
    q, q_pos = q_full[:, s - t:], pos_s[:, s - t:]
    near = A.Branch(P.apply_rope(q, q_pos, inv_freq),
                    P.apply_rope(k_all, pos_s, inv_freq), q_pos, pos_s)
    if clamp is None:
      return near, None
    fq, fk = clamp.far_positions(q_pos, pos_s)
    return near, A.Branch(P.apply_rope(q, fq, inv_freq),
                          P.apply_rope(k_all, fk, inv_freq), fq, fk)

  window = clamp.window if clamp else 0

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def run():
    out = {}
    for t in lengths:
      near, far = branches(t)
      kw = dict(bias_fn=bias_fn, mask=mask, far=far, window=window)
      out[t] = (AC.run('chunked', near, v_all, block=BLOCK, **kw),
                AC.run('dense', near, v_all, **kw))
    return out

  results = run()
  for t in lengths:
    chunked, dense = results[t]
    assert chunked.shape == (B, t, h, k)
    np.testing.assert_allclose(chunked, dense, atol=TOL, rtol=0,
                               err_msg=f'{variant} T={t}')
  # The brute force: every logit from its definition, with python loops.
  t = 13
  near, far = jax.tree.map(np.asarray, branches(t))
  expected = np.zeros((B, t, h, k))
  for b in range(B):
    for hh in range(h):
      for i in range(t):
        qi = s - t + i     # token index of query i
        logits, values = [], []
        for j in range(s):
          if not _visible_python(qi, j, mask.n_global, mask.n_local):
            continue
          d = int(near.q_pos[b, i]) - int(near.k_pos[b, j])
          br = far if (clamp is not None and d >= window) else near
          dist = float(br.q_pos[b, i]) - float(br.k_pos[b, j])
          logits.append(br.q[b, i, hh] @ br.k[b, j, hh] / np.sqrt(k)
                        - with_bias * slopes[hh] * abs(dist))
          values.append(np.asarray(v_all)[b, j, hh])
        w = np.exp(np.array(logits) - max(logits))
        expected[b, i, hh] = (w / w.sum()) @ np.array(values)
  np.testing.assert_allclose(results[t][0], expected, atol=1e-5, rtol=0)


# ------------------------------------------------------- dense query blocks


@pytest.mark.parametrize('t', [1, 2, 127, 128, 255, 256, 257, 383, 512, 4099])
def test_dense_query_blocks_partition_the_queries(t):
  blocks = A.dense_query_blocks(t)
  assert blocks[0][0] == 0 and blocks[-1][1] == t
  assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
  assert len(blocks) == max(1, min(A.DENSE_MAX_BLOCKS, t // A.DENSE_BLOCK_ROWS))
  sizes = [hi - lo for lo, hi in blocks]
  assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def _one_block(monkeypatch):
  monkeypatch.setattr(A, 'DENSE_MAX_BLOCKS', 1)


def _blocks_of(monkeypatch, rows):
  monkeypatch.setattr(A, 'DENSE_MAX_BLOCKS', 4)
  monkeypatch.setattr(A, 'DENSE_BLOCK_ROWS', rows)


@pytest.mark.parametrize('variant', ['causal', 'lambda', 'lambda_limit',
                                     'leaky_rerope'])
def test_blocked_dense_equals_one_block(monkeypatch, variant):
  """The dense backend's query blocks (each against the keys up to its last
  query) give the unblocked attention, forward and backward, for T = S and
  for queries that are the last T of S keys."""
  s, h, k = 37, 2, 8
  mask = A.Mask(2, 6) if 'lambda' in variant else A.Mask()
  clamp = {'lambda_limit': F.Clamp(9), 'leaky_rerope': F.Clamp(9, 0.25)}.get(
      variant)
  slopes = P.alibi_slopes(h)
  bias_fn = (None if variant == 'leaky_rerope' else
             (lambda qp, kp: P.alibi_bias(qp, kp, slopes)))
  inv_freq = P.rope_inv_freq(k)
  rng = np.random.default_rng(5)
  q_all, k_all, v_all, w_all = (
      jnp.asarray(rng.normal(size=(B, s, h, k)), jnp.float32) for _ in range(4))
  pos = jnp.asarray(np.sort(rng.choice(90, (B, s), replace=False), axis=1),
                    jnp.int32)

  def out(q_all, k_all, v_all, t):
    q, q_pos = q_all[:, s - t:], pos[:, s - t:]
    near = A.Branch(P.apply_rope(q, q_pos, inv_freq),
                    P.apply_rope(k_all, pos, inv_freq), q_pos, pos)
    far = None
    if clamp is not None:
      fq, fk = clamp.far_positions(q_pos, pos)
      far = A.Branch(P.apply_rope(q, fq, inv_freq),
                     P.apply_rope(k_all, fk, inv_freq), fq, fk)
    return AC.run('dense', near, v_all, bias_fn=bias_fn, mask=mask,
                     far=far, window=clamp.window if clamp else 0)

  def run():
    res = {}
    for t in (37, 29):
      loss = lambda *qkv, t=t: jnp.sum(out(*qkv, t) * w_all[:, s - t:])
      res[t] = (out(q_all, k_all, v_all, t),
                jax.grad(loss, argnums=(0, 1, 2))(q_all, k_all, v_all))
    return res

  _one_block(monkeypatch)
  assert len(A.dense_query_blocks(37)) == 1
  whole = jax.jit(run, compiler_options=FAST_COMPILE)()
  _blocks_of(monkeypatch, 8)
  assert len(A.dense_query_blocks(37)) == 4 and len(A.dense_query_blocks(29)) == 3
  blocked = jax.jit(run, compiler_options=FAST_COMPILE)()
  for t in whole:
    for a, b in zip(jax.tree.leaves(whole[t]), jax.tree.leaves(blocked[t])):
      assert _max_abs(b) > 0
      np.testing.assert_allclose(b, a, atol=TOL * _max_abs(a), rtol=0,
                                 err_msg=f'{variant} T={t}')


def test_blocked_dense_model_equals_one_block(monkeypatch):
  """Every encoding through the model with query blocks of 8 rows (5 blocks
  capped at 4 for 37 tokens), against one block: logits, loss and every
  gradient, the learned biases' (summed over the blocks) included."""
  cfgs = [_config(enc) for enc in ENCODINGS]
  lengths = [(MULTI_TILE,)] * len(cfgs)
  _one_block(monkeypatch)
  whole, _ = _loss_and_grads(cfgs, lengths)
  _blocks_of(monkeypatch, 8)
  blocked, _ = _loss_and_grads(cfgs, lengths)
  checked_bias_grads = 0
  for enc, [((l1, x1), g1)], [((l2, x2), g2)] in zip(ENCODINGS, whole, blocked):
    assert _max_abs(x2 - x1) <= TOL * max(1.0, _max_abs(x1)), enc
    assert abs(float(l2 - l1)) <= TOL * abs(float(l1)), enc
    flat1 = jax.tree_util.tree_leaves_with_path(g1)
    flat2 = dict(jax.tree_util.tree_leaves_with_path(g2))
    scale = max(_max_abs(g) for _, g in flat1)
    for path, a in flat1:
      err = _max_abs(flat2[path] - a)
      name = jax.tree_util.keystr(path)
      # (A gradient zero by symmetry, FIRE's output bias, is rounding
      # noise: an absolute slack of 1e-6 of the largest.)
      assert err <= TOL * max(_max_abs(a), 1e-3 * scale) + 1e-6 * scale, (
          enc, name, err)
      checked_bias_grads += 'position' in name and _max_abs(a) > 0
  assert checked_bias_grads >= 2   # t5's table, kerple's parameters


# ------------------------------------------------------------- properties


def _forward_all(cfgs, t, tokens=None, seed=0):
  """Logits ``[N, B, T, V]`` of every config for each of the N token arrays
  (default: one), all in one jitted call (vmapped over the token arrays,
  so each model compiles once)."""
  parts = [_split(c) for c in cfgs]
  if tokens is None:
    tokens = [_inputs(t, seed)[0]]
  pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (B, t))
  graphdefs = [g for g, _, _ in parts]

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def run(states, tokens_NxBxT):
    return [jax.vmap(lambda tok, g=g, p=p, r=r: nnx.merge(g, p, r)(tok, pos))(
        tokens_NxBxT) for g, (p, r) in zip(graphdefs, states)]

  return run([(p, r) for _, p, r in parts], jnp.stack(tokens))


@pytest.mark.parametrize('backend', ['dense', 'chunked'])
def test_lambda_mask_with_n_local_at_least_t_is_causal(backend):
  t = 37
  cfgs, names = [], []
  for enc in ('alibi', 'rope'):
    for n_global, n_local in ((0, 0), (0, t), (3, t), (3, t + 20), (3, 9)):
      cfgs.append(_config(enc, backend, lm_infinite__n_global=n_global,
                          lm_infinite__n_local=n_local))
      names.append((enc, n_global, n_local))
  logits = [x[0] for x in _forward_all(cfgs, t)]
  for enc_i in range(2):
    plain = logits[5 * enc_i]
    for k in (1, 2, 3):
      np.testing.assert_allclose(logits[5 * enc_i + k], plain, atol=1e-6,
                                 rtol=0, err_msg=str(names[5 * enc_i + k]))
    # A window shorter than the sequence does change the model: the check
    # above can fail.
    assert _max_abs(logits[5 * enc_i + 4] - plain) > 1e-3


@pytest.mark.parametrize('backend', ['dense', 'chunked'])
def test_rerope_window_at_least_t_is_rope(backend):
  t = 37
  settings = ((0, 0.0), (t, 0.0), (t, 0.5), (t + 50, 0.25), (6, 0.0))
  cfgs = [_config('rope', backend, rerope__window=w, rerope__leak=leak)
          for w, leak in settings]
  logits = [x[0] for x in _forward_all(cfgs, t)]
  for k in (1, 2, 3):
    np.testing.assert_allclose(logits[k], logits[0], atol=1e-6, rtol=0,
                               err_msg=str(settings[k]))
  assert _max_abs(logits[4] - logits[0]) > 1e-3


@pytest.mark.parametrize('backend', ['dense', 'chunked'])
def test_self_extend_window_at_least_t_or_group_one_is_plain(backend):
  # Within the neighbour window nothing changes, and G = 1 groups nothing.
  t = 37
  settings = ((0, 2), (t, 3), (5, 1), (t + 10, 4), (5, 3))
  for enc in ('rope', 'alibi'):
    cfgs = [_config(enc, backend, self_extend__window=w, self_extend__group=g)
            for w, g in settings]
    logits = [x[0] for x in _forward_all(cfgs, t)]
    for k in (1, 2, 3):
      np.testing.assert_allclose(logits[k], logits[0], atol=1e-6, rtol=0,
                                 err_msg=f'{enc} {settings[k]}')
    assert _max_abs(logits[4] - logits[0]) > 1e-3, enc


def test_self_extend_far_positions_by_hand():
  # W = 4, G = 3: query q -> q // 3 + 4 - 4 // 3 = q // 3 + 3, key k -> k // 3.
  se = F.SelfExtend(4, 3)
  q = jnp.array([[4, 10, 35]])
  k = jnp.array([[0, 2, 9]])
  fq, fk = se.far_positions(q, k)
  np.testing.assert_array_equal(fq, [[4, 6, 14]])
  np.testing.assert_array_equal(fk, [[0, 0, 3]])
  assert jnp.issubdtype(fq.dtype, jnp.integer)
  # Distance W = 4 (q 4, k 0) maps to 4: the grouped distances go on where
  # the neighbour ones stop. Every pair, against the formula.
  pos = jnp.arange(60)[None]
  fq, fk = se.far_positions(pos, pos)
  d = np.asarray(fq)[0][:, None] - np.asarray(fk)[0][None, :]
  i, j = np.meshgrid(np.arange(60), np.arange(60), indexing='ij')
  np.testing.assert_array_equal(d, i // 3 - j // 3 + 4 - 1)
  # Along the window's edge (i - j = W) the grouped distance stays within
  # G - 1 of W.
  edge = d[np.arange(4, 60), np.arange(0, 56)]
  assert edge.min() >= 4 - 1 and edge.max() <= 4 + 2


def test_rope_self_extend_scores_at_the_grouped_distance():
  # Through attention.scores: beyond the window a pair scores RoPE at the
  # grouped distance; within it, at its own.
  t, h, k, w, g = 14, 2, 8, 4, 3
  rng = np.random.default_rng(8)
  q = jnp.asarray(rng.normal(size=(1, t, h, k)), jnp.float32)
  kk = jnp.asarray(rng.normal(size=(1, t, h, k)), jnp.float32)
  pos = jnp.arange(t, dtype=jnp.int32)[None]
  inv = P.rope_inv_freq(k)
  rot = lambda x, p: P.apply_rope(x, p, inv)
  fq, fk = F.SelfExtend(w, g).far_positions(pos, pos)
  near = A.Branch(rot(q, pos), rot(kk, pos), pos, pos)
  far = A.Branch(rot(q, fq), rot(kk, fk), fq, fk)
  got = np.asarray(AC.scores(near, far, w, None))[0]
  beyond = 0
  for i in range(t):
    for j in range(i + 1):
      eff = i - j if i - j < w else i // g - j // g + w - w // g
      qi = rot(q[:, i:i + 1], jnp.full((1, 1), 30))
      kj = rot(kk[:, j:j + 1], jnp.full((1, 1), 30 - eff))
      want = np.einsum('hk,hk->h', qi[0, 0], kj[0, 0]) / np.sqrt(k)
      np.testing.assert_allclose(got[:, i, j], want, atol=2e-5, rtol=0,
                                 err_msg=f'i={i} j={j}')
      beyond += i - j >= w and eff != i - j
  assert beyond > 0


def test_logn_query_scale_by_hand():
  # L = 8: p = 0..7 -> 1 (log(p + 1) <= log 8); p = 15 -> log 16 / log 8 =
  # 4/3; p = 63 -> log 64 / log 8 = 2.
  got = LS.logn_query_scale(jnp.array([[0, 3, 7, 15, 63]]), 8)
  np.testing.assert_allclose(got, [[1, 1, 1, 4 / 3, 2]], rtol=1e-6)
  assert float(got[0, 2]) == 1.0


@pytest.mark.parametrize('backend', ['dense', 'chunked'])
def test_logn_up_to_its_length_is_plain_and_scales_beyond(backend):
  # Positions of _inputs(37) reach at most 3 * 37 + 4 = 115 < 116.
  t = 37
  cfgs = [_config('rope', backend),
          _config('rope', backend, length_scaling__kind='logn',
                  length_scaling__base_len=116),
          _config('rope', backend, length_scaling__kind='logn',
                  length_scaling__base_len=8)]
  logits = [x[0] for x in _forward_all(cfgs, t)]
  np.testing.assert_array_equal(logits[1], logits[0])
  assert _max_abs(logits[2] - logits[0]) > 1e-3


@pytest.mark.parametrize('variant', ['causal', 'lambda', 'lambda_limit',
                                     'leaky_rerope', 'self_extend',
                                     'rerope_logn'])
def test_future_tokens_never_change_earlier_logits(variant):
  t, changed_at = 37, (0, 8, 20, 36)
  encodings = (('rope', 'alibi') if variant not in ('leaky_rerope',
                                                    'rerope_logn')
               else ('rope',))
  cfgs = [_variant_config(enc, 'chunked', variant, block=4)
          for enc in encodings]
  x, _, _ = _inputs(t)
  tokens = [x] + [x.at[:, j].set((x[:, j] + 100) % V) for j in changed_at]
  for enc, per_tokens in zip(encodings, _forward_all(cfgs, t, tokens)):
    base_logits = per_tokens[0]
    for j, new in zip(changed_at, per_tokens[1:]):
      np.testing.assert_allclose(new[:, :j], base_logits[:, :j], atol=1e-6,
                                 rtol=0, err_msg=f'{enc} {variant} j={j}')
      assert _max_abs(new[:, j] - base_logits[:, j]) > 1e-3


def _visible_python(i, j, n_global, n_local, chunk=0):
  if j < 0 or j > i:
    return False
  if chunk and i // chunk != j // chunk:
    return False
  if n_local == 0:
    return True
  return i - j < n_local or j < n_global


@pytest.mark.parametrize('n_global,n_local,chunk', [
    (0, 0, 0), (0, 1, 0), (2, 5, 0), (5, 2, 0), (0, 4, 0), (3, 100, 0),
    (7, 7, 0), (0, 0, 1), (0, 0, 4), (0, 0, 7), (0, 0, 100)])
def test_mask_matches_brute_force(n_global, n_local, chunk):
  rng = np.random.default_rng(n_global * 31 + n_local + 7 * chunk)
  q_idx = np.arange(20) + 6                     # the last 20 of 26 keys
  k_idx = np.arange(26)
  k_idx[rng.choice(26, 4, replace=False)] = -1  # empty cache slots
  mask = A.Mask(n_global, n_local, chunk)
  got = np.asarray(mask(jnp.asarray(q_idx), jnp.asarray(k_idx)))
  want = np.array([[_visible_python(i, j, n_global, n_local, chunk)
                    for j in k_idx] for i in q_idx])
  np.testing.assert_array_equal(got, want)
  # visible_count: what query i sees when every earlier key is there.
  full = np.asarray(mask(jnp.asarray(q_idx), jnp.arange(26)))
  np.testing.assert_array_equal(mask.visible_count(jnp.asarray(q_idx)),
                                full.sum(axis=1))
  # tile_visible: exact on every block of queries and keys.
  for q_lo, q_hi, k_lo, k_hi in [(6, 9, 0, 3), (10, 13, 4, 7), (20, 25, 0, 9),
                                 (8, 8, 8, 8), (12, 15, 16, 19),
                                 (14, 17, 10, 13)]:
    rows = full[q_lo - 6:q_hi - 5, k_lo:k_hi + 1]
    assert bool(mask.tile_visible(q_lo, q_hi, k_lo, k_hi)) == rows.any(), (
        q_lo, q_hi, k_lo, k_hi)
  # tile_full: exact on every block: every pair visible.
  for q_lo in range(6, 26):
    for q_hi in range(q_lo, 26, 3):
      for k_lo in range(0, 26, 2):
        for k_hi in range(k_lo, 26, 3):
          rows = full[q_lo - 6:q_hi - 5, k_lo:k_hi + 1]
          assert bool(mask.tile_full(q_lo, q_hi, k_lo, k_hi)) == rows.all(), (
              q_lo, q_hi, k_lo, k_hi)
  # causal_mask: S - T offset.
  np.testing.assert_array_equal(
      A.causal_mask(5, 9),
      [[_visible_python(i + 4, j, 0, 0) for j in range(9)] for i in range(5)])


@pytest.mark.parametrize('leak', [0.0, 0.25, 0.5, 0.9])
@pytest.mark.parametrize('window', [1, 5, 64])
def test_far_positions_differences(window, leak):
  rng = np.random.default_rng(window)
  q = jnp.asarray(rng.integers(0, 5000, (2, 11)), jnp.int32)
  k = jnp.asarray(rng.integers(0, 5000, (2, 13)), jnp.int32)
  fq, fk = F.Clamp(window, leak).far_positions(q, k)
  d = np.asarray(q)[:, :, None].astype(np.float64) - np.asarray(k)[:, None, :]
  got = np.asarray(fq, np.float64)[:, :, None] - np.asarray(fk, np.float64)[
      :, None, :]
  np.testing.assert_allclose(got, window + leak * (d - window), rtol=1e-6,
                             atol=1e-6 * 5000)
  if leak == 0.0:   # integers, so bias encodings see exact distances
    assert jnp.issubdtype(fq.dtype, jnp.integer)
    assert jnp.issubdtype(fk.dtype, jnp.integer)


@pytest.mark.parametrize('leak', [0.0, 0.3])
def test_rope_clamp_scores_beyond_window_are_the_clamped_distance(leak):
  """Through ``attention.scores``: pairs at distance ``d >= w`` score what
  RoPE gives at distance ``w + leak (d - w)``, computed here at other
  absolute positions (RoPE depends only on the difference); nearer pairs
  score plain RoPE."""
  t, h, k, w = 12, 2, 8, 4
  rng = np.random.default_rng(7)
  q = jnp.asarray(rng.normal(size=(1, t, h, k)), jnp.float32)
  kk = jnp.asarray(rng.normal(size=(1, t, h, k)), jnp.float32)
  pos = jnp.arange(t, dtype=jnp.int32)[None] + 100
  inv = P.rope_inv_freq(k)
  rot = lambda x, p: P.apply_rope(x, p, inv)
  clamp = F.Clamp(w, leak)
  near = A.Branch(rot(q, pos), rot(kk, pos), pos, pos)
  fq, fk = clamp.far_positions(pos, pos)
  far = A.Branch(rot(q, fq), rot(kk, fk), fq, fk)
  got = np.asarray(AC.scores(near, far, w, None))[0]      # [H, T, S]
  beyond = 0
  for i in range(t):
    for j in range(i + 1):
      d = i - j
      eff = d if d < w else w + leak * (d - w)
      # Query at position 7, key at 7 - eff: only the difference is shared.
      qi = rot(q[:, i:i + 1], jnp.full((1, 1), 7.0))
      kj = rot(kk[:, j:j + 1], jnp.full((1, 1), 7.0 - eff))
      want = np.einsum('hk,hk->h', qi[0, 0], kj[0, 0]) / np.sqrt(k)
      np.testing.assert_allclose(got[:, i, j], want, atol=2e-5, rtol=0,
                                 err_msg=f'i={i} j={j}')
      beyond += d > w
  assert beyond > 0
  if leak == 0.0:   # every pair beyond the window scores like distance w
    i, j = t - 1, 0
    assert t - 1 > w
    same = rot(q[:, i:i + 1], pos[:, j + w:j + w + 1])
    want = np.einsum('hk,hk->h', same[0, 0], near.k[0, j]) / np.sqrt(k)
    np.testing.assert_allclose(got[:, i, j], want, atol=2e-5, rtol=0)


def test_alibi_distance_limit_bias_on_global_pairs():
  """LM-Infinite's limit L on ALiBi, through the model's own Attention
  module: a visible pair at distance d has bias -m min(d, L)."""
  t, n_global, n_local, limit = 30, 3, 5, 8
  cfg = _config('alibi', lm_infinite__n_global=n_global,
                lm_infinite__n_local=n_local,
                lm_infinite__distance_limit=limit)
  config_lib.validate(cfg)
  attn = model_lib.build(cfg.model, seed=0).blocks[0].attn
  assert attn.spec.far == F.Clamp(limit, 0.0)
  h, k = attn.num_heads, attn.head_dim
  zeros = jnp.zeros((1, t, h, k), jnp.float32)   # logits = bias alone
  pos = jnp.arange(t, dtype=jnp.int32)[None]
  near, far = attn.branches(zeros, zeros, pos, pos)
  logits = np.asarray(AC.scores(near, far, attn.spec.far_from,
                                   attn.position.bias))[0]
  visible = np.asarray(attn.spec.mask(jnp.arange(t), jnp.arange(t)))
  slopes = P.alibi_slopes(h)
  globals_beyond = 0
  for i in range(t):
    for j in range(t):
      if not visible[i, j]:
        continue
      want = -slopes * min(i - j, limit)
      np.testing.assert_allclose(logits[:, i, j], want, rtol=1e-6,
                                 err_msg=f'i={i} j={j}')
      if j < n_global and i - j > limit:
        globals_beyond += 1
  assert globals_beyond > 0
  # Without the limit the same global pairs are biased by the full distance.
  plain = np.asarray(AC.scores(near, None, 0, attn.position.bias))[0]
  np.testing.assert_allclose(plain[:, t - 1, 0], -slopes * (t - 1), rtol=1e-6)


# ---------------------------------------------------------- skipped tiles


def _count_tiles(monkeypatch, t, block, mask, far=False):
  """How many key tiles chunked attention really computes, and how many of
  them it masks, by running it eagerly (jax.disable_jit: scan and map
  become python loops, lax.cond and lax.switch run only the branch their
  concrete index picks) and counting the logit computations and the masks
  built. jax.checkpoint would trace its function once instead of running
  it, so it is replaced by the identity for this count."""
  calls, masks = [], []
  real = A._branch_logits
  real_mask = A.Mask.__call__

  def counting(*args, **kwargs):
    calls.append(1)
    return real(*args, **kwargs)

  def counting_mask(self, *args):
    masks.append(1)
    return real_mask(self, *args)

  monkeypatch.setattr(A, '_branch_logits', counting)
  monkeypatch.setattr(A.Mask, '__call__', counting_mask)
  monkeypatch.setattr(jax, 'checkpoint', lambda f, **_: f)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(1, t, 1, 4)), jnp.float32)
  pos = jnp.arange(t, dtype=jnp.int32)[None]
  near = A.Branch(x, x, pos, pos)
  far_br = A.Branch(x, x, *F.Clamp(3).far_positions(pos, pos)) if far else None
  with jax.disable_jit():
    out = AC.run('chunked', near, x, mask=mask, far=far_br,
                    window=3 if far else 0, block=block)
  monkeypatch.undo()
  dense = AC.run('dense', near, x, mask=mask, far=far_br,
                    window=3 if far else 0)
  np.testing.assert_allclose(out, dense, atol=TOL)
  return len(calls) // (2 if far else 1), len(masks)


def _visible_tiles(t, block, mask):
  """Tile pairs (query block, key tile) with at least one visible entry."""
  vis = np.asarray(mask(jnp.arange(t), jnp.arange(t)))
  n = -(-t // block)
  return sum(vis[i * block:(i + 1) * block, j * block:(j + 1) * block].any()
             for i in range(n) for j in range(n))


def _partial_tiles(t, block, mask):
  """Visible tile pairs that are not full: some pair of the tile hidden,
  counting the padded queries of the last block (by their token index) and
  the padded keys of the last tile (never visible)."""
  n = -(-t // block)
  vis = np.zeros((n * block, n * block), bool)
  vis[:, :t] = np.asarray(mask(jnp.arange(n * block), jnp.arange(t)))
  tiles = [vis[i * block:(i + 1) * block, j * block:(j + 1) * block]
           for i in range(n) for j in range(n)]
  real = [v[:t - i * block] for i in range(n) for v in tiles[i * n:(i + 1) * n]]
  return sum(r.any() and not v.all() for r, v in zip(real, tiles))


@pytest.mark.parametrize('t,block,mask,far', [
    (37, 8, A.Mask(), False),
    (37, 8, A.Mask(2, 5), False),
    (61, 8, A.Mask(5, 9), True),
    # Sliding windows (config.model.layers.window): no global tokens.
    (37, 8, A.Mask(0, 5), False),
    (29, 4, A.Mask(0, 9), False),
    # Llama 4's chunks (config.model.layers.chunk), across tile edges and
    # on them.
    (37, 8, A.Mask(chunk=10), False),
    (41, 4, A.Mask(chunk=8), False),
])
def test_chunked_computes_only_visible_tiles(monkeypatch, t, block, mask, far):
  counted, masked = _count_tiles(monkeypatch, t, block, mask, far)
  n = -(-t // block)
  assert counted == _visible_tiles(t, block, mask)
  # Only the tiles with a hidden pair build a mask; the full ones do not.
  assert masked == _partial_tiles(t, block, mask)
  if mask.n_local or mask.chunk:
    # A fixed number of key tiles per query block, fewer than causal.
    span = mask.n_local or mask.chunk
    per_block = -(-mask.n_global // block) + -(-(block + span - 1)
                                                // block) + 1
    assert counted <= n * per_block
    assert counted < n * (n + 1) // 2     # what causal attention computes
  else:
    assert counted == n * (n + 1) // 2    # the future tiles are skipped
    assert masked == n                    # the diagonal's alone are masked


def test_lambda_tile_count_grows_linearly(monkeypatch):
  """Doubling T adds a fixed number of tiles per new query block: the
  increments double exactly (causal attention's would quadruple)."""
  mask, block, lengths = A.Mask(3, 6), 8, (40, 80, 160)
  lam = [_count_tiles(monkeypatch, t, block, mask)[0] for t in lengths]
  assert lam == [_visible_tiles(t, block, mask) for t in lengths]
  assert lam[2] - lam[1] == 2 * (lam[1] - lam[0]), lam
  causal = [_visible_tiles(t, block, A.Mask()) for t in lengths]
  assert causal[2] - causal[1] > 3.5 * (causal[1] - causal[0])


# ------------------------------------------------------------ the backend


def test_auto_rule_on_this_platform(caplog):
  if jax.default_backend() == 'gpu':
    pytest.skip('the CPU rule')
  kw = dict(q_dtype=jnp.float32, head_dim=16, far=False, threshold=100)
  assert AC.chosen('auto', num_keys=100, **kw) == 'dense'
  assert AC.chosen('auto', num_keys=101, **kw) == 'chunked'
  assert AC.chosen('dense', num_keys=10**6, **kw) == 'dense'
  assert AC.chosen('chunked', num_keys=1, **kw) == 'chunked'
  A._warned.clear()
  with caplog.at_level(logging.WARNING, logger='lmx'):
    assert AC.chosen('cudnn', num_keys=5, **kw) == 'dense'
  assert 'cudnn' in caplog.text and 'dense' in caplog.text


def test_gpu_rule_takes_cudnn_only_where_it_can_run(monkeypatch, caplog):
  # The platform is faked: the rule, not the kernel, is under test.
  monkeypatch.setattr(A.jax, 'default_backend', lambda: 'gpu')
  kw = dict(num_keys=4096, threshold=2048)
  assert AC.chosen('auto', q_dtype=jnp.bfloat16, head_dim=64,
                      far=False, **kw) == 'cudnn'
  assert AC.chosen('cudnn', q_dtype=jnp.float16, head_dim=128,
                      far=False, **kw) == 'cudnn'
  A._warned.clear()
  with caplog.at_level(logging.WARNING, logger='lmx'):
    for _ in range(3):  # said once, however often it falls back
      assert AC.chosen('cudnn', q_dtype=jnp.float32, head_dim=64,
                          far=False, **kw) == 'chunked'
  assert caplog.text.count('float32') == 1
  for dtype, head_dim, far in ((jnp.bfloat16, 60, False),
                               (jnp.bfloat16, 256, False),
                               (jnp.bfloat16, 64, True)):
    assert AC.why_not(A.CUDNN, q_dtype=dtype, head_dim=head_dim,
                         far=far) is not None
    assert AC.chosen('auto', q_dtype=dtype, head_dim=head_dim,
                        far=far, **kw) == 'chunked'


def test_auto_backend_model_equals_dense():
  # chunk_threshold below T sends the auto model down the chunked path.
  t = 37
  cfgs = [_config('alibi', 'dense'),
          _config('alibi', 'auto', chunk_threshold=8)]
  dense, auto = [x[0] for x in _forward_all(cfgs, t)]
  np.testing.assert_allclose(auto, dense, atol=TOL, rtol=0)


# -------------------------------------------------------------- bad input


def _full_config(position='rope', **fields):
  c = base.get_config('size=tiny')
  c.model.position = position
  for path, value in fields.items():
    _set(c, path.replace('__', '.'), value)
  return c


BAD = {
    'unknown backend': (
        dict(model__attention='fused'), ['config.model.attention', 'chunked']),
    'cudnn on cpu': (
        dict(model__attention='cudnn'), ['config.model.attention', 'GPU']),
    'rerope on alibi': (
        dict(position='alibi', model__rerope__window=16),
        ['config.model.rerope.window', 'rotary']),
    'rerope and distance limit': (
        dict(model__rerope__window=16, model__lm_infinite__n_local=8,
             model__lm_infinite__distance_limit=16),
        ['config.model.rerope.window', 'distance_limit']),
    'leak 1': (
        dict(model__rerope__window=16, model__rerope__leak=1.0),
        ['config.model.rerope.leak']),
    'leak negative': (
        dict(model__rerope__window=16, model__rerope__leak=-0.1),
        ['config.model.rerope.leak']),
    'leak without window': (
        dict(model__rerope__leak=0.5), ['config.model.rerope.window']),
    'global + local past the limit': (
        dict(model__lm_infinite__n_global=4, model__lm_infinite__n_local=16,
             model__lm_infinite__distance_limit=16),
        ['n_local', 'distance_limit']),
    'n_global without n_local': (
        dict(model__lm_infinite__n_global=4), ['n_local']),
    'negative n_global': (
        dict(model__lm_infinite__n_global=-1, model__lm_infinite__n_local=8),
        ['config.model.lm_infinite.n_global']),
    'negative n_local': (
        dict(model__lm_infinite__n_local=-8),
        ['config.model.lm_infinite.n_local']),
    'negative distance limit': (
        dict(model__lm_infinite__n_local=8,
             model__lm_infinite__distance_limit=-16),
        ['config.model.lm_infinite.distance_limit']),
    'negative window': (
        dict(model__rerope__window=-4), ['config.model.rerope.window']),
    'zero block': (
        dict(model__attention_block=0), ['config.model.attention_block']),
    'negative threshold': (
        dict(model__chunk_threshold=-1), ['config.model.chunk_threshold']),
    'rerope with dynamic ntk': (
        dict(model__rerope__window=16, model__rope__scaling='dynamic',
             model__rope__factor=1.0, model__rope__original_max_len=16),
        ['config.model.rope.scaling', 'rerope.window']),
    'distance limit with dynamic ntk': (
        dict(model__lm_infinite__n_local=8,
             model__lm_infinite__distance_limit=16,
             model__rope__scaling='dynamic', model__rope__factor=1.0,
             model__rope__original_max_len=16),
        ['config.model.rope.scaling', 'distance_limit']),
    'self-extend with dynamic ntk': (
        dict(model__self_extend__window=8, model__rope__scaling='dynamic',
             model__rope__factor=1.0, model__rope__original_max_len=16),
        ['config.model.rope.scaling', 'self_extend.window']),
    'self-extend with longrope': (
        dict(model__self_extend__window=8, model__rope__scaling='longrope',
             model__rope__factor=4.0, model__rope__original_max_len=16,
             model__rope__long_factor=(2.0,) * 8),
        ['config.model.rope.scaling', 'self_extend.window']),
    'self-extend and rerope': (
        dict(model__self_extend__window=8, model__rerope__window=16),
        ['config.model.self_extend.window', 'config.model.rerope.window']),
    'self-extend and distance limit': (
        dict(model__self_extend__window=8, model__lm_infinite__n_local=8,
             model__lm_infinite__distance_limit=16),
        ['config.model.self_extend.window', 'distance_limit']),
    'self-extend on sinusoidal': (
        dict(position='sinusoidal', model__self_extend__window=8),
        ['config.model.self_extend.window', 'sinusoidal']),
    'self-extend group 0': (
        dict(model__self_extend__window=8, model__self_extend__group=0),
        ['config.model.self_extend.group']),
    'negative self-extend window': (
        dict(model__self_extend__window=-1),
        ['config.model.self_extend.window']),
    'unknown length scaling': (
        dict(model__length_scaling__kind='log'),
        ['config.model.length_scaling.kind', "'logn'"]),
    'logn without its length': (
        dict(model__length_scaling__kind='logn'),
        ['config.model.length_scaling.base_len', 'training length']),
    'logn length 1': (
        dict(model__length_scaling__kind='logn',
             model__length_scaling__base_len=1),
        ['config.model.length_scaling.base_len']),
}


@pytest.mark.parametrize('case', sorted(BAD))
def test_bad_attention_config_is_refused_with_the_field(case):
  fields, words = BAD[case]
  if case == 'cudnn on cpu' and jax.default_backend() == 'gpu':
    pytest.skip('a GPU is present')
  with pytest.raises(config_lib.ConfigError) as err:
    config_lib.validate(_full_config(**fields))
  for word in words:
    assert word in str(err.value), (case, str(err.value))


@pytest.mark.parametrize('fields', [
    dict(model__attention='chunked', model__attention_block=8),
    dict(model__lm_infinite__n_global=4, model__lm_infinite__n_local=12,
         model__lm_infinite__distance_limit=16),
    dict(model__rerope__window=16, model__rerope__leak=0.5),
    dict(position='xpos', model__rerope__window=16),
    dict(position='alibi', model__lm_infinite__n_local=16,
         model__lm_infinite__distance_limit=16),
    dict(model__rerope__window=16, model__rope__scaling='ntk',
         model__rope__factor=2.0),
], ids=['chunked', 'lm_infinite', 'leaky', 'xpos_rerope', 'alibi_limit',
        'rerope_ntk'])
def test_good_attention_configs_pass(fields):
  config_lib.validate(_full_config(**fields))
