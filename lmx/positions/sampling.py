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

Draws come from a ``numpy.random.Generator`` that the caller seeds from
(seed, step), so they are reproducible and a resumed run repeats them.
"""

import numpy as np

KINDS = ('contiguous', 'randomized', 'shift')


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
  raise ValueError(f'Unknown position sampling {kind!r}; valid: {KINDS}.')
