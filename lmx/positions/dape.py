"""Score adapters, chosen with ``config.model.score_adapter.kind``: what
transforms a layer's logits pair by pair, after the encoding's bias and
before the mask and the softmax. Members:

* ``off``: nothing (the logits are ``A + B``).
* ``dape``: DAPE (Zheng et al., NeurIPS 2024, "DAPE: Data-Adaptive
  Positional Encoding for Length Extrapolation", section 3): the
  logits ``A`` (``q . k / sqrt(K)``) and the encoding's bias ``B`` of one
  (query, key) pair, each a vector over the ``H`` heads, go through a small
  MLP across heads, and the logits become

      A + B + f([A; B]),   f(z) = W2 LeakyReLU(W1 z + b1) + b2,

  ``W1: 2H -> D``, ``W2: D -> H`` (``D = dape_width``, 32 as in the configs
  of its code, ``mlp_width``).

The paper writes the adapted score as the logits plus the bias plus an
MLP of both; the exact form follows the authors' released code
(github.com/chuanyang-Zheng/DAPE, ``megatron/model/positional_embeddings.py``:
``AliBi_C``, ``ParallelKerpleLog_C``, ``FIRE_C``, named after the method's
earlier name, CAPE; ``DAPE.py`` holds the same forms), where the paper's
equation leaves details open:

* the residual keeps the bias: ``x + bias + mlp2(cat(x, bias))``, with the
  logits first in the concatenation;
* the activation is LeakyReLU (PyTorch's default slope 0.01), both linear
  maps with a bias;
* ``A`` is the scaled logit (the code's ``baddbmm`` with ``alpha =
  1/sqrt(K)``), taken before the mask: the MLP sees every pair and the mask
  then hides the future ones (the function is pointwise per pair, so masked
  pairs never reach a visible one);
* every layer has its own MLP (each attention module builds one), initialised
  as ``torch.nn.Linear`` is: weights and biases uniform in
  ``+-1/sqrt(fan_in)``;
* the code pairs it with ALiBi, KERPLE and FIRE. Here any encoding with a
  bias takes it (T5's buckets and Sandwich too, through the same ``bias``
  hook); an encoding without one (RoPE, NoPE, ...) is refused with a
  ConfigError. (The code's ``Nope_C``/``DAPEV1`` run an MLP over ``A`` alone
  for NoPE and RoPE; that form is not offered.)

Where lmx departs from the code: the MLP runs in float32 whatever the
compute dtype (the code's configs run it in float16); the base encodings
are lmx's own (``FIRE_C`` also swaps FIRE's own MLP activation from ReLU
to LeakyReLU, which lmx's ``fire`` does not follow); the code's ALiBi and
KERPLE give the future pairs a zero bias where lmx's give ``|i - j|``'s,
which the mask hides either way.

Because ``f`` acts on one pair at a time, the chunked backend computes it
tile by tile (no ``T x S`` array beyond a visible tile), decoding with a
KV cache computes it over the new queries' rows, and it is causal. The
fused kernels (flash, cudnn) do not compute it: they refuse such a call and
``auto`` falls back to dense or chunked.

DAPE V2 (Zheng et al. 2024, "DAPE V2: Process Attention Score as Feature
Map") replaces the MLP by two 1 x k convolutions over the key axis of the
(lower-triangular) score map. It is not offered: it is not pointwise per
pair, so every key tile would need a halo of ``2 (k // 2)`` neighbouring
keys' logits (recomputed, and the skipped tiles of a windowed mask could
no longer be skipped); and in the released code (``Alibi_DAPEV2``,
``Kerple_DAPEV2``) the conv's zero padding at the last key makes the last
``k // 2`` queries of a sequence see other hidden values than the same
queries inside a longer one, so KV-cache decoding (where every new query
is the last) would not equal the forward pass without departing from the
code.

Each member is a frozen dataclass built once per layer (``build``) from
``config.model.score_adapter``: it declares the settings it reads there
(``FIELDS``), checks its rules (``check``), initialises the parameters a
layer holds for it (``init_params``) and adapts a block of logits
(``adapt``). A new adapter is a subclass here and one line in ``REGISTRY``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, ClassVar, Optional

import jax
import jax.numpy as jnp
import ml_collections

from lmx.config.fields import Field, check_section, require, section_defaults

SECTION = 'config.model.score_adapter'
KIND = 'kind'

# (logits [B, H, t, s] float32, bias [B or 1, H, t, s] or None) -> logits.
Adapt = Callable[[jax.Array, Optional[jax.Array]], jax.Array]


@dataclasses.dataclass(frozen=True)
class ScoreAdapter:
  """Base: adapts nothing. ``param`` names the attention module's
  attribute that holds the layer's parameters (a dict), '' for none."""

  FIELDS: ClassVar[dict[str, Field]] = {}
  param: ClassVar[str] = ''

  @classmethod
  def build(cls, section) -> 'ScoreAdapter':
    return cls(**{name: type(spec.default)(section[name])
                  for name, spec in cls.FIELDS.items()})

  @classmethod
  def check(cls, model_cfg, used: dict) -> None:
    """ConfigError for settings this member cannot run with; ``used``:
    ``{name: encoding class}`` of the encodings the layers use."""
    del model_cfg, used

  @property
  def active(self) -> bool:
    return bool(self.param)

  def init_params(self, num_heads: int, key: jax.Array) -> dict:
    del num_heads, key
    return {}

  def adapt(self, params: dict) -> Optional[Adapt]:
    """The function a layer's attention applies to each block of logits
    with these parameters, or None."""
    del params
    return None


@dataclasses.dataclass(frozen=True)
class Off(ScoreAdapter):
  """The logits as the encoding gives them."""


def dape_mlp(logits_BxHxTxS: jax.Array, bias_BxHxTxS: jax.Array,
             params: dict) -> jax.Array:
  """DAPE's ``f([A; B])`` per pair: ``[B, H, t, s]`` float32. ``params``:
  ``w1 [2H, D]`` (rows ``0 .. H-1`` read the logits, ``H .. 2H-1`` the
  bias), ``b1 [D]``, ``w2 [D, H]``, ``b2 [H]``."""
  h = logits_BxHxTxS.shape[1]
  w1 = params['w1'].astype(jnp.float32)
  a = logits_BxHxTxS.astype(jnp.float32)
  b = jnp.broadcast_to(bias_BxHxTxS.astype(jnp.float32), a.shape)
  hid_BxTxSxD = (jnp.einsum('bhts,hd->btsd', a, w1[:h])
                 + jnp.einsum('bhts,hd->btsd', b, w1[h:])
                 + params['b1'].astype(jnp.float32))
  hid_BxTxSxD = jax.nn.leaky_relu(hid_BxTxSxD, 0.01)
  out_BxTxSxH = (jnp.einsum('btsd,dh->btsh', hid_BxTxSxD,
                            params['w2'].astype(jnp.float32))
                 + params['b2'].astype(jnp.float32))
  return jnp.transpose(out_BxTxSxH, (0, 3, 1, 2))


def dape_init(num_heads: int, width: int, key: jax.Array) -> dict:
  """``torch.nn.Linear``'s initialisation of the two maps (the authors'
  code leaves them at it): each weight and bias uniform in
  ``+-1/sqrt(fan_in)``."""
  k1, k2, k3, k4 = jax.random.split(key, 4)

  def uniform(k, shape, fan_in):
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(k, shape, jnp.float32, -bound, bound)

  return {'w1': uniform(k1, (2 * num_heads, width), 2 * num_heads),
          'b1': uniform(k2, (width,), 2 * num_heads),
          'w2': uniform(k3, (width, num_heads), width),
          'b2': uniform(k4, (num_heads,), width)}


@dataclasses.dataclass(frozen=True)
class DAPE(ScoreAdapter):
  """``A + B + dape_mlp(A, B)``: the module docstring."""
  FIELDS: ClassVar[dict[str, Field]] = {
      'dape_width': Field(32, "DAPE's hidden width D (the paper's and its "
                          "code's 32)", lo=1),
  }
  param: ClassVar[str] = 'dape'
  dape_width: int = 32

  @classmethod
  def check(cls, model_cfg, used):
    plain = [name for name, enc in used.items() if not enc.has_bias()]
    with_bias = sorted(n for n, e in _encodings().items() if e.has_bias())
    require(not plain,
            f"{SECTION}.kind='dape' adapts the encoding's bias with the "
            f'logits, and the {", ".join(map(repr, plain))} encoding adds '
            'none. Use an encoding with a bias (config.model.position one '
            f'of {", ".join(map(repr, with_bias))}; the paper uses alibi, '
            f"kerple and fire), or {SECTION}.kind='off'.")
    require(model_cfg.attention != 'flash',
            f"config.model.attention='flash' computes the logits inside a "
            f"fused kernel, which does not apply {SECTION}.kind='dape' "
            "(an MLP over each pair's logits and bias). Use 'auto', "
            "'chunked' or 'dense'.")

  def init_params(self, num_heads, key):
    return dape_init(num_heads, self.dape_width, key)

  def adapt(self, params):
    def fn(logits, bias):
      if bias is None:   # checked against; a bias of zeros then
        bias = jnp.zeros_like(logits)
      return logits + bias.astype(jnp.float32) + dape_mlp(logits, bias,
                                                          params)
    return fn


def _encodings():
  from lmx import positions  # pylint: disable=g-import-not-at-top
  return positions.REGISTRY


# config.model.score_adapter.kind -> member.
REGISTRY: dict[str, type[ScoreAdapter]] = {
    'off': Off,
    'dape': DAPE,
}

DEFAULT = 'off'


def fields() -> dict[str, Field]:
  """Every field of ``config.model.score_adapter``."""
  out = {KIND: Field(DEFAULT, 'the score adapter (REGISTRY)',
                     choices=tuple(REGISTRY))}
  for member in REGISTRY.values():
    out.update(member.FIELDS)
  return out


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(section_defaults(fields()))


def check(model_cfg, used: dict) -> None:
  """ConfigError for ``config.model.score_adapter``: its fields against
  their specs, then the chosen member's rules."""
  section = model_cfg.score_adapter
  check_section(section, SECTION, fields())
  REGISTRY[section[KIND]].check(model_cfg, used)


def build(model_cfg) -> ScoreAdapter:
  """The member the model's config chooses (Off for a config without the
  section)."""
  section = model_cfg.get('score_adapter', None)
  if section is None:
    return Off()
  return REGISTRY[section[KIND]].build(section)
