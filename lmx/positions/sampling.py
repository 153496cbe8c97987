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
  ``pose_positions`` also draws the paper's ``N``-chunk form, each skip
  drawn uniformly from the previous one up to ``max_position - T``. The tokens
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

from __future__ import annotations

import math
from typing import ClassVar, Mapping, Optional

import ml_collections
import numpy as np

from lmx.config.fields import Field, check_section, section_defaults

# config.positions.cape: the paper's settings for text.
CAPE_DEFAULTS = {'max_global_shift': 5.0, 'max_local_shift': 1.0,
                 'max_global_scaling': 1.03}

def pose_positions(batch: int, length: int, max_position: int,
                   rng: np.random.Generator, chunks: int = 2) -> np.ndarray:
  """PoSE positions ``[batch, length]``: ``chunks`` runs of consecutive
  positions with random skips between them, all below ``max_position``.

  Skips follow the paper (Sec. 3.2, eq. 4): ``u_0 = 0`` and each next one
  drawn after the one before, ``u_i ~ U({u_{i-1}, ..., max_position -
  length})``, so they never decrease and chunks never overlap; chunk ``i``
  starts at its offset in the window plus ``u_i``. Later skips lean to the
  top of the range (for three chunks ``E[u_2] = (3/4) room`` against
  ``(2/3) room`` for two sorted independent draws, ``room = max_position -
  length``).

  Two chunks (the default) are drawn as the released training code
  (``train_preprocess_function_pose`` of dwzhu-pku/PoSE) draws them: the
  first chunk's length uniform in ``[1, (length + 1) // 2]``, then
  ``u_1`` uniform in ``[0, room]``, which is the paper's draw for ``N = 2``
  (the code fixes ``N = 2``). For ``chunks > 2`` the cut points are uniform
  without repeats in ``[1, length - 1]`` (the paper re-samples chunk
  lengths but does not say how), drawn before the skips.
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
      skips = np.zeros(chunks, dtype=np.int64)
      for i in range(1, chunks):
        skips[i] = rng.integers(skips[i - 1], room + 1)
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


# ------------------------------------------------------------------ members


class Sampler:
  """A way of drawing positions, chosen by name with
  ``config.positions.train`` (and ``config.positions.eval``). Its settings,
  if any, live at ``config.positions.<name>`` (``FIELDS``, field specs).
  Class-level: the validator asks it what a length needs, the data pipeline
  asks it for draws."""

  FIELDS: ClassVar[dict[str, Field]] = {}
  # Draws real-valued (float32) positions; int32 otherwise.
  real: ClassVar[bool] = False
  # Draws from [0, config.positions.max_position), which must then hold
  # the length.
  drawn: ClassVar[bool] = False
  # An evaluation asking for the training kind ('train') uses this one.
  eval_kind: ClassVar[str] = ''
  # Only for training (an evaluation uses contiguous integer positions).
  train_only: ClassVar[bool] = False

  @classmethod
  def draw(cls, batch: int, length: int, max_position: int,
           rng: np.random.Generator, section) -> np.ndarray:
    raise NotImplementedError

  @classmethod
  def bound(cls, positions_cfg, length: int) -> int:
    """The largest position + 1 a sequence of ``length`` may use."""
    if cls.drawn:
      return int(positions_cfg.max_position)
    return length

  @classmethod
  def span(cls, positions_cfg, length: int) -> int:
    """The widest spread of positions in one sequence of ``length``."""
    del positions_cfg
    return length


class Contiguous(Sampler):
  """``0, 1, ..., T-1``."""

  @classmethod
  def draw(cls, batch, length, max_position, rng, section):
    return np.broadcast_to(np.arange(length, dtype=np.int32),
                           (batch, length)).copy()


class Randomized(Sampler):
  """A sorted random subset of ``T`` of ``[0, max_position)``."""
  drawn = True

  @classmethod
  def draw(cls, batch, length, max_position, rng, section):
    out = np.empty((batch, length), dtype=np.int32)
    for b in range(batch):
      pick = rng.choice(max_position, size=length, replace=False)
      out[b] = np.sort(pick)
    return out

  @classmethod
  def span(cls, positions_cfg, length):
    return max(length, int(positions_cfg.max_position))


class Shift(Sampler):
  """``offset + 0 .. T-1``, the offset uniform per sequence."""
  drawn = True

  @classmethod
  def draw(cls, batch, length, max_position, rng, section):
    offset = rng.integers(0, max_position - length + 1, size=(batch, 1))
    return (offset + np.arange(length)[None, :]).astype(np.int32)


class PoSE(Sampler):
  """``pose_positions``: two chunks with a random skip."""
  drawn = True
  eval_kind = 'contiguous'

  @classmethod
  def draw(cls, batch, length, max_position, rng, section):
    return pose_positions(batch, length, max_position, rng)


class CAPE(Sampler):
  """``cape_positions``, with the settings of ``config.positions.cape``."""
  FIELDS = {
      'max_global_shift': Field(CAPE_DEFAULTS['max_global_shift'],
                                'the global shift Delta is uniform in '
                                '[-max, max]', lo=0.0),
      'max_local_shift': Field(CAPE_DEFAULTS['max_local_shift'],
                               'the width of the local shifts eps_i',
                               lo=0.0, hi=1.0),
      'max_global_scaling': Field(CAPE_DEFAULTS['max_global_scaling'],
                                  'log lambda is uniform in [-log max, '
                                  'log max]', lo=1.0),
  }
  real = True
  eval_kind = 'contiguous'
  train_only = True

  @classmethod
  def draw(cls, batch, length, max_position, rng, section):
    if section is None:
      raise ValueError('cape positions need their settings '
                       '(config.positions.cape).')
    return cape_positions(batch, length, rng,
                          float(section['max_global_shift']),
                          float(section['max_local_shift']),
                          float(section['max_global_scaling']))

  @classmethod
  def bound(cls, positions_cfg, length):
    return cape_bound(length, positions_cfg.cape)

  @classmethod
  def span(cls, positions_cfg, length):
    return cape_span(length, positions_cfg.cape)


# config.positions.train / eval -> sampler. A new sampling is one class
# above and one line here; its settings (if any) live at
# config.positions.<name>.
REGISTRY: dict[str, type[Sampler]] = {
    'contiguous': Contiguous,
    'randomized': Randomized,
    'shift': Shift,
    'pose': PoSE,
    'cape': CAPE,
}
# The names at import (``REGISTRY`` itself is what the validator reads, so a
# sampler registered later is valid too).
KINDS = tuple(REGISTRY)
# The sampling of config.positions.train unless a config chooses another,
# and the positions of every evaluation and generation.
DEFAULT = 'contiguous'
# Kinds that draw real-valued (float32) positions; the others give int32.
REAL_KINDS = tuple(n for n, m in REGISTRY.items() if m.real)


def get(kind: str) -> type[Sampler]:
  try:
    return REGISTRY[kind]
  except KeyError:
    raise ValueError(f'Unknown position sampling {kind!r}; valid: '
                     f'{", ".join(REGISTRY)}.') from None


def eval_kind(train_kind: str) -> str:
  """The positions an evaluation of a run trained with ``train_kind`` uses
  when it asks for the training kind."""
  return get(train_kind).eval_kind or train_kind


def default_sections() -> dict[str, ml_collections.ConfigDict]:
  """``{name: config.positions.<name>}`` of the samplers with settings."""
  return {name: ml_collections.ConfigDict(section_defaults(m.FIELDS))
          for name, m in REGISTRY.items() if m.FIELDS}


def check_sections(positions_cfg) -> None:
  """Every sampler's settings against their field specs."""
  for name, m in REGISTRY.items():
    if m.FIELDS:
      check_section(positions_cfg[name], f'config.positions.{name}',
                    m.FIELDS)


def sample_positions(kind: str, batch: int, length: int, max_position: int,
                     rng: np.random.Generator,
                     positions_cfg: Optional[Mapping] = None) -> np.ndarray:
  """Positions ``[batch, length]`` of the given sampling kind: int32, or
  float32 for a kind of ``REAL_KINDS``. ``positions_cfg``:
  ``config.positions``, where a sampler with settings reads its own."""
  sampler = get(kind)
  if sampler.drawn and length > max_position:
    raise ValueError(
        f'{kind} positions need length ({length}) <= max_position '
        f'({max_position}); raise config.positions.max_position.')
  section = None
  if sampler.FIELDS and positions_cfg is not None:
    section = positions_cfg[kind]
  return sampler.draw(batch, length, max_position, rng, section)
