"""The position-encoding interface: four hooks the model asks once each.

Every encoding acts at one or more of four places of the Transformer:

* ``embed(x_BxTxD, positions_BxT)``: absolute encodings add a vector to the
  token embeddings (sinusoidal, learned).
* ``rotate(q_BxTxHxK, k_BxSxHxK, q_positions_BxT, k_positions_BxS)``: rotary
  encodings turn queries and keys (RoPE, xPos).
* ``bias(q_positions_BxT, k_positions_BxS)``: relative encodings return a
  ``[B, H, T, S]`` bias added to the attention logits (T5, ALiBi, KERPLE).
* ``content(x_BxTxD, q_BxTxHxK, k_BxTxHxK, positions_BxT, previous)``:
  encodings whose score term depends on the queries, keys or hidden states,
  not on positions alone (Shaw et al., Transformer-XL, CoPE, forgetting
  gates), return a ``ContentTerm``: per-token arrays for the query side and
  the key side, and a function that turns one tile of query/key pairs
  (``Tile``) into the term added to its logits. The backends slice the
  per-token arrays with the tile, so the chunked backend computes the term
  tile by tile and never builds a ``T x S`` array; a term that does not
  decompose over key tiles says so (``ContentTerm.tiled``) and runs dense.
  When decoding, the key side is stored in the KV cache with the keys, and
  ``previous`` carries the latest cached token's key side into the next
  call (a running sum, for instance). A term may also add to the output
  after the softmax, from each tile's attention weights
  (``ContentTerm.value``: Shaw et al.'s value embeddings).

A hook an encoding does not use returns its input unchanged (or ``None`` for
the bias and the content term). Positions are explicit arrays, never
assumed to be ``arange(T)``: randomized and shifted positions, cached
decoding and distance clamps all go through the same arrays. They are
integers, except under a sampling that draws real positions (CAPE's,
``Sampler.real`` in ``lmx.positions.sampling``): then training gives float32
positions, to the encodings that take them (``real_positions``).

Class attributes tell the model and the config validator what an encoding
needs, so neither has to branch on its name:

* ``rotary``: queries/keys are rotated in pairs, so the head dim must be even.
* ``real_positions``: its hooks are defined on real-valued positions and
  compute them in float32 (sinusoids, rotations), so a sampling that draws
  float32 positions (CAPE) may train it; one that indexes a table, buckets
  distances or casts them to integers leaves it False (the default), and
  ``lmx.config.validate.validate`` refuses such a sampling for it.
* ``scalable``: its frequencies follow ``config.model.rope.scaling``, so the
  RoPE scalings of ``lmx.positions.rope_scaling`` apply to it.
* ``per_layer`` (or ``is_per_layer(cfg)`` where a setting chooses): every
  Transformer block gets its own instance (its own parameters); otherwise
  one instance is shared by the embedding and all blocks (T5 shares one
  bias table across layers, KERPLE its kernel parameters by default).
* ``param_bounds(cfg)``: bounds that training keeps parameters inside (the
  stored values are projected after every update, ``lmx.training.run_state.project``).
* ``former_defaults(saved_model)``: for a ``config.json`` saved before a
  setting existed, the value that run had in effect where it differs from
  today's default (``lmx.config.defaults.complete`` fills it in).
* ``max_positions(cfg)``: the largest position + 1 the encoding can represent,
  or ``None`` if unbounded (a learned table has ``max_len``).
* ``max_span(cfg)``: the widest span of positions in one sequence whose
  values stay finite in float32, with the reason (xPos's decay), or None.
* ``keys_static()``: whether ``rotate`` turns each key by its own position
  alone, so a KV cache may hold turned keys (not xPos, not dynamic NTK).
* ``kernel_bias()``: the bias in a form a fused attention kernel computes
  itself, tile by tile (``KernelBias``; ``lmx.kernels.flash``), or None.
  A content term never runs in a fused kernel (flash and cuDNN fall back).

An encoding owns its settings and their rules: ``default_config()`` gives
its section ``config.model.<name>`` (the one place its defaults are
defined), ``check(model_cfg)`` raises ``ConfigError`` for a value out of
range or a rule it breaks with the rest of the model (``lmx.config.validate.validate``
asks it; the validator never names an encoding), and ``switches`` names
the settings that would act on nothing while another encoding is chosen
(the validator refuses them when changed).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, NamedTuple, Optional

import jax
import ml_collections
import numpy as np
from flax import nnx

from lmx.config.fields import Fields, require


@dataclasses.dataclass(frozen=True)
class KernelBias:
  """An encoding's bias in the form a fused kernel computes in place.

  * ``params``: ``{name: [heads, n] float32}``, the parameters of each
    head (a setting shared by the heads is broadcast to them, so its
    gradient is the sum over heads). Differentiable: the kernel returns
    their gradients.
  * ``fn(p, q_pos_Qx1, k_pos_1xK) -> [Q, K]`` float32: the bias of one head
    on one tile, from ``p = {name: [n scalars]}`` (that head's parameters)
    and the int32 position tiles. Only elementwise math and comparisons
    (no gathers, no tables indexed by data), so that Mosaic (TPU Pallas)
    lowers it; must equal ``bias`` on the same positions.
  * ``terms``: how many transcendental terms ``fn`` sums per pair (one for
    most forms; Sandwich's cosines, one per frequency). Triton unrolls
    them, and its compile time grows with them: the GPU kernel refuses a
    form of more than ``lmx.model.attention.GPU_MAX_BIAS_TERMS``.
  """
  params: dict
  fn: Callable
  terms: int = 1


class Tile(NamedTuple):
  """What a content term sees of one tile of query/key pairs (the whole
  ``T x S`` block in the dense backend and in decoding, one tile of it in
  the chunked backend). ``t`` queries, ``s`` keys."""
  q: jax.Array        # [B, t, H, K] queries, as the encoding's rotate left them
  k: jax.Array        # [B, s, H, K] keys, idem
  q_pos: jax.Array    # [B, t] positions (a far branch's may be fractional)
  k_pos: jax.Array    # [B, s]
  q_side: Any         # ContentTerm.q_side, each leaf sliced to [B, t, ...]
  k_side: Any         # ContentTerm.k_side, each leaf sliced to [B, s, ...]
  logits: jax.Array   # [B, H, t, s] float32: q.k / sqrt(K) + bias, unmasked
                      # (None where ContentTerm.value is called)
  visible: jax.Array  # [t, s] bool: which keys each query sees (the mask)
  k_idx: jax.Array    # [s] int32 token indices (-1: empty slot; ascending
                      # except in the ring of a bounded KV cache)


@dataclasses.dataclass(frozen=True)
class ContentTerm:
  """A score term that depends on content (``PositionEncoding.content``).

  * ``q_side``, ``k_side``: pytrees of per-token arrays ``[B, T, ...]``,
    computed once per layer call; the backends slice them along the token
    axis with the queries and the keys. When decoding, ``k_side`` is stored
    in the KV cache beside the keys (its leaves' trailing shapes and dtypes
    must not depend on ``T``).
  * ``fn(tile) -> [B, H, t, s]`` float32: the term added to the tile's
    logits. Hidden pairs are masked afterwards, whatever it returns there.
  * ``tiled``: whether ``fn`` on a tile of keys equals the same keys' part of
    ``fn`` on all of them. False for a term coupled across keys (CoPE's sum
    over the keys between two tokens): such a term runs dense only.
  * ``value`` (optional): a term added to the output, after the softmax:
    ``value(tile, p) -> [B, H, t, K]`` float32, from the tile's attention
    weights ``p [B, H, t, s]`` float32 (Shaw et al.'s ``sum_j alpha_ij
    a^V_ij``). It must be linear in ``p`` and zero where ``p`` is: the
    chunked backend passes each tile's unnormalised running weights and
    divides the sum by the softmax normaliser at the end, and under a
    distance clamp each branch's tile gets the weights of its own pairs
    (the others zeroed).
  """
  q_side: Any
  k_side: Any
  fn: Callable[[Tile], jax.Array]
  tiled: bool = True
  value: Optional[Callable[[Tile, jax.Array], jax.Array]] = None


def slice_tokens(tree: Any, start, size: int) -> Any:
  """Each leaf of a per-token pytree sliced to tokens ``[start, start +
  size)`` along axis 1 (``start`` may be traced)."""
  return jax.tree.map(
      lambda x: jax.lax.dynamic_slice_in_dim(x, start, size, axis=1), tree)


class PositionEncoding(nnx.Module):
  """Base class: acts nowhere. Subclasses override the hooks they use."""

  rotary: ClassVar[bool] = False
  # Its hooks take float32 positions (module docstring).
  real_positions: ClassVar[bool] = False
  per_layer: ClassVar[bool] = False
  # Its frequencies follow the RoPE scalings of lmx.positions.rope_scaling
  # (config.model.rope.scaling), so the inference-time scalings apply.
  scalable: ClassVar[bool] = False
  # Settings of its section that switch an effect on, {field: what it
  # does}: changed while no layer uses the encoding, they would silently do
  # nothing, and the validator refuses them (one generic rule). Plain
  # settings (a base, a table size) are simply unused then.
  switches: ClassVar[dict[str, str]] = {}

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    """cfg is ``config.model``; an encoding reads its own ``cfg.<name>``."""
    del rngs
    self.num_heads = cfg.num_heads
    self.head_dim = cfg.d_model // cfg.num_heads
    self.d_model = cfg.d_model

  @classmethod
  def default_config(cls) -> ml_collections.ConfigDict:
    """The encoding's own settings, placed at ``config.model.<name>``."""
    return ml_collections.ConfigDict()

  @classmethod
  def check(cls, model_cfg: ml_collections.ConfigDict) -> None:
    """Raises ConfigError if the encoding cannot run with ``model_cfg``
    (``config.model``). Subclasses check their own section and call this
    first: a rotary encoding turns channel pairs, so its head dimension
    must be even."""
    if cls.rotary:
      head_dim = model_cfg.d_model // model_cfg.num_heads
      require(head_dim % 2 == 0,
              f'The rotary encoding {model_cfg.position!r} turns channel '
              f'pairs, so the head dimension must be even, but d_model/'
              f'num_heads = {model_cfg.d_model}/{model_cfg.num_heads} = '
              f'{head_dim}. Change config.model.d_model or '
              'config.model.num_heads.')

  @classmethod
  def is_rotary(cls, model_cfg: ml_collections.ConfigDict) -> bool:
    """Whether it turns queries and keys with ``model_cfg``'s settings
    (``rotary``, unless a setting of its own chooses): what a clamp of
    rotary angles acts on."""
    del model_cfg
    return cls.rotary

  @classmethod
  def relative(cls) -> bool:
    """Whether it acts through ``rotate`` or ``bias``, the places a distance
    clamp or a regrouping of positions reaches."""
    return (cls.rotate is not PositionEncoding.rotate
            or cls.bias is not PositionEncoding.bias)

  @classmethod
  def shift_invariant(cls) -> bool:
    """Whether the logits depend on positions only through their
    differences, so that shifting every position changes nothing: true of
    every encoding that adds nothing to the embeddings, unless it says
    otherwise (FIRE normalises by the query's position past a threshold).
    The model tests check it as a property for every encoding that claims
    it, and its absence for the others."""
    return cls.embed is PositionEncoding.embed

  @classmethod
  def is_per_layer(cls, model_cfg: ml_collections.ConfigDict) -> bool:
    """Whether every block gets its own instance (``per_layer`` unless a
    setting of the encoding chooses)."""
    del model_cfg
    return cls.per_layer

  @classmethod
  def param_bounds(cls, model_cfg: ml_collections.ConfigDict
                   ) -> dict[str, tuple[Optional[float], Optional[float]]]:
    """``{parameter name: (lower, upper)}`` (None: unbounded) that the
    trainer projects this encoding's stored parameters into after every
    update. None by default."""
    del model_cfg
    return {}

  def project(self, params: Any, model_cfg: ml_collections.ConfigDict) -> Any:
    """``params``, this instance's own parameters as a pure dict
    (``nnx.to_pure_dict`` of its state), with each leaf that
    ``param_bounds(model_cfg)`` names clipped into its bounds;
    ``model_cfg`` is the view of ``config.model`` the instance was built
    from. An instance projects only what it holds, so two encodings of a
    per-layer model with a parameter of the same name keep their own
    bounds (``lmx.training.run_state.project`` walks the model for the
    instances)."""
    bounds = self.param_bounds(model_cfg)

    def leaf(path, x):
      name = getattr(path[-1], 'key', None) if path else None
      if name in bounds:
        return jax.numpy.clip(x, *bounds[name])
      return x

    return jax.tree_util.tree_map_with_path(leaf, params)

  @classmethod
  def former_defaults(cls, saved_model: dict) -> dict:
    """Settings of ``config.model.<name>`` a config saved before they
    existed ran with, where that differs from ``default_config()``.
    ``saved_model`` is the saved ``config.model`` (a plain dict)."""
    del saved_model
    return {}

  @staticmethod
  def fields(model_cfg: ml_collections.ConfigDict) -> Fields:
    """Checked reads of ``config.model`` fields, for ``check``."""
    return Fields(model_cfg, 'config.model')

  @classmethod
  def max_positions(cls, model_cfg: ml_collections.ConfigDict) -> Optional[int]:
    """Exclusive upper bound on representable positions (None: unbounded)."""
    del model_cfg
    return None

  @classmethod
  def bound_setting(cls) -> str:
    """Name of the config field that sets ``max_positions``, for messages."""
    return ''

  @classmethod
  def max_span(cls, model_cfg: ml_collections.ConfigDict
               ) -> Optional[tuple[int, str]]:
    """The widest span of positions in one sequence that the encoding keeps
    finite in float32, with why and what to change; None: any span."""
    del model_cfg
    return None

  @classmethod
  def resize(cls, name: str, value: np.ndarray,
             shape: tuple[int, ...]) -> Optional[np.ndarray]:
    """Parameter ``name`` of this encoding resized to ``shape``, for
    fine-tuning a checkpoint at another length (``config.init_interpolate``),
    or None if it cannot be resized."""
    del name, value, shape
    return None

  def keys_static(self) -> bool:
    """Whether ``rotate`` turns each key by its own position alone, the same
    whatever the queries and the other keys are. A KV cache may then hold
    keys already turned, so a decoding step turns only its new ones.

    True for an encoding that leaves ``rotate`` alone. One that overrides it
    says so itself (RoPE does): the default keeps decoding exact, at the
    cost of turning every cached key again at each step.
    """
    return type(self).rotate is PositionEncoding.rotate

  def kernel_bias(self) -> Optional[KernelBias]:
    """The bias as a ``KernelBias`` for a fused kernel, or None: no bias,
    or one a kernel cannot compute tile by tile. An encoding that overrides
    ``bias`` and not this one cannot run in ``lmx.kernels.flash``."""
    return None

  @classmethod
  def has_bias(cls) -> bool:
    """Whether it adds a bias to the logits (overrides ``bias``)."""
    return cls.bias is not PositionEncoding.bias

  @classmethod
  def kernel_refusal(cls, model_cfg=None) -> Optional[str]:
    """Why a fused kernel cannot compute this encoding's attention (with
    ``model_cfg``'s settings, if given), or None: it has no bias, or gives
    one as ``kernel_bias``."""
    del model_cfg
    if cls.has_content():
      return 'its content-dependent score term has no kernel form'
    if cls.has_bias() and cls.kernel_bias is PositionEncoding.kernel_bias:
      return 'its bias has no kernel form (kernel_bias)'
    return None

  def embed(self, x_BxTxD: jax.Array, positions_BxT: jax.Array) -> jax.Array:
    del positions_BxT
    return x_BxTxD

  def rotate(self, q_BxTxHxK: jax.Array, k_BxSxHxK: jax.Array,
             q_positions_BxT: jax.Array, k_positions_BxS: jax.Array):
    del q_positions_BxT, k_positions_BxS
    return q_BxTxHxK, k_BxSxHxK

  def bias(self, q_positions_BxT: jax.Array,
           k_positions_BxS: jax.Array) -> Optional[jax.Array]:
    del q_positions_BxT, k_positions_BxS
    return None

  def key_norm(self, k_BxSxHxK: jax.Array) -> jax.Array:
    """The normalisation ``rotate`` gives every key whatever its position
    (KeyNorm's unit length), for keys without a position (memory slots,
    ``lmx.positions.far.Sinks``); none by default."""
    return k_BxSxHxK

  def content(self, x_BxTxD: jax.Array, q_BxTxHxK: jax.Array,
              k_BxTxHxK: jax.Array, positions_BxT: jax.Array,
              previous: Any = None) -> Optional[ContentTerm]:
    """The content-dependent score term of this layer call, or None.

    ``x``: the attention layer's input (after its norm); ``q``, ``k``: the
    projected queries and keys, before ``rotate`` (a ``Tile`` carries the
    turned ones); ``positions``: their positions. ``previous``: when
    decoding with a KV cache, the ``k_side`` the cache holds for the token
    just before this call's first (each leaf ``[B, ...]``; zeros when the
    cache is empty); None outside decoding.
    """
    del x_BxTxD, q_BxTxHxK, k_BxTxHxK, positions_BxT, previous
    return None

  @classmethod
  def has_content(cls) -> bool:
    """Whether it adds a content-dependent term (overrides ``content``)."""
    return cls.content is not PositionEncoding.content


def relative_distance(q_positions_BxT: jax.Array,
                      k_positions_BxS: jax.Array) -> jax.Array:
  """``q - k`` for every query/key pair, shape ``[B, T, S]`` (int32).

  Non-negative for the keys a causal query can see.
  """
  return (q_positions_BxT[:, :, None].astype('int32')
          - k_positions_BxS[:, None, :].astype('int32'))
