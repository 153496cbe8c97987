"""Which position values a sequence is given: separate from the encoding.

Any encoding reads positions from an explicit ``[B, T]`` integer array, so
how those integers are chosen is an independent axis of an experiment:

* ``contiguous``: ``0, 1, ..., T-1`` (the default).
* ``randomized`` (Ruoss et al. 2023, "Randomized Positional Encodings Boost
  Length Generalization of Transformers"): a sorted random subset of ``T``
  distinct values from ``[0, max_position)``, drawn per sequence. Training on
  such subsets shows the model every position up to ``max_position`` while
  only ever running on ``T`` tokens, so a longer test sequence needs no
  position it has not seen. ``max_position`` must cover the longest length
  ever evaluated.
* ``shift``: ``offset + 0, 1, ..., T-1`` with one random offset per sequence,
  ``offset`` uniform in ``[0, max_position - T]``.
* ``pose``: PoSE, positional skip-wise training (Zhu et al. 2024, "PoSE:
  Efficient Context Window Extension of LLMs via Positional Skip-wise
  Training", Sec. 3.2, as its released training code draws them): the
  window of ``T`` tokens is cut into two chunks, the first ``l`` tokens
  (``l`` uniform in ``[1, (T + 1) // 2]``) at positions ``0 .. l - 1`` and
  the rest at ``l + u .. T - 1 + u``, with the skip ``u`` uniform in
  ``[0, max_position - T]``: every relative distance up to the target
  length ``max_position`` is seen while running on ``T`` tokens.
  ``pose_positions`` also draws the paper's ``N``-chunk form. The tokens
  stay the contiguous window the data pipeline reads (the released code
  also takes the second chunk's text from later in a longer document).
  Evaluation with ``config.positions.eval='train'`` uses contiguous
  positions, as the paper evaluates (``eval_kind``).

* ``cape``: CAPE, continuous augmented positional embeddings
  (Likhomanenko et al. 2021, "CAPE: Encoding Relative Positions with
  Continuous Augmented Positional Embeddings", NeurIPS 2021, Sec. 3): the
  positions ``0 .. T-1`` made real numbers by a global shift, a local
  shift per token and a global scaling, drawn per sequence:

      x_i' = lambda (x_i + Delta + eps_i),
      Delta ~ U[-max_global_shift, max_global_shift],
      eps_i ~ U[-max_local_shift / 2, max_local_shift / 2],
      log lambda ~ U[-log max_global_scaling, log max_global_scaling]

  (``config.positions.cape``). The local shift's interval has width
  ``max_local_shift``, the convention of the paper's code, so 1 keeps
  neighbouring tokens in order. The defaults, 5, 1 and 1.03, are the
  settings used for text (the paper's machine translation); evaluated
  lengths far past ``T`` call for a larger global shift, which is what
  shows the model positions beyond ``T``. Positions are float32, so only an
  encoding with ``real_positions`` may train with them (sinusoidal, RoPE:
  the paper augments sinusoidal embeddings). An evaluation with
  ``config.positions.eval='train'`` uses contiguous integer positions, as
  the paper evaluates (``eval_kind``).

Draws come from a ``numpy.random.Generator`` that the caller seeds from
(seed, step), so they are reproducible and a resumed run repeats them.
"""

import math
from typing import Mapping, Optional

import numpy as np

KINDS = ('contiguous', 'randomized', 'shift', 'pose', 'cape')
# Kinds that draw real-valued (float32) positions; the others give int32.
REAL_KINDS = ('cape',)
# The kind an evaluation uses for config.positions.eval='train', where it is
# not the training kind itself.
_EVAL_KIND = {'pose': 'contiguous', 'cape': 'contiguous'}
# config.positions.cape: the paper's settings for text.
CAPE_DEFAULTS = {'max_global_shift': 5.0, 'max_local_shift': 1.0,
                 'max_global_scaling': 1.03}


def eval_kind(train_kind: str) -> str:
  """The positions an evaluation of a run trained with ``train_kind`` uses
  when it asks for the training kind."""
  return _EVAL_KIND.get(train_kind, train_kind)


def pose_positions(batch: int, length: int, max_position: int,
                   rng: np.random.Generator, chunks: int = 2) -> np.ndarray:
  """PoSE positions ``[batch, length]``: ``chunks`` runs of consecutive
  positions with random skips between them, all below ``max_position``.

  Two chunks (the default) are drawn as the released training code draws
  them (module docstring). For ``chunks > 2`` the paper's form: cut points
  uniform without repeats in ``[1, length - 1]``, and non-decreasing skips
  ``0 = u_0 <= u_1 <= ... <= u_{N-1} <= max_position - length`` (sorted
  uniform draws); chunk ``i`` starts at its offset in the window plus
  ``u_i``.
  """
  if chunks < 1:
    raise ValueError(f'PoSE needs at least one chunk, got {chunks}.')
  chunks = min(chunks, length)   # a window of one token is one chunk
  room = max_position - length
  base = np.arange(length, dtype=np.int64)
  out = np.empty((batch, length), dtype=np.int32)
  for b in range(batch):
    if chunks == 1:
      out[b] = base
      continue
    if chunks == 2:
      cuts = np.array([rng.integers(1, (length + 1) // 2 + 1)])
      skips = np.array([0, rng.integers(0, room + 1)])
    else:
      cuts = np.sort(rng.choice(np.arange(1, length), size=chunks - 1,
                                replace=False))
      skips = np.concatenate([[0], np.sort(rng.integers(0, room + 1,
                                                        size=chunks - 1))])
    chunk_of = np.searchsorted(cuts, base, side='right')
    out[b] = base + skips[chunk_of]
  return out


def cape_positions(batch: int, length: int, rng: np.random.Generator,
                   max_global_shift: float = CAPE_DEFAULTS['max_global_shift'],
                   max_local_shift: float = CAPE_DEFAULTS['max_local_shift'],
                   max_global_scaling: float = CAPE_DEFAULTS[
                       'max_global_scaling']) -> np.ndarray:
  """CAPE's positions ``[batch, length]`` (float32):
  ``lambda (i + Delta + eps_i)`` with one global shift ``Delta`` and one
  scaling ``lambda`` per sequence and a local shift ``eps_i`` per token
  (module docstring). Drawn in this order: ``Delta`` ``[batch, 1]``,
  ``eps`` ``[batch, length]``, ``log lambda`` ``[batch, 1]``."""
  base = np.arange(length, dtype=np.float64)[None, :]
  delta = rng.uniform(-max_global_shift, max_global_shift, size=(batch, 1))
  half = max_local_shift / 2.0
  eps = rng.uniform(-half, half, size=(batch, length))
  log_scale = math.log(max_global_scaling)
  log_lam = rng.uniform(-log_scale, log_scale, size=(batch, 1))
  return ((base + delta + eps) * np.exp(log_lam)).astype(np.float32)


def cape_bound(length: int, cape: Mapping) -> int:
  """An exclusive upper bound on CAPE's positions for ``length`` tokens:
  ``max_global_scaling (length - 1 + max_global_shift + max_local_shift /
  2)``, rounded up, plus 1."""
  top = float(cape['max_global_scaling']) * (
      length - 1 + float(cape['max_global_shift'])
      + float(cape['max_local_shift']) / 2.0)
  return int(math.ceil(top)) + 1


def cape_span(length: int, cape: Mapping) -> int:
  """The widest spread ``max - min + 1`` of CAPE's positions in one
  sequence of ``length`` tokens (the global shift moves them all alike)."""
  spread = float(cape['max_global_scaling']) * (
      length - 1 + float(cape['max_local_shift']))
  return int(math.ceil(spread)) + 1


def sample_positions(kind: str, batch: int, length: int, max_position: int,
                     rng: np.random.Generator,
                     cape: Optional[Mapping] = None) -> np.ndarray:
  """Positions ``[batch, length]`` of the given sampling kind: int32, or
  float32 for a kind of ``REAL_KINDS`` (``cape``: its settings,
  ``config.positions.cape``)."""
  if kind == 'contiguous':
    return np.broadcast_to(np.arange(length, dtype=np.int32),
                           (batch, length)).copy()
  if kind == 'cape':
    if cape is None:
      raise ValueError('cape positions need their settings '
                       '(config.positions.cape).')
    return cape_positions(batch, length, rng,
                          float(cape['max_global_shift']),
                          float(cape['max_local_shift']),
                          float(cape['max_global_scaling']))
  if length > max_position:
    raise ValueError(
        f'{kind} positions need length ({length}) <= max_position '
        f'({max_position}); raise config.positions.max_position.')
  if kind == 'randomized':
    out = np.empty((batch, length), dtype=np.int32)
    for b in range(batch):
      pick = rng.choice(max_position, size=length, replace=False)
      out[b] = np.sort(pick)
    return out
  if kind == 'shift':
    offset = rng.integers(0, max_position - length + 1, size=(batch, 1))
    return (offset + np.arange(length)[None, :]).astype(np.int32)
  if kind == 'pose':
    return pose_positions(batch, length, max_position, rng)
  raise ValueError(f'Unknown position sampling {kind!r}; valid: {KINDS}.')
