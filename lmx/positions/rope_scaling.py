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

Note on YaRN's ramp: the paper defines it on ``r`` (above, what is
implemented here); the authors' code and Hugging Face ramp linearly over the
dimension index between rounded (floor/ceil) bounds instead, which gives
slightly different blends for the pairs in between.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections

from lmx.positions.rope import rope_inv_freq

METHODS = ('none', 'linear', 'ntk', 'dynamic', 'ntk_by_parts', 'yarn',
           'llama3')
# Methods whose formula involves the pretraining length L.
NEEDS_ORIGINAL_LEN = ('dynamic', 'ntk_by_parts', 'yarn', 'llama3')


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


def scaled_frequencies(rope_cfg: ml_collections.ConfigDict, head_dim: int,
                       theta: float, positions: jax.Array | None = None):
  """The frequencies and logit scale that ``rope_cfg`` asks for.

  Args:
    rope_cfg: ``config.model.rope`` (fields missing from configs saved before
      scaling existed read as ``scaling='none'``).
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
  scaling = rope_cfg.get('scaling', 'none')
  factor = float(rope_cfg.get('factor', 1.0))
  length_l = float(rope_cfg.get('original_max_len', 0))
  beta_fast = float(rope_cfg.get('beta_fast', 32.0))
  beta_slow = float(rope_cfg.get('beta_slow', 1.0))
  plain = rope_inv_freq(head_dim, theta)
  if scaling == 'none':
    return plain, 1.0
  if scaling == 'linear':
    return linear(plain, factor), 1.0
  if scaling == 'ntk':
    return ntk(head_dim, theta, factor), 1.0
  if scaling == 'dynamic':
    if positions is None:
      raise ValueError("RoPE scaling 'dynamic' needs the positions.")
    length = jnp.max(positions, axis=-1) + 1
    return dynamic(head_dim, theta, factor, length_l, length), 1.0
  if scaling == 'ntk_by_parts':
    return ntk_by_parts(plain, factor, length_l, beta_fast, beta_slow), 1.0
  if scaling == 'yarn':
    return (ntk_by_parts(plain, factor, length_l, beta_fast, beta_slow),
            yarn_attention_scale(factor))
  if scaling == 'llama3':
    return llama3(plain, factor, length_l,
                  float(rope_cfg.get('low_freq_factor', 1.0)),
                  float(rope_cfg.get('high_freq_factor', 4.0))), 1.0
  raise ValueError(_unknown(scaling))


def _unknown(scaling) -> str:
  return (f'config.model.rope.scaling={scaling!r} is not a RoPE scaling. '
          f'Valid names: {", ".join(METHODS)}.')


def check(model_cfg: ml_collections.ConfigDict) -> str | None:
  """A message naming the field and the fix if ``config.model.rope``'s
  scaling settings are inconsistent, else None.

  Factor rules: ``linear``, ``ntk``, ``ntk_by_parts``, ``yarn`` and
  ``llama3`` need ``factor > 1`` (at 1 they are plain RoPE, below 1 they
  would shrink the context); ``dynamic`` needs ``factor >= 1`` (1 is the
  YaRN paper's dynamic NTK, > 1 emozilla's steeper variant). ``factor`` is
  not read by ``none``.
  """
  rope_cfg = model_cfg.get('rope', None)
  if rope_cfg is None:
    return None
  scaling = rope_cfg.get('scaling', 'none')
  if scaling not in METHODS:
    return _unknown(scaling)
  if scaling == 'none':
    return None
  factor = float(rope_cfg.get('factor', 1.0))
  if scaling == 'dynamic':
    if not factor >= 1.0:
      return (f'config.model.rope.factor={factor} is below 1; '
              f"scaling='dynamic' needs factor >= 1 (1: the YaRN paper's "
              'dynamic NTK, s = max(1, length / original_max_len)). '
              'Set config.model.rope.factor=1.0 or more.')
  elif not factor > 1.0:
    return (f'config.model.rope.factor={factor}: scaling={scaling!r} needs '
            'factor > 1 (the new context length over the original one; at 1 '
            "it is plain RoPE). Set config.model.rope.factor, e.g. 4.0, or "
            "use config.model.rope.scaling='none'.")
  if scaling in NEEDS_ORIGINAL_LEN and not rope_cfg.get('original_max_len',
                                                        0) > 0:
    return (f'config.model.rope.original_max_len is unset (0); '
            f'scaling={scaling!r} needs the pretraining context length the '
            'scaling is relative to. Set config.model.rope.original_max_len, '
            'e.g. to the training run\'s config.train.seq_len.')
  if scaling in ('ntk_by_parts', 'yarn'):
    fast = float(rope_cfg.get('beta_fast', 32.0))
    slow = float(rope_cfg.get('beta_slow', 1.0))
    if not fast > slow:
      return (f'config.model.rope.beta_fast={fast} must be greater than '
              f'config.model.rope.beta_slow={slow} (turns within '
              'original_max_len above which a pair is kept, and below which '
              'it is interpolated; the paper uses 32 and 1).')
  if scaling == 'llama3':
    low = float(rope_cfg.get('low_freq_factor', 1.0))
    high = float(rope_cfg.get('high_freq_factor', 4.0))
    if not high > low:
      return (f'config.model.rope.low_freq_factor={low} must be less than '
              f'config.model.rope.high_freq_factor={high} (Llama 3.1 uses '
              '1 and 4).')
  return None
