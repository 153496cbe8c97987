"""Training and evaluation windows over a token stream.

A stream is a 1-D integer array or a store's memory-mapped
``lmx.data.store.TokenStream``: the same windows either way.

Training: each step draws ``batch`` windows of ``seq_len + 1`` tokens at
uniformly random offsets of the training stream, from a generator seeded by
``(seed, step)`` only. Batch ``k`` is therefore the same whether the run
started at step 0 or resumed at step ``k``.

Evaluation: the validation stream (documents joined with EOD) is cut into
non-overlapping windows of ``length`` tokens starting at offset 0. The first
``tokens`` tokens are scored at every length, so each length scores the same
text and only the context available to each token changes. A document
shorter than the window is not dropped or padded: it shares the window with
its neighbours, separated by EOD, exactly as in training.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from lmx.errors import DataError
from lmx.positions import sample_positions


class Batch(dict):
  """``inputs``, ``targets``, ``positions``: ``[B, T]`` int32 arrays (the
  positions float32 under a sampling of real positions, CAPE's)."""


def step_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
  return np.random.default_rng([int(seed), int(step), int(stream)])


def train_batch(stream: np.ndarray, *, seed: int, step: int, batch: int,
                seq_len: int, sampling: str, max_position: int,
                rows: np.ndarray | None = None,
                positions_cfg: Mapping | None = None) -> Batch:
  """The training batch of ``step``; a pure function of its arguments.

  ``rows`` (global row indices) builds only those rows of the batch, as one
  process of a multi-host run does; they equal the same rows of the whole.
  ``positions_cfg``: ``config.positions``, where a sampler with settings
  (CAPE's) reads its own.
  """
  if stream.size < seq_len + 2:
    raise DataError(f'The training stream has {stream.size} tokens, fewer '
                     f'than train.seq_len + 2 = {seq_len + 2}: use more data '
                     'or a shorter config.train.seq_len.')
  rng = step_rng(seed, step)
  starts = rng.integers(0, stream.size - seq_len - 1, size=batch)
  pos = sample_positions(sampling, batch, seq_len, max_position, rng,
                         positions_cfg)
  if rows is not None:
    starts, pos = starts[rows], pos[rows]
  if hasattr(stream, 'rows'):  # a store's memory-mapped stream
    w = stream.rows(starts, seq_len + 1)
  else:
    w = stream[starts[:, None] + np.arange(seq_len + 1)[None, :]]
  return Batch(inputs=w[:, :-1].astype(np.int32),
               targets=w[:, 1:].astype(np.int32), positions=pos)


def num_eval_windows(stream_size: int, length: int, tokens: int) -> int:
  return min(tokens // length, (stream_size - 1) // length)


def eval_windows(stream: np.ndarray, length: int, tokens: int):
  """(inputs, targets) ``[N, length]``: non-overlapping, from offset 0."""
  if length < 1:
    raise ValueError(f'Evaluation windows need a length >= 1, got {length}.')
  n = num_eval_windows(stream.size, length, tokens)
  if n < 1:
    raise DataError(
        f'The validation stream has {stream.size} tokens, too few for one '
        f'evaluation window of {length}: evaluate shorter lengths or use a '
        'larger validation split (config.data.validation_fraction).')
  inputs = stream[:n * length].reshape(n, length)
  targets = stream[1:n * length + 1].reshape(n, length)
  return inputs.astype(np.int32), targets.astype(np.int32)


def sliding_windows(stream: np.ndarray, length: int, tokens: int,
                    stride: int):
  """(inputs, targets, scored) ``[N, length]`` for the sliding-window
  protocol: windows start every ``stride`` tokens and each scores only its
  last ``stride`` targets (the first window scores all of its own), so every
  scored token but those of the first window sees at least
  ``length - stride`` tokens of context.

  The scored targets are exactly those of ``eval_windows(stream, length,
  tokens)``: the first ``num_eval_windows * length`` tokens, each once.
  """
  if not 1 <= stride <= length:
    raise ValueError(f'The sliding stride must be in [1, {length}], got '
                     f'{stride}.')
  n = num_eval_windows(stream.size, length, tokens)
  if n < 1:
    eval_windows(stream, length, tokens)  # raises the DataError
  scored_total = n * length
  count = 1 + -(-(scored_total - length) // stride)  # ceil division
  starts = np.arange(count) * stride
  # The last window may run past the scored tokens; keep it inside the
  # stream (the scored mask below drops what lies beyond scored_total).
  starts = np.minimum(starts, stream.size - 1 - length)
  idx = starts[:, None] + np.arange(length)[None, :]
  target_idx = idx  # target t of window w is stream[idx + 1]
  first_scored = np.where(np.arange(count) == 0, 0, length - stride)
  scored = np.arange(length)[None, :] >= first_scored[:, None]
  scored &= target_idx < scored_total
  # A clamped last window would score some targets twice: keep each once.
  prev_end = np.concatenate([[0], starts[:-1] + length])
  scored &= target_idx >= prev_end[:, None]
  return (stream[idx].astype(np.int32), stream[idx + 1].astype(np.int32),
          scored)
