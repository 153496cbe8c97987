"""Far branches and masks: what attention does past the distances a model
was trained on, whatever the encoding. Each member has its own section,
``config.model.<name>``, and is off at its defaults:

* ``rerope``: ReRoPE (Su 2023) and Leaky ReRoPE: distances ``d >= window``
  scored at ``window + leak * (d - window)`` (``Clamp``).
* ``lm_infinite``: LM-Infinite (Han et al. 2023): the Lambda-shaped mask
  (``n_global`` first tokens and the last ``n_local``) and, with
  ``distance_limit``, no distance scored beyond it (``Clamp`` at leak 0).
* ``self_extend``: Self-Extend (Jin et al. 2024): pairs at distance
  ``>= window`` scored at grouped positions (``SelfExtend``).
* ``dca``: Dual Chunk Attention (An et al. 2024; ``lmx.positions.dca``):
  two far branches picked by the chunks of the pair (``DualChunk``).
* ``string``: STRING (An et al. 2025; ``lmx.positions.string_shift``):
  distances ``d >= offset`` scored at ``d - offset + local`` (``Shift``).
* ``sinks``: attention sinks, learned slots every query sees before the
  keys (a logit per head with a zero value; memory key/value slots).

A distance clamp or Self-Extend scores the far pairs by a second *branch*:
the same queries and keys, turned (and biased) by the encoding's own hooks
at the far positions of the member's ``far_positions``. That is how each
acts on any encoding through its position arrays.

A member declares its settings as field specs (``FIELDS``), says when it
is on (``active``) and by which field (``switch``), checks the rules it has
with the encodings the layers use (``check``), and builds the frozen object
a layer's attention holds (``build``), which gives the layer its far
branch (``far``), its mask (``mask``), its learned slots (``init_params``,
``prefix``) and whether a fused kernel can compute it (``kernel_refusal``).
Rules between members are generic (``check``: one far branch at most; a
setting changed in a member that is off acts on nothing and is refused).
An inference-time extension (``lmx.evaluation.extensions``) sets a member
up for a length with its ``configure``. A new member is one class here (or
in a module of its own: ``dca``, ``string_shift``) and one line in
``REGISTRY``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections

from lmx.errors import ConfigError
from lmx.config.fields import (Field, changed, check_section, require,
                               section_defaults)
from lmx.model.masks import Mask
from lmx.positions import dca, length_scaling, string_shift


class Prefix(NamedTuple):
  """Slots every query attends to before the sequence's keys, whatever the
  mask: attention sinks. Visible to every query and scored without
  positions."""
  logits: jax.Array   # [B, H, T, P] float32, already scaled
  v: jax.Array        # [B, P, H, K]


@dataclasses.dataclass(frozen=True)
class Clamp:
  """Distances ``d >= window`` are scored at ``window + leak * (d - window)``.

  ``leak = 0`` clamps them at ``window``: ReRoPE (Su 2023) and LM-Infinite's
  distance limit. ``0 < leak < 1`` is Leaky ReRoPE (the blog's ``1/k``).
  """

  window: int
  leak: float = 0.0

  def far_positions(self, q_pos_BxT: jax.Array, k_pos_BxS: jax.Array):
    """Positions whose differences are the clamped distances.

    ``q' - k' = window + leak * (q - k - window)``: with ``leak = 0`` every
    query sits at ``window`` and every key at 0 (integers, so bias encodings
    see exact distances); otherwise ``q' = leak*q + (1-leak)*window`` and
    ``k' = leak*k`` (fractional: rotary encodings only).
    """
    if self.leak == 0.0:
      return (jnp.full_like(q_pos_BxT, self.window), jnp.zeros_like(k_pos_BxS))
    qf = q_pos_BxT.astype(jnp.float32) * self.leak + (
        (1.0 - self.leak) * self.window)
    return qf, k_pos_BxS.astype(jnp.float32) * self.leak


@dataclasses.dataclass(frozen=True)
class SelfExtend:
  """Self-Extend's grouped attention (Jin et al. 2024, "LLM Maybe LongLM:
  Self-Extend LLM Context Window Without Tuning", Sec. 3; as its released
  code computes the positions).

  Pairs closer than the neighbour window ``W = window`` keep their
  positions. Pairs at distance ``>= W`` are scored at grouped positions:
  the key at ``k // G`` and the query at ``q // G + W - W // G``
  (``G = group``), shifted so that the grouped distances continue where the
  neighbour ones stop (distance ``W`` maps to about ``W``). The largest
  distance of a length-n window becomes about ``(n - 1) / G + W - W / G``.
  Positions stay integers, so it acts on any relative encoding's rotation
  or bias through the far branch, exactly as the distance clamps do.
  ``G = 1`` is the identity.
  """

  window: int
  group: int

  def far_positions(self, q_pos_BxT: jax.Array, k_pos_BxS: jax.Array):
    """``(q // G + W - W // G, k // G)`` (integer division)."""
    g, w = self.group, self.window
    qf = jnp.floor_divide(q_pos_BxT, g) + (w - w // g)
    return qf.astype(q_pos_BxT.dtype), jnp.floor_divide(k_pos_BxS, g)


def sink_prefix(q_BxTxHxK: jax.Array, sink_logit_H: Optional[jax.Array] = None,
                mem_k_MxHxK: Optional[jax.Array] = None,
                mem_v_MxHxK: Optional[jax.Array] = None,
                key_norm: Optional[Callable[[jax.Array], jax.Array]] = None
                ) -> Optional[Prefix]:
  """Attention sinks as slots before the keys, or None without any.

  * ``mem_k``/``mem_v``: ``M`` learned key/value slots per head (persistent
    memory, Sukhbaatar et al. 2019; StreamingLLM's learnable sink token,
    Xiao et al. 2024, Sec. 3.3, as keys and values of its own): scored
    ``q . k_m / sqrt(K)`` with no position, so every query, however far,
    scores them alike. ``key_norm`` (``[B, M, H, K] -> [B, M, H, K]``)
    normalises the memory keys as the layer normalises its own keys
    (qk-norm, KeyNorm), so that their logits keep the bound the
    normalisation gives every other logit (``[-sqrt K, sqrt K]`` under
    qk-norm; ``[-|q|, |q|]`` under KeyNorm). x-transformers does the same:
    with ``qk_norm`` its ``Attention.forward`` passes ``mem_k`` through the
    keys' own l2norm and scale before scoring them.
  * ``sink_logit``: one learned logit per head with a zero value: the
    softmax denominator gains ``exp(s_h)`` and a query may put weight on
    nothing (the off-by-one softmax when ``s_h = 0``, its initial value).
  """
  b, t, h, kd = q_BxTxHxK.shape
  logits, values = [], []
  if mem_k_MxHxK is not None:
    if key_norm is not None:
      mem_k_MxHxK = key_norm(mem_k_MxHxK[None])[0]
    logits.append(jnp.einsum('bthk,mhk->bhtm', q_BxTxHxK, mem_k_MxHxK,
                             preferred_element_type=jnp.float32) * kd ** -0.5)
    values.append(jnp.broadcast_to(mem_v_MxHxK[None],
                                   (b,) + mem_v_MxHxK.shape))
  if sink_logit_H is not None:
    logits.append(jnp.broadcast_to(
        sink_logit_H.astype(jnp.float32)[None, :, None, None], (b, h, t, 1)))
    values.append(jnp.zeros((b, 1, h, kd), q_BxTxHxK.dtype))
  if not logits:
    return None
  return Prefix(jnp.concatenate(logits, -1),
                jnp.concatenate(values, 1).astype(q_BxTxHxK.dtype))


# ------------------------------------------------------------------ members


class Member:
  """A far branch or mask: its section ``config.model.<name>``, its checks
  and what a layer builds from it. Class-level: the config is data, the
  built objects (``Clamp``, ``SelfExtend``, ``Mask``) are frozen."""

  name: ClassVar[str] = ''
  FIELDS: ClassVar[dict[str, Field]] = {}
  # The field that switches it on, for messages.
  switch: ClassVar[str] = ''
  summary: ClassVar[str] = ''
  # Inference-time extensions it offers (``lmx.evaluation.extensions``):
  # ``{method name: (summary, options of configure)}``.
  EXTENSIONS: ClassVar[dict[str, tuple[str, dict]]] = {}
  # The field that switches its far branch on ('' without one): a second
  # branch that scores far pairs (one member at most).
  far_switch: ClassVar[str] = ''
  # Whether it adds slots before the keys (``prefix``): weights a softmax
  # normalises over, which a normaliser without one cannot place.
  adds_slots: ClassVar[bool] = False

  @classmethod
  def section(cls, model_cfg):
    return model_cfg[cls.name]

  @classmethod
  def active(cls, model_cfg) -> bool:
    return bool(cls.section(model_cfg)[cls.switch])

  @classmethod
  def check(cls, model_cfg, used: dict[str, type]) -> None:
    """ConfigError for a rule of this member (its fields are checked against
    their specs already); ``used``: ``{name: encoding class}`` of the
    encodings the layers use. Called only when ``active``."""
    del model_cfg, used

  @classmethod
  def far(cls, model_cfg):
    """The far branch's positions (``far_positions``, ``window``), or None."""
    del model_cfg
    return None

  @classmethod
  def mask(cls, model_cfg) -> Optional[Mask]:
    """The mask of every layer without one of its own, or None."""
    del model_cfg
    return None

  @classmethod
  def init_params(cls, model_cfg, num_heads: int, head_dim: int,
                  key_fn) -> dict[str, jax.Array]:
    """``{attribute: initial value}`` of learned values the attention layer
    holds for it (``key_fn()`` gives a fresh init key); none by default."""
    del model_cfg, num_heads, head_dim, key_fn
    return {}

  @classmethod
  def prefix(cls, params: dict[str, Any], q_BxTxHxK,
             key_norm=None) -> Optional[Prefix]:
    """Slots before the keys from its learned values, or None;
    ``key_norm``: how the layer normalises keys (``sink_prefix``)."""
    del params, q_BxTxHxK, key_norm
    return None

  @classmethod
  def kernel_refusal(cls, model_cfg) -> Optional[str]:
    """Why a fused kernel cannot compute attention with it, or None: the
    kernel computes one logit branch, so a member whose ``far`` gives a
    second one cannot run there."""
    return FAR_REFUSAL if cls.far(model_cfg) is not None else None

  @classmethod
  def configure(cls, model_cfg, train_len: int, length: int,
                **options) -> None:
    """Sets this member up in ``model_cfg`` (a copy of a run's
    ``config.model``) to evaluate a model trained at ``train_len`` on
    windows of ``length``, without training (an inference-time extension,
    ``lmx.evaluation.extensions``)."""
    raise NotImplementedError(f'{cls.name} has no inference-time setup.')


FAR_REFUSAL = ('a distance clamp or Self-Extend needs a second (far) logit '
               'branch, which the kernel does not compute')


class ReRoPE(Member):
  """ReRoPE and Leaky ReRoPE (Su 2023): ``Clamp(window, leak)``."""
  name = 'rerope'
  FIELDS = {
      'window': Field(0, 'distances from window on are clamped (0: off)',
                      lo=0),
      'leak': Field(0.0, 'slope past the window (0: ReRoPE; in (0, 1): '
                    'Leaky ReRoPE)', lo=0.0, hi=1.0, hi_open=True),
  }
  switch = 'window'
  summary = 'ReRoPE'
  far_switch = 'window'
  EXTENSIONS = {
      'rerope': ('ReRoPE: distances clamped at L/2', {}),
      'leaky_rerope': ('Leaky ReRoPE: L/2, then leak (L - w)/(n - w)',
                       {'leaky': True}),
      'rerope_logn': ('ReRoPE at L/2 with log-n query scaling '
                      '(max(1, log(p + 1) / log L))', {'logn': True}),
  }

  @classmethod
  def check(cls, model_cfg, used):
    window = int(model_cfg.rerope.window)
    plain = [n for n, e in used.items() if not e.is_rotary(model_cfg)]
    require(not plain,
            f'config.model.rerope.window={window} clamps rotary angles, but '
            f'the {", ".join(map(repr, plain))} encoding is not rotary (it '
            'turns no query or key with these settings). Use a rotary '
            'encoding, or '
            "LM-Infinite's config.model.lm_infinite.distance_limit, which "
            'clamps the distances of any encoding.')

  @classmethod
  def far(cls, model_cfg):
    s = model_cfg.rerope
    return Clamp(int(s.window), float(s.leak))

  @classmethod
  def configure(cls, model_cfg, train_len, length, leaky=False, logn=False):
    """Window ``L/2``; ``leaky``: leak ``(L - w) / (n - w)`` past ``L``, so
    the longest distance of a length-``n`` window maps to ``L`` (plain RoPE
    at ``n <= L``); ``logn``: with log-n query scaling relative to ``L``, as
    the ReRoPE author's patch runs it."""
    window = max(train_len // 2, 1)
    if not leaky:
      model_cfg.rerope.window, model_cfg.rerope.leak = window, 0.0
    elif length > train_len:
      model_cfg.rerope.window = window
      model_cfg.rerope.leak = (train_len - window) / (length - window)
    if logn:
      length_scaling.REGISTRY['logn'].configure(model_cfg, train_len)


class LMInfinite(Member):
  """LM-Infinite (Han et al. 2023, Sec. 4): the Lambda-shaped mask, and
  the distance limit as ``Clamp(distance_limit)``."""
  name = 'lm_infinite'
  FIELDS = {
      'n_global': Field(0, 'the first tokens every query sees', lo=0),
      'n_local': Field(0, 'the last tokens a query sees (0: off)', lo=0),
      'distance_limit': Field(0, 'no distance scored beyond it (0: none; '
                              'the pretraining length)', lo=0),
  }
  switch = 'n_local'
  far_switch = 'distance_limit'
  summary = "LM-Infinite's Lambda-shaped mask"
  EXTENSIONS = {'lm_infinite': ('LM-Infinite: Lambda mask (10 global, L - 10 '
                                'local) and distances clamped at L', {})}
  # Global tokens of its inference-time setup (the paper's 10).
  GLOBAL = 10

  @classmethod
  def check(cls, model_cfg, used):
    lm = model_cfg.lm_infinite
    n_global, n_local = int(lm.n_global), int(lm.n_local)
    limit = int(lm.distance_limit)
    require(limit == 0 or n_global + n_local <= limit,
            f'config.model.lm_infinite: n_global + n_local = {n_global} + '
            f'{n_local} = {n_global + n_local} is larger than distance_limit='
            f'{limit} (the pretraining length), so local distances would '
            'pass the limit. Lower n_local to at most '
            f'{max(limit - n_global, 0)}, or raise distance_limit.')

  @classmethod
  def far(cls, model_cfg):
    limit = int(model_cfg.lm_infinite.distance_limit)
    return Clamp(limit, 0.0) if limit else None

  @classmethod
  def mask(cls, model_cfg):
    lm = model_cfg.lm_infinite
    return Mask(n_global=int(lm.n_global), n_local=int(lm.n_local))

  @classmethod
  def configure(cls, model_cfg, train_len, length):
    """``n_global = 10``, ``n_local = L - 10``, distance limit ``L``."""
    del length
    n_global = min(cls.GLOBAL, train_len // 2)
    model_cfg.lm_infinite.n_global = n_global
    model_cfg.lm_infinite.n_local = train_len - n_global
    model_cfg.lm_infinite.distance_limit = train_len


def self_extend_group(train_len: int, window: int, length: int) -> int:
  """The smallest group G whose largest grouped distance of a
  length-``length`` window, ``(length - 1) // G + W - W // G``, is below
  ``train_len``."""
  group = 1
  while (length - 1) // group + window - window // group > train_len - 1:
    group += 1
  return group


class SelfExtendMember(Member):
  """Self-Extend (Jin et al. 2024): ``SelfExtend(window, group)``."""
  name = 'self_extend'
  FIELDS = {
      'window': Field(0, 'the neighbour window (0: off)', lo=0),
      'group': Field(2, 'the group size of far positions', lo=1),
  }
  switch = 'window'
  summary = 'Self-Extend'
  far_switch = 'window'
  EXTENSIONS = {'self_extend': ('Self-Extend: window L/2, grouped positions '
                                'beyond it, G the smallest that fits L', {})}

  @classmethod
  def check(cls, model_cfg, used):
    window = int(model_cfg.self_extend.window)
    plain = [n for n, e in used.items() if not e.relative()]
    require(not plain,
            f'config.model.self_extend.window={window} regroups the '
            'positions that the rotation or the bias sees, but the '
            f'{", ".join(map(repr, plain))} encoding has neither (it adds '
            'its positions to the embeddings, or has none). Use a relative '
            'encoding, or set config.model.self_extend.window=0.')

  @classmethod
  def far(cls, model_cfg):
    s = model_cfg.self_extend
    return SelfExtend(int(s.window), int(s.group))

  @classmethod
  def configure(cls, model_cfg, train_len, length):
    """Window ``L/2`` and the smallest group that keeps every grouped
    distance below ``L`` (off at ``n <= L``)."""
    if length > train_len:
      window = max(train_len // 2, 1)
      model_cfg.self_extend.window = window
      model_cfg.self_extend.group = self_extend_group(train_len, window,
                                                      length)


SINK_REFUSAL = ('attention sinks (config.model.sinks) add slots the fused '
                'kernel does not compute')


class Sinks(Member):
  """Attention sinks (``sink_prefix``), in every layer."""
  name = 'sinks'
  FIELDS = {
      'logit': Field(False, 'a learned logit per head with a zero value'),
      'memory': Field(0, 'learned key/value slots per head', lo=0, hi=4096),
  }
  summary = 'attention sinks'
  adds_slots = True

  @classmethod
  def active(cls, model_cfg):
    s = model_cfg.sinks
    return bool(s.logit) or bool(s.memory)

  @classmethod
  def init_params(cls, model_cfg, num_heads, head_dim, key_fn):
    s = model_cfg.sinks
    out = {}
    if s.logit:
      out['sink_logit'] = jnp.zeros((num_heads,), jnp.float32)
    m = int(s.memory)
    if m:
      out['mem_k'] = jax.random.normal(key_fn(), (m, num_heads, head_dim))
      out['mem_v'] = jax.random.normal(key_fn(), (m, num_heads, head_dim))
    return out

  @classmethod
  def prefix(cls, params, q_BxTxHxK, key_norm=None):
    value = lambda p: None if p is None else p.astype(q_BxTxHxK.dtype)
    return sink_prefix(q_BxTxHxK, params.get('sink_logit'),
                       value(params.get('mem_k')), value(params.get('mem_v')),
                       key_norm)

  @classmethod
  def kernel_refusal(cls, model_cfg):
    return SINK_REFUSAL


def on_base(rules: type) -> type[Member]:
  """A member defined in a module of its own (``rules``: its settings,
  checks and far branch, written without importing this module, which
  imports it) on ``Member``."""
  return type(rules.__name__, (rules, Member),
              {'__doc__': rules.__doc__, '__module__': rules.__module__})


# config.model.<name> -> member. A new far branch or mask is one class above
# (or in a module of its own, through ``on_base``) and one line here.
REGISTRY: dict[str, type[Member]] = {
    'rerope': ReRoPE,
    'self_extend': SelfExtendMember,
    'lm_infinite': LMInfinite,
    'sinks': Sinks,
    'dca': on_base(dca.DualChunkAttention),
    'string': on_base(string_shift.String),
}


def default_config(name: str) -> ml_collections.ConfigDict:
  """``config.model.<name>`` of member ``name`` at its defaults (off)."""
  return ml_collections.ConfigDict(section_defaults(REGISTRY[name].FIELDS))


def active(model_cfg) -> list[type[Member]]:
  """The members the config switches on, in registry order."""
  return [m for m in REGISTRY.values() if m.active(model_cfg)]


def switch_field(member: type[Member]) -> str:
  return f'config.model.{member.name}.{member.switch}'


def far_member(model_cfg) -> Optional[type[Member]]:
  """The member that scores far pairs by a second branch, or None."""
  for m in active(model_cfg):
    if m.far(model_cfg) is not None:
      return m
  return None


def far_field(model_cfg) -> str:
  """The field that switched a far branch on (``'config.model.rerope.
  window'``), or '' without one: for the rules of other components (a
  scaling that a second branch cannot follow)."""
  m = far_member(model_cfg)
  return '' if m is None else far_switch_field(m)


def far_switch_field(member: type[Member]) -> str:
  """The field that switches ``member``'s far branch on."""
  return f'config.model.{member.name}.{member.far_switch}'


def check(model_cfg, used: dict[str, type]) -> None:
  """ConfigError for the far branches and masks: every member's fields
  against their specs, a setting of a member that is off (it would act on
  nothing), two far branches at once, and each active member's own rules
  with the encodings the layers use (``used``)."""
  for member in REGISTRY.values():
    section = member.section(model_cfg)
    check_section(section, f'config.model.{member.name}', member.FIELDS)
    extra = ([] if member.active(model_cfg) else
             [f for f in changed(section, member.FIELDS)
              if f != member.switch])
    if extra:
      raise ConfigError(
          f'config.model.{member.name}.{extra[0]}={section[extra[0]]!r} '
          f'acts only with {member.summary}, which is off: set '
          f'{switch_field(member)} too, or leave {", ".join(extra)} at its '
          'default.')
  fars = [m for m in active(model_cfg) if m.far(model_cfg) is not None]
  require(len(fars) < 2,
          f'{" and ".join(far_switch_field(m) for m in fars[:2])} both '
          'rescore distant pairs with a second branch; set one of them to 0.')
  for member in active(model_cfg):
    member.check(model_cfg, used)
