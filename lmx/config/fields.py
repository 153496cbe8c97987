"""Type and range checks of config fields, shared by ``lmx.config.validate`` and by
every position encoding's own ``check``.

``Fields(node, prefix)`` reads dotted paths below ``node`` and raises
``ConfigError`` with the full name of the field (``prefix.path``), the
rule it breaks and the value it has:

    f = Fields(model_cfg, 'config.model')
    f.float('rope.theta', 0.0, lo_open=True)     # a positive, finite base
    f.choice('kerple.kernel', ('log', 'power'))

A range is derived from the arithmetic the field enters, and stated beside
that arithmetic (the encoding's or scaling's own ``check``), citing it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Optional

from lmx.errors import ConfigError

# The model computes in float32 (or bfloat16, whose range is float32's): a
# setting beyond these becomes inf or 0 on the device, and the model's
# outputs NaN.
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32
# Seeds enter jax.random.key (a C long: int64) and numpy's SeedSequence
# (non-negative): [0, 2^63 - 1].
INT64_MAX = 2**63 - 1


def require(cond: bool, msg: str) -> None:
  """ConfigError(msg) unless ``cond``."""
  if not cond:
    raise ConfigError(msg)


def check_seed(value: Any, name: str, lo: int = 0) -> int:
  """A random seed: ``jax.random.key(seed)`` takes an int64 (OverflowError
  beyond 2^63 - 1), ``numpy.random.default_rng([seed, ...])`` a
  non-negative integer: so [0, 2^63 - 1] (``lo`` -2^63 where only jax reads
  it). ConfigError naming ``name`` otherwise."""
  require(isinstance(value, int) and not isinstance(value, bool)
          and lo <= value <= INT64_MAX,
          f'{name} must be an integer in [{lo}, {INT64_MAX}] (a seed is an '
          f'int64), got {value!r}.')
  return value


class Fields:
  """Checked reads of the fields below one config node."""

  def __init__(self, node: Any, prefix: str = 'config'):
    self.node = node
    self.prefix = prefix

  def name(self, path: str) -> str:
    return f'{self.prefix}.{path}'

  def get(self, path: str):
    node = self.node
    for part in path.split('.'):
      if part not in node:
        raise ConfigError(
            f'{self.name(path)} is missing. Start from a config in configs/ '
            '(they all build on configs/base.py, whose defaults are '
            'lmx/config/defaults.py), which sets every field.')
      node = node[part]
    return node

  def int(self, path: str, lo: Optional[int] = None,
          hi: Optional[int] = None) -> int:
    value = self.get(path)
    name = self.name(path)
    require(isinstance(value, int) and not isinstance(value, bool),
            f'{name} must be an integer, got {value!r}.')
    require(lo is None or value >= lo,
            f'{name} must be at least {lo}, got {value}.')
    require(hi is None or value <= hi,
            f'{name} must be at most {hi}, got {value}.')
    return value

  def float(self, path: str, lo: Optional[float] = None,
            hi: Optional[float] = None, lo_open: bool = False,
            hi_open: bool = False) -> float:
    value = self.get(path)
    name = self.name(path)
    require(isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value),
            f'{name} must be a finite number, got {value!r}.')
    require(abs(value) <= FLOAT32_MAX,
            f'{name}={value!r} is beyond float32\'s range (+-{FLOAT32_MAX:.3g}'
            '), in which the model computes: it would be inf there. Use a '
            'smaller number.')
    lo_ok = lo is None or (value > lo if lo_open else value >= lo)
    hi_ok = hi is None or (value < hi if hi_open else value <= hi)
    if not (lo_ok and hi_ok):
      left = '(' if lo_open else '['
      right = ')' if hi_open else ']'
      raise ConfigError(
          f'{name} must be in {left}{"-inf" if lo is None else lo}, '
          f'{"inf" if hi is None else hi}{right}, got {value}.')
    return value

  def positive(self, path: str) -> float:
    """A finite number > 0 (bases, scales, timescales, eps) that float32
    holds without rounding it to 0."""
    value = self.float(path, 0.0, lo_open=True)
    require(value >= FLOAT32_TINY,
            f'{self.name(path)}={value!r} is below float32\'s smallest '
            f'normal number ({FLOAT32_TINY:.3g}), in which the model '
            'computes: it would be 0 (or lose its precision) there, and the '
            'model\'s outputs would not be finite. Use a larger number.')
    return value

  def seed(self, path: str) -> int:
    """A random seed (``check_seed``)."""
    return check_seed(self.get(path), self.name(path))

  def normal_floats(self, path: str) -> tuple:
    """A list of positive finite numbers, each a normal float32 (a divisor
    or factor below FLOAT32_TINY makes inf or 0 on the device, then NaN)."""
    value = self.get(path)
    name = self.name(path)
    require(isinstance(value, (tuple, list)) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool)
        and math.isfinite(x) and FLOAT32_TINY <= x <= FLOAT32_MAX
        for x in value),
            f'{name}={value!r} must be a list of positive finite numbers '
            f'within float32\'s normal range [{FLOAT32_TINY:.3g}, '
            f'{FLOAT32_MAX:.3g}], in which the model computes.')
    return tuple(value)

  def bool(self, path: str) -> bool:
    value = self.get(path)
    require(isinstance(value, bool),
            f'{self.name(path)} must be True or False, got {value!r}.')
    return value

  def choice(self, path: str, options: Sequence[str]) -> str:
    value = self.get(path)
    require(value in options,
            f'{self.name(path)}={value!r} is not one of: '
            f'{", ".join(map(repr, options))}.')
    return value


# ------------------------------------------------------------ field specs


@dataclasses.dataclass(frozen=True)
class Field:
  """One setting of a config section, declared as data: its default (whose
  Python type is the field's type; or the type alone, where the default
  lives elsewhere, e.g. depends on the model size), what it means, and its
  range. The method families' members declare their sections with these
  (``lmx.positions.far``, ``length_scaling``, ``sampling``), the core
  sections are declared in ``lmx.config.specs``, and ``check_section``
  checks any of them.

  ``lo``/``hi`` bound a number (``lo_open``/``hi_open``: strictly);
  ``positive`` asks for a number float32 holds without rounding it to 0;
  ``choices`` lists a string's values; ``seed``: a random seed;
  ``positive_ints``: a tuple of positive integers."""
  default: Any
  doc: str
  lo: Optional[float] = None
  hi: Optional[float] = None
  lo_open: bool = False
  hi_open: bool = False
  positive: bool = False
  choices: Optional[tuple] = None
  seed: bool = False
  positive_ints: bool = False

  @property
  def type(self) -> type:
    return self.default if isinstance(self.default, type) else type(
        self.default)

  def read(self, f: 'Fields', path: str):
    """The checked value of ``path`` (this field) below ``f``'s node."""
    kind = self.type
    if kind is bool:
      return f.bool(path)
    if self.choices is not None:
      return f.choice(path, self.choices)
    if self.seed:
      return f.seed(path)
    if self.positive_ints:
      value = f.get(path)
      require(isinstance(value, (tuple, list)) and all(
          isinstance(x, int) and not isinstance(x, bool) and x > 0
          for x in value),
              f'{f.name(path)} must be positive integers, got {value!r}.')
      return tuple(value)
    if kind is int:
      return f.int(path, self.lo, self.hi)
    if kind is float:
      if self.positive:
        return f.positive(path)
      return f.float(path, self.lo, self.hi, self.lo_open, self.hi_open)
    value = f.get(path)
    require(isinstance(value, kind),
            f'{f.name(path)} must be a {kind.__name__}, got {value!r}.')
    return value


def section_defaults(fields: dict[str, Field]) -> dict:
  """``{name: default}`` of a section's field specs."""
  return {name: spec.default for name, spec in fields.items()}


def check_section(node: Any, prefix: str, fields: dict[str, Field],
                  closed: bool = True) -> dict:
  """Every field of the section ``node`` (named ``prefix``) against its spec;
  ``{name: value}``. ConfigError for a value out of its type or range, or
  (``closed``: the specs are the whole section) for a field the section
  does not declare."""
  unknown = (sorted(set(node) - set(fields))
             if closed and hasattr(node, 'keys') else [])
  require(not unknown,
          f'{prefix} has unknown field(s) {unknown}; valid: '
          f'{", ".join(fields)}.')
  f = Fields(node, prefix)
  return {name: spec.read(f, name) for name, spec in fields.items()}


def changed(node: Any, fields: dict[str, Field]) -> list[str]:
  """The fields of ``node`` whose value differs from their default."""
  return [name for name, spec in fields.items()
          if name in node and node[name] != spec.default]
