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

Draws come from a ``numpy.random.Generator`` that the caller seeds from
(seed, step), so they are reproducible and a resumed run repeats them.
"""

import numpy as np

KINDS = ('contiguous', 'randomized', 'shift', 'pose')
# The kind an evaluation uses for config.positions.eval='train', where it is
# not the training kind itself.
_EVAL_KIND = {'pose': 'contiguous'}


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


def sample_positions(kind: str, batch: int, length: int, max_position: int,
                     rng: np.random.Generator) -> np.ndarray:
  """Positions ``[batch, length]`` (int32) of the given sampling kind."""
  if kind == 'contiguous':
    return np.broadcast_to(np.arange(length, dtype=np.int32),
                           (batch, length)).copy()
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
