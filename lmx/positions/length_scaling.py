"""Length scalings, chosen by name with ``config.model.length_scaling.kind``
(or per layer with ``config.model.layers.length_scaling``).

A length scaling changes how sharp a query's attention is as the sequence
grows, independently of the position encoding:

* ``off``: nothing.
* ``logn``: the queries times ``max(1, log(p + 1) / log L)`` at position
  ``p`` (Su 2021's entropy-invariant scaling, and the ReRoPE and
  Self-Extend authors' patches, which multiply the queries by it).
* ``llama4``: the queries times Llama 4's temperature of its NoPE layers,
  from each query's token index (its place in the sequence; in KV-cache
  decoding, its cache index), as the reference code has it, or from its
  position value (``llama4_from``).
* ``ssmax``: Scalable-Softmax, each query's whole score times ``s log n``
  (``n`` the keys it sees, ``s`` learned per head and layer).

Each member is a frozen dataclass built once per layer from the shared
section ``config.model.length_scaling`` (``build``): it declares the
settings it reads there (``FIELDS``, field specs), checks the rules of its
own (``check``), and computes its scale (``query_scale_at`` before the
encoding turns the queries, or ``logit_scale`` on the scores). Adding one
is a subclass here and one line in ``REGISTRY``; the model, the attention
backends and the config validator ask the member, never its name.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Optional

import jax
import jax.numpy as jnp
import ml_collections

from lmx.config.fields import Field, check_section, require, section_defaults

SECTION = 'config.model.length_scaling'
KIND = 'kind'


@dataclasses.dataclass(frozen=True)
class LengthScaling:
  """Base: scales nothing. Subclasses set ``FIELDS`` (the settings of
  ``config.model.length_scaling`` they read, as dataclass fields of the same
  names) and override the hooks they use."""

  FIELDS: ClassVar[dict[str, Field]] = {}
  # Multiplies the queries before the turns (qk-norm would undo it).
  scales_queries: ClassVar[bool] = False
  # Multiplies each query's whole score, a bias included (a fused kernel
  # adds the bias unscaled).
  scales_scores: ClassVar[bool] = False
  # The attention module's attribute holding its learned per-head values
  # (the checkpoint's name for them), or '' for none.
  param: ClassVar[str] = ''

  @classmethod
  def build(cls, section) -> 'LengthScaling':
    """The member with its settings read from ``section``."""
    return cls(**{name: type(spec.default)(section[name])
                  for name, spec in cls.FIELDS.items()})

  @classmethod
  def check(cls, section, where: str) -> None:
    """ConfigError for a setting this member cannot run with; ``where``
    names the field that chose it, for messages."""
    del section, where

  @classmethod
  def configure(cls, model_cfg, train_len: int) -> None:
    """Chooses this member for every layer of ``model_cfg`` (a copy of a
    run's ``config.model``), relative to the training length where it has
    one (an inference-time setup)."""
    model_cfg.length_scaling.kind = next(
        name for name, member in REGISTRY.items() if member is cls)
    if 'base_len' in cls.FIELDS:
      model_cfg.length_scaling.base_len = train_len

  def query_scale(self, q_pos_BxT: jax.Array) -> Optional[jax.Array]:
    """``[B, T]`` float32 factors of the queries at these positions, or
    None."""
    del q_pos_BxT
    return None

  def query_scale_at(self, q_pos_BxT: jax.Array,
                     q_idx_T: jax.Array) -> Optional[jax.Array]:
    """What the model asks: ``[B, T]`` float32 factors of the queries at
    positions ``q_pos_BxT`` and token indices ``q_idx_T`` (their places in
    the sequence: ``0 .. T - 1`` in a forward pass, the cache indices in
    decoding), or None. By default ``query_scale`` of the positions."""
    del q_idx_T
    return self.query_scale(q_pos_BxT)

  def init_param(self, num_heads: int) -> Optional[jax.Array]:
    """The initial learned values ``[H]`` (with ``param``), or None."""
    del num_heads
    return None

  def logit_scale(self, param_H, q_idx_T: jax.Array,
                  mask) -> Optional[jax.Array]:
    """``[H, T]`` float32 factors of each query's scores, or None."""
    del param_H, q_idx_T, mask
    return None


_BASE_LEN = Field(0, 'the training length L the scale is relative to',
                  lo=0)


def _require_base_len(section, where: str, name: str, rule: str) -> None:
  base_len = int(section.base_len)
  require(base_len >= 2,
          f'{where} ({name!r}) needs config.model.length_scaling.base_len '
          f'>= 2 ({rule}), but it is {base_len}. Set '
          'config.model.length_scaling.base_len to the training length '
          "(config.train.seq_len), or kind='off'.")


@dataclasses.dataclass(frozen=True)
class Off(LengthScaling):
  """No length scaling."""


def logn_query_scale(q_pos_BxT: jax.Array, base_len: int) -> jax.Array:
  """log-n attention scaling: ``max(1, log(p + 1) / log L)`` for a query
  at position ``p``. ``[B, T]`` float32; 1 up to position ``L - 1``."""
  p = q_pos_BxT.astype(jnp.float32)
  return jnp.maximum(1.0, jnp.log(p + 1.0) / math.log(base_len))


@dataclasses.dataclass(frozen=True)
class LogN(LengthScaling):
  """``logn_query_scale`` on the queries."""
  FIELDS: ClassVar[dict[str, Field]] = {'base_len': _BASE_LEN}
  scales_queries: ClassVar[bool] = True
  base_len: int = 0

  @classmethod
  def check(cls, section, where):
    _require_base_len(section, where, 'logn',
                      'logn scales queries by log(p + 1) / log(base_len)')

  def query_scale(self, q_pos_BxT):
    return logn_query_scale(q_pos_BxT, self.base_len)


def llama4_query_scale(q_pos_BxT: jax.Array, floor_scale: float,
                       attn_scale: float) -> jax.Array:
  """Llama 4's query temperature of its NoPE layers
  (``attn_temperature_tuning`` in its released code): ``1 + attn_scale *
  log(floor((p + 1) / floor_scale) + 1)`` for a query at ``p``. 1 up to
  ``p = floor_scale - 2``, then growing in steps of ``floor_scale``.
  ``[B, T]`` float32 (any shape: the formula is elementwise).

  The reference code takes ``p`` to be the token's index in the sequence:
  Hugging Face transformers' ``Llama4TextAttention`` from
  ``cache_position``, Meta's llama-models from ``arange(start_pos,
  start_pos + seqlen)``; ``Llama4`` passes the index by default
  (``llama4_from='index'``) and the position value with
  ``llama4_from='position'``. The two agree under contiguous positions.
  """
  p = q_pos_BxT.astype(jnp.float32)
  return 1.0 + attn_scale * jnp.log(jnp.floor((p + 1.0) / floor_scale) + 1.0)


@dataclasses.dataclass(frozen=True)
class Llama4(LengthScaling):
  """``llama4_query_scale`` on the queries."""
  FIELDS: ClassVar[dict[str, Field]] = {
      'floor_scale': Field(8192.0, "Llama 4's floor_scale: positions per "
                           'step of the temperature', positive=True),
      'attn_scale': Field(0.1, "Llama 4's attn_scale: the temperature's "
                          'growth per step', lo=0.0),
      'llama4_from': Field('index', "what Llama 4's temperature grows with: "
                           "'index', the token's place in the sequence (the "
                           "cache index in decoding; the reference code's), "
                           "or 'position', its position value",
                           choices=('index', 'position')),
  }
  scales_queries: ClassVar[bool] = True
  floor_scale: float = 8192.0
  attn_scale: float = 0.1
  llama4_from: str = 'index'

  def query_scale(self, q_pos_BxT):
    return llama4_query_scale(q_pos_BxT, self.floor_scale, self.attn_scale)

  def query_scale_at(self, q_pos_BxT, q_idx_T):
    if self.llama4_from == 'position':
      return self.query_scale(q_pos_BxT)
    idx_BxT = jnp.broadcast_to(q_idx_T[None, :], q_pos_BxT.shape)
    return self.query_scale(idx_BxT)


def ssmax_logit_scale(s_H: jax.Array, q_idx_T: jax.Array,
                      mask) -> jax.Array:
  """Scalable-Softmax (Nakanishi 2025, eq. 1): the scores of a query that
  sees ``n`` keys go into the softmax times ``s log n``, ``s`` learned per
  head (and per layer). ``n`` is the number of keys the query attends over
  (``Mask.visible_count`` of its token index), so a sliding window or the
  Lambda mask stops its growth. ``[H, T]`` float32; 0 for the first token,
  which sees itself alone (its softmax is 1 whatever the scale)."""
  log_n_T = jnp.log(mask.visible_count(q_idx_T).astype(jnp.float32))
  return s_H.astype(jnp.float32)[:, None] * log_n_T[None, :]


def ssmax_init(base_len: int) -> float:
  """The initial ``s``: ``1 / mean(log n)`` over ``n = 1 .. base_len``,
  so that over the training length the scale ``s log n`` averages 1 and the
  untrained model starts as close to plain softmax as one ``s`` allows."""
  mean_log = sum(math.log(n) for n in range(1, base_len + 1)) / base_len
  return 1.0 / mean_log


@dataclasses.dataclass(frozen=True)
class SSMax(LengthScaling):
  """``ssmax_logit_scale`` on the scores, ``s`` learned per head."""
  FIELDS: ClassVar[dict[str, Field]] = {
      'base_len': _BASE_LEN,
      'ssmax_init': Field(0.0, 'the initial s (0: 1 / mean(log n) over '
                          '1 .. base_len)', lo=0.0),
  }
  scales_scores: ClassVar[bool] = True
  param: ClassVar[str] = 'ssmax'
  base_len: int = 0
  ssmax_init: float = 0.0

  @classmethod
  def check(cls, section, where):
    _require_base_len(section, where, 'ssmax',
                      'ssmax starts s at 1 / mean(log n) over 1 .. base_len')

  def init_param(self, num_heads):
    init = self.ssmax_init or ssmax_init(self.base_len)
    return jnp.full((num_heads,), init, jnp.float32)

  def logit_scale(self, param_H, q_idx_T, mask):
    return ssmax_logit_scale(param_H, q_idx_T, mask)


# config.model.length_scaling.kind -> member. A new length scaling is one
# subclass above and one line here.
REGISTRY: dict[str, type[LengthScaling]] = {
    'off': Off,
    'logn': LogN,
    'ssmax': SSMax,
    'llama4': Llama4,
}


# The kind of config.model.length_scaling unless a config chooses another.
DEFAULT = 'off'


def fields() -> dict[str, Field]:
  """Every field of ``config.model.length_scaling``: ``kind`` and the
  settings of every member (a setting two members read is declared alike)."""
  out = {KIND: Field(DEFAULT, 'the length scaling (REGISTRY)',
                     choices=tuple(REGISTRY))}
  for member in REGISTRY.values():
    out.update(member.FIELDS)
  return out


def default_config() -> ml_collections.ConfigDict:
  """``config.model.length_scaling``, every member's settings at their
  defaults."""
  return ml_collections.ConfigDict(section_defaults(fields()))


def former_defaults(saved_model: dict) -> dict:
  """Settings of ``config.model.length_scaling`` that a config saved before
  they existed ran with, where that differs from today's default
  (``lmx.config.defaults.complete`` fills them in): Llama 4's temperature
  grew with the position value before it followed the reference's token
  index."""
  uses = [saved_model.get('length_scaling', {}).get(KIND)]
  uses += list(saved_model.get('layers', {}).get('length_scaling') or ())
  return {'llama4_from': 'position'} if 'llama4' in uses else {}


def get(kind: str) -> type[LengthScaling]:
  """The member registered as ``kind``."""
  try:
    return REGISTRY[kind]
  except KeyError:
    raise ValueError(f'Unknown length scaling {kind!r}; valid: '
                     f'{", ".join(REGISTRY)}.') from None


def check(model_cfg, kinds, where: str) -> None:
  """ConfigError for ``config.model.length_scaling``: every field against
  its spec, then the rules of each member some layer uses (``kinds``;
  ``where`` names the field that chose them)."""
  section = model_cfg.length_scaling
  check_section(section, SECTION, fields())
  for kind in dict.fromkeys(kinds):
    REGISTRY[kind].check(section, where)


def build(model_cfg, kind: str) -> LengthScaling:
  """The member ``kind`` with the model's settings."""
  return get(kind).build(model_cfg.length_scaling)
