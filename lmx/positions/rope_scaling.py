"""RoPE frequency scaling: running a RoPE model past its pretraining length.

Each method changes RoPE's frequencies ``w_i = theta^(-2i/K)`` (K = head dim,
``i = 0 .. K/2 - 1``, see ``lmx.positions.rope``) as a function of the scale
``s`` (``config.model.rope.factor``) and, for most, of the pretraining
context length ``L`` (``config.model.rope.original_max_len``). YaRN also
multiplies the attention logits by a temperature factor. Used at inference
time on a model trained with plain RoPE, or for a short fine-tune at the new
length.

Notation (YaRN paper, Peng et al. 2023, "YaRN: Efficient Context Window
Extension of Large Language Models", arXiv:2309.00071, Sec. 2-3):

    lambda_i = 2 pi / w_i         the wavelength of pair i, in tokens
    r_i      = L / lambda_i       how many full turns pair i makes within L

Methods (``config.model.rope.scaling``):

* ``none``: plain RoPE.
* ``linear``: Position Interpolation (Chen et al. 2023, "Extending Context
  Window of Large Language Models via Positional Interpolation",
  arXiv:2306.15595, Sec. 2.2: ``f'(x, m) = f(x, m L / L')``):
  positions divided by ``s``, i.e. ``w_i' = w_i / s``.
* ``ntk``: "NTK-aware" interpolation (bloc97 2023; written out in the YaRN
  paper, Sec. 3.1): the base changes,
  ``theta' = theta * s^(K / (K - 2))``, so the highest frequency is kept and
  the lowest one is divided by exactly ``s``.
* ``dynamic``: "Dynamic NTK" (YaRN paper Sec. 3.3: the NTK-aware
  formula with ``s = max(1, l' / L)``, ``l'`` the current sequence length;
  with a factor ``s > 1`` it is the generalisation of emozilla 2023, as in
  the Hugging Face ``dynamic`` rope type:
  ``s_dyn = max(1, s * l' / L - (s - 1))``; ``s = 1`` gives the paper's form exactly).
  ``l'`` is the largest position + 1 of each sequence, computed in-graph.
  At ``l' <= L`` it is plain RoPE, bit for bit.
* ``ntk_by_parts``: YaRN paper Sec. 3.2: with the ramp
  ``gamma(r) = 0 if r < alpha, 1 if r > beta, (r - alpha)/(beta - alpha)
  otherwise``, ``w_i' = (1 - gamma(r_i)) w_i / s + gamma(r_i) w_i``: pairs
  that turn fewer than ``alpha`` times within L are interpolated like PI,
  pairs that turn more than ``beta`` times are kept, those between are
  blended. ``alpha = beta_slow`` (1), ``beta = beta_fast`` (32).
* ``yarn``: YaRN paper Sec. 3.4: NTK-by-parts frequencies, and
  q and k both multiplied by ``sqrt(1/t) = 0.1 ln(s) + 1``, so the logits
  are multiplied by ``1/t = (0.1 ln(s) + 1)^2``.
* ``llama3``: the Llama 3.1 scaling (Meta, "The Llama 3 Herd of Models"
  2024, and the ``apply_scaling`` of its reference code): with wavelengths
  ``lambda_i``, pairs with ``lambda_i < L / high_freq_factor`` are kept,
  pairs with ``lambda_i > L / low_freq_factor`` are divided by ``s``, and in
  between ``w_i' = (1 - smooth) w_i / s + smooth w_i`` with
  ``smooth = (L / lambda_i - low_freq_factor) / (high_freq_factor -
  low_freq_factor)``. Since ``L / lambda_i = r_i`` this is the NTK-by-parts
  ramp with ``alpha = low_freq_factor`` and ``beta = high_freq_factor``.

The attention scale returned by ``scaled_frequencies`` is the factor on the
LOGITS; ``RoPE.rotate`` multiplies q and k each by its square root.

The methods are a registry (``SCALINGS``): each is one small frozen
definition that owns its settings and their defaults (beside RoPE's own in
``config.model.rope``), its check, its frequency function, and how it is
set up to run a model trained at ``L`` at a length ``n`` (used by
``python -m lmx.extensions``). A new method is one subclass of ``Scaling``
and one ``register`` call; every list of methods is read from the registry.

Note on YaRN's ramp: the paper defines it on ``r`` (above, what is
implemented here); the authors' code and Hugging Face ramp linearly over the
dimension index between rounded (floor/ceil) bounds instead, which gives
slightly different blends for the pairs in between.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Optional

import jax
import jax.numpy as jnp
import ml_collections

from lmx.checks import Fields, require
from lmx.errors import ConfigError


def rope_inv_freq(head_dim: int, theta: float = 10000.0) -> jax.Array:
  """RoPE's frequencies ``w_i = theta^(-2i/head_dim)``: ``[head_dim/2]``."""
  if head_dim % 2:
    raise ValueError(f'RoPE needs an even head dimension, got {head_dim}.')
  i = jnp.arange(head_dim // 2, dtype=jnp.float32)
  return theta ** (-2.0 * i / head_dim)


# ------------------------------------------------------------- the formulas


def wavelength_turns(inv_freq: jax.Array, original_max_len: float) -> jax.Array:
  """``r_i = L / lambda_i = L w_i / (2 pi)``: turns of pair i within L."""
  return original_max_len * inv_freq / (2.0 * math.pi)


def ramp(r: jax.Array, alpha: float, beta: float) -> jax.Array:
  """YaRN Sec. 3.2 gamma(r): 0 below ``alpha``, 1 above ``beta``, linear in between."""
  return jnp.clip((r - alpha) / (beta - alpha), 0.0, 1.0)


def _blend(inv_freq: jax.Array, factor: float, gamma: jax.Array) -> jax.Array:
  """``(1 - gamma) w / s + gamma w``, exact at gamma 0 or 1 and at s = 1."""
  interpolated = inv_freq / factor
  mixed = interpolated + gamma * (inv_freq - interpolated)
  return jnp.where(gamma >= 1.0, inv_freq,
                   jnp.where(gamma <= 0.0, interpolated, mixed))


def linear(inv_freq: jax.Array, factor: float) -> jax.Array:
  """Position Interpolation (Chen et al. 2023, Sec. 2.2): ``w_i / s``."""
  return inv_freq / factor


def ntk_base(theta: float, head_dim: int, factor):
  """NTK-aware base (YaRN paper Sec. 3.1): ``theta * s^(K / (K - 2))``."""
  return theta * factor ** (head_dim / (head_dim - 2))


def ntk(head_dim: int, theta: float, factor: float) -> jax.Array:
  """NTK-aware frequencies: plain RoPE with base ``ntk_base(theta, K, s)``."""
  return rope_inv_freq(head_dim, ntk_base(theta, head_dim, factor))


def dynamic_factor(length: jax.Array, factor: float,
                   original_max_len: float) -> jax.Array:
  """``max(1, s * l' / L - (s - 1))``; with s = 1, YaRN's ``max(1, l'/L)``.

  ``length`` may be traced (an array): it is the current sequence length.
  """
  length = jnp.asarray(length, jnp.float32)
  return jnp.maximum(1.0, factor * length / original_max_len - (factor - 1.0))


def dynamic(head_dim: int, theta: float, factor: float,
            original_max_len: float, length: jax.Array) -> jax.Array:
  """Dynamic NTK (YaRN paper Sec. 3.3): NTK-aware with ``dynamic_factor``.

  ``length`` has any shape ``[...]``; the result is ``[..., head_dim / 2]``.
  Where the dynamic factor is 1 (``length <= L``) the frequencies are plain
  RoPE's, bit for bit.
  """
  plain = rope_inv_freq(head_dim, theta)
  s_dyn = dynamic_factor(length, factor, original_max_len)[..., None]
  i = jnp.arange(head_dim // 2, dtype=jnp.float32)
  scaled = ntk_base(theta, head_dim, s_dyn) ** (-2.0 * i / head_dim)
  return jnp.where(s_dyn > 1.0, scaled, plain)


def ntk_by_parts(inv_freq: jax.Array, factor: float, original_max_len: float,
                 beta_fast: float = 32.0, beta_slow: float = 1.0) -> jax.Array:
  """NTK-by-parts (YaRN paper Sec. 3.2), ramp on ``r_i``."""
  gamma = ramp(wavelength_turns(inv_freq, original_max_len), beta_slow,
               beta_fast)
  return _blend(inv_freq, factor, gamma)


def yarn_attention_scale(factor: float) -> float:
  """YaRN Sec. 3.4: the factor on the logits, ``1/t = (0.1 ln s + 1)^2``."""
  if factor <= 1.0:
    return 1.0
  return (0.1 * math.log(factor) + 1.0) ** 2


def llama3(inv_freq: jax.Array, factor: float, original_max_len: float,
           low_freq_factor: float = 1.0,
           high_freq_factor: float = 4.0) -> jax.Array:
  """Llama 3.1 scaling: kept above ``high``, divided by s below ``low``
  (in turns within L), ``smooth`` interpolation in between."""
  smooth = ramp(wavelength_turns(inv_freq, original_max_len), low_freq_factor,
                high_freq_factor)
  return _blend(inv_freq, factor, smooth)


# ------------------------------------------------------------- the registry

# Settings every method shares, in config.model.rope beside RoPE's theta:
# the scale s and L, the pretraining context length it is relative to.
COMMON_DEFAULTS = {
    # The scale s: new context length / original_max_len (> 1; dynamic
    # also allows 1, the YaRN paper's form).
    'factor': 1.0,
    # L, the pretraining context length the scaling is relative to
    # (dynamic, ntk_by_parts, yarn, llama3); 0 = unset.
    'original_max_len': 0,
}


@dataclasses.dataclass(frozen=True)
class Scaling:
  """One RoPE scaling method. Subclasses set the class attributes and
  override ``inv_freq`` (and ``check_settings`` for rules of their own).

  * ``name``: the value of ``config.model.rope.scaling``;
  * ``summary``: one line, paper and what changes (for listings);
  * ``settings``: its own fields of ``config.model.rope`` and their
    defaults (methods that share a field share its default);
  * ``needs_original_len``: whether the formula involves ``L``;
  * ``factor_at_least_one``: ``factor >= 1`` suffices (else ``> 1``);
  * ``follows_length``: the scale follows each sequence's length (its
    frequencies depend on the keys' positions), so a KV cache cannot hold
    turned keys and a distance clamp would change the scale.
  """

  name: ClassVar[str] = ''
  summary: ClassVar[str] = ''
  settings: ClassVar[tuple[tuple[str, Any], ...]] = ()
  needs_original_len: ClassVar[bool] = True
  factor_at_least_one: ClassVar[bool] = False
  follows_length: ClassVar[bool] = False

  def inv_freq(self, rope_cfg, head_dim: int, theta: float,
               positions: Optional[jax.Array]) -> jax.Array:
    raise NotImplementedError

  def logit_scale(self, rope_cfg) -> float:
    """The factor on the attention logits (YaRN's temperature)."""
    del rope_cfg
    return 1.0

  def check(self, model_cfg: ml_collections.ConfigDict) -> None:
    """Raises ConfigError unless ``config.model.rope`` suits this method."""
    f = Fields(model_cfg, 'config.model')
    factor = f.float('rope.factor')
    if self.factor_at_least_one:
      require(factor >= 1.0,
              f'config.model.rope.factor={factor} is below 1; '
              f'scaling={self.name!r} needs factor >= 1 (1: the YaRN '
              "paper's dynamic NTK, s = max(1, length / original_max_len)). "
              'Set config.model.rope.factor=1.0 or more.')
    else:
      require(factor > 1.0,
              f'config.model.rope.factor={factor}: scaling={self.name!r} '
              'needs factor > 1 (the new context length over the original '
              "one; at 1 it is plain RoPE). Set config.model.rope.factor, "
              "e.g. 4.0, or use config.model.rope.scaling='none'.")
    length = f.int('rope.original_max_len', 0)
    require(not self.needs_original_len or length > 0,
            f'config.model.rope.original_max_len is unset (0); '
            f'scaling={self.name!r} needs the pretraining context length the '
            'scaling is relative to. Set config.model.rope.original_max_len, '
            "e.g. to the training run's config.train.seq_len.")
    for key, _ in self.settings:
      f.float(f'rope.{key}', 0.0)
    self.check_settings(model_cfg.rope)

  def check_settings(self, rope_cfg) -> None:
    """Rules among this method's own settings (ConfigError)."""
    del rope_cfg

  def for_length(self, train_len: int, length: int) -> dict:
    """The ``config.model.rope`` fields that set this method up to run a
    model trained at ``train_len`` on sequences of ``length``: the scale
    ``s = length / train_len`` relative to ``L = train_len``, and plain
    RoPE where ``s <= 1``."""
    if length <= train_len:
      return {'scaling': NONE, 'factor': 1.0, 'original_max_len': train_len}
    return {'scaling': self.name, 'factor': float(length / train_len),
            'original_max_len': train_len}


class NoScaling(Scaling):
  name = 'none'
  summary = 'plain RoPE'
  needs_original_len = False

  def inv_freq(self, rope_cfg, head_dim, theta, positions):
    return rope_inv_freq(head_dim, theta)

  def check(self, model_cfg):
    pass  # factor and L are not read

  def for_length(self, train_len, length):
    return {'scaling': self.name, 'factor': 1.0,
            'original_max_len': train_len}


class Linear(Scaling):
  name = 'linear'
  summary = 'Position Interpolation (Chen et al. 2023): w_i / s'
  needs_original_len = False

  def inv_freq(self, rope_cfg, head_dim, theta, positions):
    return linear(rope_inv_freq(head_dim, theta), float(rope_cfg.factor))


class NTK(Scaling):
  name = 'ntk'
  summary = 'NTK-aware (bloc97 2023): base theta s^(K/(K-2))'
  needs_original_len = False

  def inv_freq(self, rope_cfg, head_dim, theta, positions):
    return ntk(head_dim, theta, float(rope_cfg.factor))


class Dynamic(Scaling):
  name = 'dynamic'
  summary = ("dynamic NTK (YaRN Sec. 3.3): NTK-aware with s following each "
             "sequence's length")
  factor_at_least_one = True
  follows_length = True

  def inv_freq(self, rope_cfg, head_dim, theta, positions):
    if positions is None:
      raise ValueError(f"RoPE scaling {self.name!r} needs the positions.")
    length = jnp.max(positions, axis=-1) + 1
    return dynamic(head_dim, theta, float(rope_cfg.factor),
                   float(rope_cfg.original_max_len), length)

  def check(self, model_cfg):
    super().check(model_cfg)
    clamped = (model_cfg.rerope.window > 0
               or model_cfg.lm_infinite.distance_limit > 0)
    require(not clamped,
            f"config.model.rope.scaling={self.name!r} follows the largest "
            'key position, which a distance clamp (config.model.rerope.window '
            'or lm_infinite.distance_limit) moves: use another scaling, or no '
            'clamp.')

  def for_length(self, train_len, length):
    # The scale follows the length of each call; the factor is its floor.
    return {'scaling': self.name, 'factor': 1.0,
            'original_max_len': train_len}


class NTKByParts(Scaling):
  name = 'ntk_by_parts'
  summary = ('NTK-by-parts (YaRN Sec. 3.2): pairs interpolated by how often '
             'they turn within L')
  # NTK-by-parts / YaRN ramp, in turns within L: pairs turning more than
  # beta_fast times are kept, fewer than beta_slow interpolated.
  settings = (('beta_fast', 32.0), ('beta_slow', 1.0))

  def inv_freq(self, rope_cfg, head_dim, theta, positions):
    return ntk_by_parts(rope_inv_freq(head_dim, theta), float(rope_cfg.factor),
                        float(rope_cfg.original_max_len),
                        float(rope_cfg.beta_fast), float(rope_cfg.beta_slow))

  def check_settings(self, rope_cfg):
    fast, slow = float(rope_cfg.beta_fast), float(rope_cfg.beta_slow)
    require(fast > slow,
            f'config.model.rope.beta_fast={fast} must be greater than '
            f'config.model.rope.beta_slow={slow} (turns within '
            'original_max_len above which a pair is kept, and below which '
            'it is interpolated; the paper uses 32 and 1).')


class YaRN(NTKByParts):
  name = 'yarn'
  summary = ('YaRN (Peng et al. 2023, Sec. 3.4): NTK-by-parts and logits x '
             '(0.1 ln s + 1)^2')

  def logit_scale(self, rope_cfg):
    return yarn_attention_scale(float(rope_cfg.factor))


class Llama3(Scaling):
  name = 'llama3'
  summary = ('Llama 3.1: kept above high_freq_factor turns within L, / s '
             'below low_freq_factor')
  # The same ramp between low_freq_factor and high_freq_factor turns
  # (wavelengths L/low .. L/high).
  settings = (('low_freq_factor', 1.0), ('high_freq_factor', 4.0))

  def inv_freq(self, rope_cfg, head_dim, theta, positions):
    return llama3(rope_inv_freq(head_dim, theta), float(rope_cfg.factor),
                  float(rope_cfg.original_max_len),
                  float(rope_cfg.low_freq_factor),
                  float(rope_cfg.high_freq_factor))

  def check_settings(self, rope_cfg):
    low = float(rope_cfg.low_freq_factor)
    high = float(rope_cfg.high_freq_factor)
    require(high > low,
            f'config.model.rope.low_freq_factor={low} must be less than '
            f'config.model.rope.high_freq_factor={high} (Llama 3.1 uses '
            '1 and 4).')


SCALINGS: dict[str, Scaling] = {}


def register(scaling: Scaling) -> Scaling:
  """Adds a method to the registry. A setting it shares with a method
  already there must have the same default (there is one default)."""
  have = default_settings()
  for key, value in scaling.settings:
    if key in have and have[key] != value:
      raise ValueError(f'RoPE scaling {scaling.name!r} gives {key} the '
                       f'default {value!r}, but another method has '
                       f'{have[key]!r}.')
  SCALINGS[scaling.name] = scaling
  return scaling


def default_settings() -> dict:
  """Every method's settings with their defaults (the scaling part of
  ``RoPE.default_config()``)."""
  out = dict(COMMON_DEFAULTS)
  for s in SCALINGS.values():
    out.update(s.settings)
  return out


for _method in (NoScaling(), Linear(), NTK(), Dynamic(), NTKByParts(), YaRN(),
                Llama3()):
  register(_method)
NONE = NoScaling.name
METHODS = tuple(SCALINGS)
# Methods whose formula involves the pretraining length L.
NEEDS_ORIGINAL_LEN = tuple(n for n, s in SCALINGS.items()
                           if s.needs_original_len)


def get(name: str) -> Scaling:
  """The registered method ``name``, or a ConfigError listing them."""
  if name not in SCALINGS:
    raise ConfigError(
        f'config.model.rope.scaling={name!r} is not a RoPE scaling. Valid '
        f'names: {", ".join(SCALINGS)}.')
  return SCALINGS[name]


def configure(model_cfg: ml_collections.ConfigDict, train_len: int,
              length: int, name: str) -> None:
  """Sets ``config.model.rope`` up for method ``name`` to run a model
  trained at ``train_len`` on sequences of ``length`` (``for_length``)."""
  model_cfg.rope.update(get(name).for_length(train_len, length))


def factor_of(model_cfg: ml_collections.ConfigDict) -> float:
  """The scale factor ``s`` the config's RoPE scaling runs with."""
  return float(model_cfg.rope.factor)


def scaled_frequencies(rope_cfg: ml_collections.ConfigDict, head_dim: int,
                       theta: float, positions: jax.Array | None = None):
  """The frequencies and logit scale that ``rope_cfg`` asks for.

  Args:
    rope_cfg: ``config.model.rope`` (complete: ``lmx.defaults``).
    head_dim: K.
    theta: RoPE's base.
    positions: ``[..., S]`` integer positions; needed by ``dynamic`` only,
      which takes ``l' = max(positions over the last axis) + 1`` per row.

  Returns:
    ``(inv_freq, attention_scale)``: ``inv_freq`` is ``[head_dim / 2]``
    float32 (``[..., head_dim / 2]`` for ``dynamic``); ``attention_scale`` is
    the Python float the attention LOGITS are multiplied by (1.0 except for
    yarn). ``scaling='none'`` or ``factor=1`` give plain RoPE's frequencies
    exactly (dynamic at ``factor=1`` is YaRN's dynamic NTK, plain up to L).
  """
  method = get(rope_cfg.scaling)
  return (method.inv_freq(rope_cfg, head_dim, theta, positions),
          method.logit_scale(rope_cfg))


def check(model_cfg: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the field and the fix if
  ``config.model.rope``'s scaling settings are inconsistent.

  Factor rules: ``linear``, ``ntk``, ``ntk_by_parts``, ``yarn`` and
  ``llama3`` need ``factor > 1`` (at 1 they are plain RoPE, below 1 they
  would shrink the context); ``dynamic`` needs ``factor >= 1`` (1 is the
  YaRN paper's dynamic NTK, > 1 emozilla's steeper variant). ``factor`` is
  not read by ``none``.
  """
  get(Fields(model_cfg, 'config.model').get('rope.scaling')).check(model_cfg)
