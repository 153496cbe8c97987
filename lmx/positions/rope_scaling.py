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
* ``ntk_by_parts``: YaRN paper Sec. 3.2:
  ``w_i' = (1 - gamma_i) w_i / s + gamma_i w_i``, so that pairs that turn
  fewer than ``beta_slow`` (1) times within L are interpolated like PI,
  pairs that turn more than ``beta_fast`` (32) times are kept, and those
  between are blended. The blend ``gamma_i`` comes in two forms
  (``config.model.rope.ramp``):

  - ``index`` (the default): as the authors' released code computes it
    (``find_correction_range`` / ``linear_ramp_mask`` of the YaRN
    repository, followed by Hugging Face transformers, and used to train
    every released YaRN model): the pair index at which a pair makes ``r``
    turns within L is ``d(r) = K ln(L / (2 pi r)) / (2 ln theta)``; with
    ``lo = max(floor(d(beta_fast)), 0)`` and
    ``hi = min(ceil(d(beta_slow)), K - 1)`` (``hi`` nudged by 0.001 if the
    two meet), ``gamma_i = 1 - clip((i - lo) / (hi - lo), 0, 1)``: linear
    in the pair index.
  - ``turns``: the paper's text, linear in ``r`` itself:
    ``gamma(r) = clip((r - beta_slow) / (beta_fast - beta_slow), 0, 1)``.

  Inside the ramp the two differ a lot (for K = 128, L = 4096, s = 4 by up
  to 73% in frequency, and more at small L, where the floor at pair 0
  matters: ``lmx.positions.rope_scaling.ntk_by_parts`` with both forms).
  With ``config.model.rope.truncate=False`` (Hugging Face's ``truncate``
  option of its ``yarn`` rope type) ``lo`` and ``hi`` are the fractional
  ``d(beta_fast)`` and ``d(beta_slow)``, not floored and ceiled (clamped to
  ``[0, K - 1]`` alike); ``True``, the default, is the released code's.
* ``yarn``: YaRN paper Sec. 3.4: NTK-by-parts frequencies, and
  q and k both multiplied by the attention factor
  ``a = sqrt(1/t) = 0.1 ln(s) + 1``, so the logits are multiplied by
  ``1/t = a^2`` (the code's ``mscale``). The factor's options follow Hugging
  Face transformers' ``_compute_yarn_parameters``
  (``src/transformers/modeling_rope_utils.py``), which multiplies cos and
  sin (so q and k each) by it:

  - ``attention_factor > 0``: ``a`` is that value (an override);
  - else, with ``mscale`` and ``mscale_all_dim`` both non-zero (the
    DeepSeek-V2/V3 configs): ``a = m(s, mscale) / m(s, mscale_all_dim)``
    with ``m(s, c) = 0.1 c ln(s) + 1`` (1 at ``s <= 1``), so equal values
    give ``a = 1``;
  - else ``a = m(s, 1)``, the paper's (one of the two alone is ignored,
    as Hugging Face ignores it).

  DeepSeek's own attention modules also multiply their softmax scale by
  ``m(s, mscale_all_dim)^2`` on every channel; that is the model's, not the
  rope type's, and lmx does not add it.
* ``llama3``: the Llama 3.1 scaling (Meta, "The Llama 3 Herd of Models"
  2024, and the ``apply_scaling`` of its reference code): with wavelengths
  ``lambda_i``, pairs with ``lambda_i < L / high_freq_factor`` are kept,
  pairs with ``lambda_i > L / low_freq_factor`` are divided by ``s``, and in
  between ``w_i' = (1 - smooth) w_i / s + smooth w_i`` with
  ``smooth = (L / lambda_i - low_freq_factor) / (high_freq_factor -
  low_freq_factor)``. Since ``L / lambda_i = r_i`` this is the NTK-by-parts
  ramp with ``alpha = low_freq_factor`` and ``beta = high_freq_factor``
  (linear in ``r``, as Meta's code computes it).
* ``longrope``: LongRoPE (Ding et al. 2024, "LongRoPE: Extending LLM
  Context Window Beyond 2 Million Tokens", arXiv:2402.13753, Sec. 3, and
  the ``longrope`` rope type of the released Phi-3 models): a rescale
  factor per pair, ``w_i' = w_i / lambda_i``, with two lists:
  ``long_factor`` for sequences longer than L and ``short_factor`` (all 1
  if unset) for the others, chosen per sequence from its largest position
  + 1, and the logits multiplied by ``1 + ln s / ln L`` (q and k each by
  the attention factor ``sqrt(1 + ln s / ln L)``). The paper finds the
  lists by evolutionary search; lmx takes them as given.

The attention scale returned by ``scaled_frequencies`` is the factor on the
LOGITS; ``RoPE.rotate`` multiplies q and k each by its square root.

The methods are a registry (``SCALINGS``): each is one small frozen
definition that owns its settings and their defaults (beside RoPE's own in
``config.model.rope``), its check, its frequency function, and how it is
set up to run a model trained at ``L`` at a length ``n`` (used by
``python -m lmx.evaluation.extensions``). A new method is one subclass of ``Scaling``
and one ``register`` call; every list of methods is read from the registry.

With partial rotary (``config.model.rope.partial < 1``) every formula takes
K as the number of rotated channels, as GPT-NeoX and Hugging Face do.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Optional

import jax
import jax.numpy as jnp
import ml_collections

from lmx.positions import far
from lmx.config.fields import FLOAT32_MAX, Fields, require
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


def correction_dim(turns: float, head_dim: int, theta: float,
                   original_max_len: float) -> float:
  """``d(r) = K ln(L / (2 pi r)) / (2 ln theta)``: the (fractional) pair
  index whose wavelength makes ``r`` turns within ``L`` (the inverse of
  ``r_i = L w_i / (2 pi)``; YaRN's released code)."""
  return (head_dim * math.log(original_max_len / (turns * 2.0 * math.pi))
          / (2.0 * math.log(theta)))


def correction_range(beta_fast: float, beta_slow: float, head_dim: int,
                     theta: float, original_max_len: float,
                     truncate: bool = True) -> tuple[float, float]:
  """``(lo, hi)``: ``floor(d(beta_fast))`` and ``ceil(d(beta_slow))``,
  clamped to ``[0, K - 1]`` as the released code clamps them. With
  ``truncate=False`` (Hugging Face's ``truncate`` option) the bounds are
  ``d(beta_fast)`` and ``d(beta_slow)`` themselves, clamped alike."""
  lo = correction_dim(beta_fast, head_dim, theta, original_max_len)
  hi = correction_dim(beta_slow, head_dim, theta, original_max_len)
  if truncate:
    lo, hi = math.floor(lo), math.ceil(hi)
  return max(lo, 0), min(hi, head_dim - 1)


def index_ramp(lo: float, hi: float, n_pairs: int) -> jax.Array:
  """``clip((i - lo) / (hi - lo), 0, 1)`` over pair indices ``i``; ``hi``
  is nudged by 0.001 where the bounds meet (the released code's guard)."""
  if lo == hi:
    hi = hi + 0.001
  i = jnp.arange(n_pairs, dtype=jnp.float32)
  return jnp.clip((i - lo) / (hi - lo), 0.0, 1.0)


RAMPS = ('index', 'turns')


def by_parts_gamma(inv_freq: jax.Array, original_max_len: float,
                   beta_fast: float, beta_slow: float, ramp_form: str,
                   theta: float, truncate: bool = True) -> jax.Array:
  """The weight ``gamma_i`` that keeps pair i's frequency (1: kept, 0:
  divided by s), in either form of the module docstring (``truncate``:
  the index form's bounds rounded outwards)."""
  if ramp_form == 'turns':
    return ramp(wavelength_turns(inv_freq, original_max_len), beta_slow,
                beta_fast)
  if ramp_form != 'index':
    raise ValueError(f'Unknown ramp {ramp_form!r}; valid: {RAMPS}.')
  n_pairs = inv_freq.shape[-1]
  lo, hi = correction_range(beta_fast, beta_slow, 2 * n_pairs, theta,
                            original_max_len, truncate)
  return 1.0 - index_ramp(lo, hi, n_pairs)


def ntk_by_parts(inv_freq: jax.Array, factor: float, original_max_len: float,
                 beta_fast: float = 32.0, beta_slow: float = 1.0,
                 ramp_form: str = 'index', theta: float = 10000.0,
                 truncate: bool = True) -> jax.Array:
  """NTK-by-parts (YaRN paper Sec. 3.2). ``inv_freq`` are plain RoPE's
  frequencies of base ``theta`` (``[K/2]``); ``ramp_form`` is ``'index'``
  (the released code's, the default) or ``'turns'`` (the paper's text);
  ``truncate``: the index ramp's bounds floored and ceiled (the default)."""
  gamma = by_parts_gamma(inv_freq, original_max_len, beta_fast, beta_slow,
                         ramp_form, theta, truncate)
  return _blend(inv_freq, factor, gamma)


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
  """``m(s, c) = 0.1 c ln(s) + 1``, and 1 at ``s <= 1`` (YaRN's code's
  ``get_mscale``)."""
  if factor <= 1.0:
    return 1.0
  return 0.1 * mscale * math.log(factor) + 1.0


def yarn_attention_factor(factor: float, mscale: float = 0.0,
                          mscale_all_dim: float = 0.0,
                          attention_factor: float = 0.0) -> float:
  """The factor ``a`` on q and k each (on cos and sin), as Hugging Face's
  ``_compute_yarn_parameters`` reads its options (module docstring): an
  explicit ``attention_factor > 0``; else ``m(s, mscale) / m(s,
  mscale_all_dim)`` when both are non-zero; else ``m(s, 1)`` (YaRN Sec.
  3.4). 0 stands for an option that is unset."""
  if attention_factor > 0.0:
    return float(attention_factor)
  if mscale and mscale_all_dim:
    return yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
  return yarn_mscale(factor)


def yarn_attention_scale(factor: float, mscale: float = 0.0,
                         mscale_all_dim: float = 0.0,
                         attention_factor: float = 0.0) -> float:
  """YaRN Sec. 3.4: the factor on the LOGITS, ``a^2`` with ``a`` the
  ``yarn_attention_factor`` on q and k (``1/t = (0.1 ln s + 1)^2`` at the
  defaults)."""
  return yarn_attention_factor(factor, mscale, mscale_all_dim,
                               attention_factor) ** 2


def longrope_attention_scale(factor: float, original_max_len: float) -> float:
  """LongRoPE's factor on the logits: ``1 + ln s / ln L`` (the square of
  the attention factor ``sqrt(1 + ln s / ln L)`` on q and k); 1 at s <= 1."""
  if factor <= 1.0:
    return 1.0
  return 1.0 + math.log(factor) / math.log(original_max_len)


def longrope(inv_freq: jax.Array, long_factor, short_factor,
             original_max_len: float, length: jax.Array) -> jax.Array:
  """LongRoPE frequencies ``w_i / lambda_i``: ``long_factor`` where
  ``length > L``, ``short_factor`` otherwise. ``length`` has any shape
  ``[...]`` (traced); the result is ``[..., K/2]``."""
  long_ = jnp.asarray(long_factor, jnp.float32)
  short = jnp.asarray(short_factor, jnp.float32)
  is_long = (jnp.asarray(length) > original_max_len)[..., None]
  return inv_freq / jnp.where(is_long, long_, short)


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
    for key, default in self.settings:
      if isinstance(default, float):
        f.float(f'rope.{key}', 0.0)
    # s enters ln s (YaRN's and LongRoPE's logit scale) and divides the
    # frequencies (w / s): a normal float32 (factor > 1 above holds it).
    if self.follows_length:
      clamp = far.far_field(model_cfg)
      require(not clamp,
              f"config.model.rope.scaling={self.name!r} follows the largest "
              f'key position, which the distance clamp {clamp} '
              'moves: use another scaling, or no clamp.')
    self.check_settings(model_cfg.rope)
    self.check_model(model_cfg)

  def check_settings(self, rope_cfg) -> None:
    """Rules among this method's own settings (ConfigError)."""
    del rope_cfg

  def check_model(self, model_cfg) -> None:
    """Rules between this method's settings and the model (ConfigError)."""
    del model_cfg

  def for_length(self, train_len: int, length: int,
                 model_cfg: ml_collections.ConfigDict) -> dict:
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

  def for_length(self, train_len, length, model_cfg):
    return {'scaling': self.name, 'factor': 1.0,
            'original_max_len': train_len}


class Linear(Scaling):
  name = 'linear'
  summary = 'Position Interpolation (Chen et al. 2023): w_i / s'
  needs_original_len = False

  def inv_freq(self, rope_cfg, head_dim, theta, positions):
    return linear(rope_inv_freq(head_dim, theta), float(rope_cfg.factor))


def _check_ntk_channels(name: str, model_cfg) -> None:
  """``ntk_base = theta * s^(K / (K - 2))`` divides by K - 2: K, the
  rotated channels, must be at least 4 (K = 2 divides by 0)."""
  k = rotary_dim(model_cfg)
  require(k >= 4,
          f"config.model.rope.scaling={name!r} raises the base to "
          f's^(K / (K - 2)) (K: the rotated channels per head, here {k}), '
          'which needs K >= 4. Give the heads more channels (config.model.'
          'd_model / num_heads, times config.model.rope.partial), or use '
          "another scaling (e.g. 'linear').")


class NTK(Scaling):
  name = 'ntk'
  summary = 'NTK-aware (bloc97 2023): base theta s^(K/(K-2))'
  needs_original_len = False

  def check_model(self, model_cfg):
    _check_ntk_channels(self.name, model_cfg)

  def inv_freq(self, rope_cfg, head_dim, theta, positions):
    return ntk(head_dim, theta, float(rope_cfg.factor))


class Dynamic(Scaling):
  name = 'dynamic'
  summary = ("dynamic NTK (YaRN Sec. 3.3): NTK-aware with s following each "
             "sequence's length")
  factor_at_least_one = True
  follows_length = True

  def check_model(self, model_cfg):
    _check_ntk_channels(self.name, model_cfg)

  def inv_freq(self, rope_cfg, head_dim, theta, positions):
    if positions is None:
      raise ValueError(f"RoPE scaling {self.name!r} needs the positions.")
    length = jnp.max(positions, axis=-1) + 1
    return dynamic(head_dim, theta, float(rope_cfg.factor),
                   float(rope_cfg.original_max_len), length)

  def for_length(self, train_len, length, model_cfg):
    # The scale follows the length of each call; the factor is its floor.
    return {'scaling': self.name, 'factor': 1.0,
            'original_max_len': train_len}


class NTKByParts(Scaling):
  name = 'ntk_by_parts'
  summary = ('NTK-by-parts (YaRN Sec. 3.2): pairs interpolated by how often '
             'they turn within L')
  # NTK-by-parts / YaRN ramp, in turns within L: pairs turning more than
  # beta_fast times are kept, fewer than beta_slow interpolated.
  # ramp: 'index' (the released code's, over the pair index) or 'turns'
  # (the paper's text, over r). truncate: the index ramp's bounds floored
  # and ceiled (the released code's; False: Hugging Face's truncate=False).
  settings = (('beta_fast', 32.0), ('beta_slow', 1.0), ('ramp', 'index'),
              ('truncate', True))

  def inv_freq(self, rope_cfg, head_dim, theta, positions):
    return ntk_by_parts(rope_inv_freq(head_dim, theta), float(rope_cfg.factor),
                        float(rope_cfg.original_max_len),
                        float(rope_cfg.beta_fast), float(rope_cfg.beta_slow),
                        str(rope_cfg.ramp), theta, bool(rope_cfg.truncate))

  def check_settings(self, rope_cfg):
    ramp_form = rope_cfg.ramp
    require(ramp_form in RAMPS,
            f'config.model.rope.ramp={ramp_form!r} is not a ramp form; use '
            "'index' (the YaRN authors' released code: linear in the pair "
            "index) or 'turns' (the paper's text: linear in the turns r).")
    fast, slow = float(rope_cfg.beta_fast), float(rope_cfg.beta_slow)
    require(fast > slow,
            f'config.model.rope.beta_fast={fast} must be greater than '
            f'config.model.rope.beta_slow={slow} (turns within '
            'original_max_len above which a pair is kept, and below which '
            'it is interpolated; the paper uses 32 and 1).')
    require(isinstance(rope_cfg.truncate, bool),
            f'config.model.rope.truncate={rope_cfg.truncate!r} must be True '
            '(the index ramp\'s bounds floored and ceiled, as the released '
            'code does) or False (left fractional).')
    require(rope_cfg.truncate or ramp_form == 'index',
            "config.model.rope.truncate=False acts on the 'index' ramp's "
            f"bounds only, but config.model.rope.ramp={ramp_form!r}: set "
            "ramp='index', or leave truncate=True.")

  def check_model(self, model_cfg):
    if model_cfg.rope.ramp != 'index':
      return  # the 'turns' ramp divides only by beta_fast - beta_slow > 0
    # correction_dim: d(r) = K ln(L / (2 pi r)) / (2 ln theta) at r =
    # beta_fast and beta_slow: ln of L / (2 pi r) needs r >= a normal
    # float32 > 0 (and L / (2 pi r) finite), ln theta != 0 needs theta > 1.
    f = Fields(model_cfg, 'config.model')
    f.positive('rope.beta_slow')
    length = float(model_cfg.rope.original_max_len)
    slow = float(model_cfg.rope.beta_slow)
    require(length / (2.0 * math.pi * slow) <= FLOAT32_MAX,
            f'config.model.rope.beta_slow={slow} is too small: the index '
            'ramp takes ln(original_max_len / (2 pi beta_slow)), which '
            'overflows. Use beta_slow >= 1e-30.')
    theta = float(model_cfg.rope.theta)
    require(theta > 1.0,
            f'config.model.rope.theta={theta}: scaling={self.name!r} with '
            "ramp='index' finds the ramp's pairs by d(r) = K ln(L / (2 pi "
            'r)) / (2 ln theta), which needs theta > 1 (ln 1 = 0). Use a '
            "base above 1 (RoPE's is 10000), or ramp='turns'.")


class YaRN(NTKByParts):
  name = 'yarn'
  summary = ('YaRN (Peng et al. 2023, Sec. 3.4): NTK-by-parts and logits x '
             '(0.1 ln s + 1)^2')
  # The attention factor's options as Hugging Face reads them (0: unset):
  # mscale and mscale_all_dim (both set: a = m(s, mscale) / m(s,
  # mscale_all_dim), DeepSeek-V2/V3), attention_factor (> 0: a itself).
  settings = NTKByParts.settings + (
      ('mscale', 0.0), ('mscale_all_dim', 0.0), ('attention_factor', 0.0))

  def logit_scale(self, rope_cfg):
    return yarn_attention_scale(float(rope_cfg.factor),
                                float(rope_cfg.mscale),
                                float(rope_cfg.mscale_all_dim),
                                float(rope_cfg.attention_factor))

  def check_settings(self, rope_cfg):
    super().check_settings(rope_cfg)
    scale = self.logit_scale(rope_cfg)
    require(scale <= FLOAT32_MAX,
            f'config.model.rope.attention_factor='
            f'{rope_cfg.attention_factor}: the logits would be multiplied '
            f'by its square, {scale:.3g}, beyond float32. Use a factor near '
            '1 (0: the paper\'s 0.1 ln(s) + 1).')


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


class LongRoPE(Scaling):
  name = 'longrope'
  summary = ('LongRoPE (Ding et al. 2024): a rescale factor per pair, long '
             'or short list by length, logits x (1 + ln s / ln L)')
  # The per-pair rescale factors lambda_i (K/2 each, K the rotated
  # channels): long_factor past original_max_len, short_factor up to it
  # (empty: all 1).
  settings = (('long_factor', ()), ('short_factor', ()))
  follows_length = True

  def inv_freq(self, rope_cfg, head_dim, theta, positions):
    if positions is None:
      raise ValueError(f"RoPE scaling {self.name!r} needs the positions.")
    n_pairs = head_dim // 2
    short = tuple(rope_cfg.short_factor) or (1.0,) * n_pairs
    length = jnp.max(positions, axis=-1) + 1
    return longrope(rope_inv_freq(head_dim, theta), tuple(rope_cfg.long_factor),
                    short, float(rope_cfg.original_max_len), length)

  def logit_scale(self, rope_cfg):
    return longrope_attention_scale(float(rope_cfg.factor),
                                    float(rope_cfg.original_max_len))

  def check_model(self, model_cfg):
    n_pairs = rotary_dim(model_cfg) // 2
    f = Fields(model_cfg, 'config.model')
    # longrope_attention_scale: 1 + ln s / ln L divides by ln L: L >= 2.
    f.int('rope.original_max_len', 2)
    for key, needed in (('long_factor', True), ('short_factor', False)):
      # longrope: w_i / lambda_i; a lambda below float32's smallest normal
      # makes inf frequencies, and the rotation NaN.
      value = f.normal_floats(f'rope.{key}')
      require(len(value) == n_pairs or (not needed and not value),
              f'config.model.rope.{key} has {len(value)} factors, but the '
              f'model turns {n_pairs} channel pairs per head (rotated '
              f'channels / 2): give exactly {n_pairs}'
              + ('' if needed else ', or none for all 1') + '.')

  def for_length(self, train_len, length, model_cfg):
    """Without LongRoPE's search, the long factors are the search's starting
    point: the per-pair ratio ``w_i / w_i'`` of YaRN's frequencies at this
    scale (so the comparison measures the switch and the attention factor,
    not searched factors)."""
    out = super().for_length(train_len, length, model_cfg)
    if out['scaling'] == NONE:
      return out
    k = rotary_dim(model_cfg)
    theta = float(model_cfg.rope.theta)
    plain = rope_inv_freq(k, theta)
    yarn = ntk_by_parts(plain, out['factor'], float(train_len), theta=theta)
    out['long_factor'] = tuple(float(x) for x in plain / yarn)
    out['short_factor'] = ()
    return out


def rotary_dim(model_cfg: ml_collections.ConfigDict) -> int:
  """The channels of each head RoPE turns: ``partial`` of the head
  dimension (GPT-NeoX's ``rotary_pct``), an even number."""
  head_dim = model_cfg.d_model // model_cfg.num_heads
  return int(head_dim * float(model_cfg.rope.partial))


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
                Llama3(), LongRoPE()):
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
  model_cfg.rope.update(get(name).for_length(train_len, length, model_cfg))


def factor_of(model_cfg: ml_collections.ConfigDict) -> float:
  """The scale factor ``s`` the config's RoPE scaling runs with."""
  return float(model_cfg.rope.factor)


def scaled_frequencies(rope_cfg: ml_collections.ConfigDict, head_dim: int,
                       theta: float, positions: jax.Array | None = None):
  """The frequencies and logit scale that ``rope_cfg`` asks for.

  Args:
    rope_cfg: ``config.model.rope`` (complete: ``lmx.config.defaults``).
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

  Factor rules: ``linear``, ``ntk``, ``ntk_by_parts``, ``yarn``, ``llama3``
  and ``longrope`` need ``factor > 1`` (at 1 they are plain RoPE, below 1 they
  would shrink the context); ``dynamic`` needs ``factor >= 1`` (1 is the
  YaRN paper's dynamic NTK, > 1 emozilla's steeper variant). ``factor`` is
  not read by ``none``.
  """
  get(Fields(model_cfg, 'config.model').get('rope.scaling')).check(model_cfg)
