"""Per-layer encodings, masks, qk-norm and length scalings
(``config.model.layers``).

Each block of the Transformer may have its own position encoding, its own
sliding window or chunk, its own qk-norm and its own length scaling. Five
tuples say so:

* ``layers.position``: encoding names (``lmx.positions.REGISTRY``);
* ``layers.window``: ``0`` (every earlier key, or the model's LM-Infinite
  mask) or ``w > 0``: a sliding window, query ``i`` sees keys
  ``i - w < j <= i`` (``attention.Mask(n_global=0, n_local=w)``);
* ``layers.chunk``: ``0`` or ``c > 0``: Llama 4's chunked local attention,
  query ``i`` sees keys ``j <= i`` of its own chunk, ``j // c == i // c``
  (``Mask(chunk=c)``); a layer has a window or a chunk, not both;
* ``layers.qk_norm``: ``True`` normalises the layer's queries and keys
  after the encoding turns them, as Llama 4's RoPE layers do
  (``attention.qk_norm``);
* ``layers.length_scaling``: length scalings
  (``lmx.positions.length_scaling``), their settings read from
  ``config.model.length_scaling``.

An empty tuple gives every layer the model-level setting
(``config.model.position``, no window or chunk, no qk-norm,
``config.model.length_scaling.kind``).
A tuple of ``num_layers`` entries gives one per layer; a shorter tuple whose
length divides ``num_layers`` repeats as a pattern. So HWFA (Su 2023: every
layer but the last RoPE with a window, the last NoPE over everything with
log-n) is ``position=('rope',) * (N - 1) + ('none',)``,
``window=(w,) * (N - 1) + (0,)``, ``length_scaling=('off',) * (N - 1) +
('logn',)``, and Llama 4's iRoPE pattern (three RoPE layers with chunked local
attention and qk-norm, then one NoPE layer over everything with its query
temperature) is ``position=('rope', 'rope', 'rope', 'none')``,
``chunk=(c, c, c, 0)``, ``qk_norm=(True, True, True, False)``,
``length_scaling=('off', 'off', 'off', 'llama4')`` for any multiple of four
layers (``configs/irope.py``).

This module is the one place that reads those tuples: ``plan`` expands them
into a ``LayerSpec`` per layer, ``check`` refuses what cannot run (before
anything is built), and ``used_encodings`` lists the encodings a model
really uses, for the checks that ask an encoding about the whole model.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import ml_collections

from lmx import positions
from lmx.model import attention
from lmx.model import stickbreaking
from lmx.model.masks import CAUSAL, Mask
from lmx.positions import far
from lmx.positions import length_scaling
from lmx.config.fields import require
from lmx.errors import ConfigError

FIELDS = ('position', 'window', 'chunk', 'qk_norm', 'length_scaling')


# ``layers.num_layers``: the depth a config file wrote the tuples for (0:
# any depth). A file whose structure depends on the depth (configs/irope.py:
# three RoPE layers then a NoPE one per four layers, or one period at other
# depths) records it, so an override of config.model.num_layers that would
# repeat the tuples into another structure is refused, not run.
DEPTH = 'num_layers'


def default_config() -> ml_collections.ConfigDict:
  """``config.model.layers``: every tuple empty, every layer as the model."""
  return ml_collections.ConfigDict({**{field: () for field in FIELDS},
                                    DEPTH: 0})


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  """What one block's attention uses."""
  position: str          # an encoding name
  window: int            # 0: no sliding window
  length_scaling: str    # a name of lmx.positions.length_scaling.REGISTRY
  chunk: int = 0         # 0: no chunked local attention
  qk_norm: bool = False  # normalise the turned queries and keys


def _section(model_cfg):
  return model_cfg.get('layers', None) or default_config()


def _expand(values: Sequence, n: int, name: str) -> list | None:
  """``values`` repeated to ``n`` entries, or None if empty."""
  if isinstance(values, str) or not isinstance(values, (tuple, list)):
    raise ConfigError(
        f'config.model.layers.{name} must be a tuple (one entry per layer, '
        f'or a pattern whose length divides num_layers), got {values!r}.')
  values = tuple(values)
  if not values:
    return None
  require(n % len(values) == 0,
          f'config.model.layers.{name} has {len(values)} entries, which '
          f'neither equals nor divides config.model.num_layers={n}. Give one '
          f'entry per layer ({n}), or a pattern whose length divides {n} '
          f'(e.g. {", ".join(str(d) for d in range(1, n + 1) if n % d == 0)}'
          ' entries), or () for the model-level setting.')
  return list(values * (n // len(values)))


def plan(model_cfg: ml_collections.ConfigDict) -> list[LayerSpec]:
  """One ``LayerSpec`` per block (the model-level setting where a tuple is
  empty). Raises ConfigError for a tuple of the wrong length."""
  n = int(model_cfg.num_layers)
  section = _section(model_cfg)
  pos = _expand(section.position, n, 'position') or [model_cfg.position] * n
  win = _expand(section.window, n, 'window') or [0] * n
  kind = model_cfg.length_scaling.kind
  scal = _expand(section.length_scaling, n, 'length_scaling') or [kind] * n
  chunk = _expand(section.chunk, n, 'chunk') or [0] * n
  qkn = _expand(section.qk_norm, n, 'qk_norm') or [False] * n
  return [LayerSpec(p, w, s, c, bool(q))
          for p, w, s, c, q in zip(pos, win, scal, chunk, qkn)]


def used_encodings(model_cfg) -> dict[str, type]:
  """``{name: encoding class}`` of every encoding some layer uses, in layer
  order (``config.model.position`` alone without a per-layer list)."""
  out = {}
  for spec in plan(model_cfg):
    out.setdefault(spec.position, positions.get_encoding(spec.position))
  return out


def describe(model_cfg) -> str:
  """The model's attention in a few words, for log lines: the encoding's
  name when every layer is alike without a window (``'rope'``), else the
  layers in order, a run of equal layers once with its count
  (``'rope window 16 x3, none logn'``)."""
  specs = plan(model_cfg)
  first = specs[0]
  if len(set(specs)) == 1 and not (first.window or first.chunk
                                   or first.qk_norm):
    return first.position
  runs = []
  for spec in specs:
    if runs and runs[-1][0] == spec:
      runs[-1][1] += 1
    else:
      runs.append([spec, 1])
  parts = []
  for spec, count in runs:
    words = [spec.position]
    if spec.window:
      words.append(f'window {spec.window}')
    if spec.chunk:
      words.append(f'chunk {spec.chunk}')
    if spec.qk_norm:
      words.append('qknorm')
    if spec.length_scaling != length_scaling.DEFAULT:
      words.append(spec.length_scaling)
    parts.append(' '.join(words) + (f' x{count}' if count > 1 else ''))
  return ', '.join(parts)


def view(model_cfg: ml_collections.ConfigDict,
         position: str) -> ml_collections.ConfigDict:
  """``model_cfg`` as one encoding of a per-layer model sees it: the same
  fields with ``position`` set to its name (its checks and messages speak
  of the model's encoding)."""
  if model_cfg.position == position:
    return model_cfg
  cfg = ml_collections.ConfigDict(model_cfg.to_dict())
  cfg.position = position
  return cfg


def model_mask(model_cfg) -> Mask:
  """The mask of every layer without its own: a far member's
  (LM-Infinite's Lambda-shaped mask), else causal."""
  for member in far.active(model_cfg):
    mask = member.mask(model_cfg)
    if mask is not None:
      return mask
  return CAUSAL


def layer_mask(model_cfg, spec: LayerSpec) -> Mask:
  """The layer's mask: its sliding window or chunk, else the model's."""
  if spec.window:
    return Mask(n_global=0, n_local=int(spec.window))
  if spec.chunk:
    return Mask(chunk=int(spec.chunk))
  return model_mask(model_cfg)


def attention_spec(model_cfg, spec: LayerSpec) -> attention.Spec:
  """The frozen ``attention.Spec`` of one layer: its mask, the model's far
  branch (``lmx.positions.far``), its length scaling, qk-norm, the
  backend settings and the normaliser (``lmx.model.stickbreaking``)."""
  member = far.far_member(model_cfg)
  return attention.Spec(
      mask=layer_mask(model_cfg, spec),
      far=member.far(model_cfg) if member is not None else None,
      scaling=length_scaling.build(model_cfg, spec.length_scaling),
      qk_norm=bool(spec.qk_norm),
      backend=str(model_cfg.attention),
      block=int(model_cfg.attention_block),
      threshold=int(model_cfg.chunk_threshold),
      accelerator_threshold=int(model_cfg.accelerator_chunk_threshold),
      normaliser=stickbreaking.build(model_cfg))


def cache_mask(model_cfg) -> Mask:
  """The mask the KV cache's slots follow: the one every layer shares (a
  bounded ring when it is a window or the Lambda-shaped mask), or plain
  causal (a slot per token) when layers differ; each layer still applies
  its own mask to the token indices of the cached keys."""
  masks = {layer_mask(model_cfg, s) for s in plan(model_cfg)}
  return masks.pop() if len(masks) == 1 else CAUSAL


def check(model_cfg: ml_collections.ConfigDict) -> None:
  """ConfigError for ``config.model.layers`` settings that cannot run: a
  tuple length that neither equals nor divides num_layers, an unknown
  encoding or length scaling, an absolute encoding in a per-layer list, a
  window or chunk that is not a non-negative integer, a layer with both,
  either with LM-Infinite's mask, qk-norm that is not a bool or that would
  cancel a query scaling, and ``scan_layers`` over layers that differ."""
  section = _section(model_cfg)
  for field in FIELDS:
    require(field in section,
            f'config.model.layers.{field} is missing. Start from a config '
            'in configs/ (they build on lmx/config/defaults.py, which sets it).')
  unknown = set(section) - set(FIELDS) - {DEPTH}
  require(not unknown,
          f'config.model.layers has unknown field(s) {sorted(unknown)}; '
          f'valid: {", ".join(FIELDS + (DEPTH,))}.')
  depth = section.get(DEPTH, 0)
  n = model_cfg.num_layers
  require(isinstance(depth, int) and not isinstance(depth, bool)
          and depth >= 0,
          f'config.model.layers.{DEPTH} must be an integer >= 0 (0: the '
          f'tuples hold for any depth), got {depth!r}.')
  require(not depth or depth == n,
          f'config.model.layers was written for {depth} layers '
          f'(config.model.layers.{DEPTH}={depth}: its structure depends on '
          f'the depth), but config.model.num_layers={n}: repeating its '
          f'tuples would build another structure. Give the depth to the '
          f'config file\'s argument (e.g. configs/irope.py:layers={n}) '
          'instead of overriding config.model.num_layers.')
  for field in FIELDS:
    values = section[field]
    require(isinstance(values, (tuple, list)),
            f'config.model.layers.{field} must be a tuple (one entry per '
            'layer, or a pattern whose length divides num_layers; () for '
            f'the model-level setting), got {values!r}.')
  for name in section.position:
    require(isinstance(name, str) and name in positions.REGISTRY,
            f'config.model.layers.position names {name!r}, which is not a '
            f'registered encoding. Valid names: '
            f'{", ".join(sorted(positions.REGISTRY))}.')
    enc = positions.get_encoding(name)
    require(not _absolute(enc),
            f'config.model.layers.position names {name!r}, an absolute '
            'encoding: it adds to the token embeddings once, before the '
            'first layer, so it cannot be chosen per layer. Give it as '
            "config.model.position and leave layers.position=(), or use "
            'relative encodings (' + ', '.join(
                n for n, e in positions.REGISTRY.items() if e.relative())
            + ', or none) per layer.')
  for field, zero in (('window', 'no window'),
                      ('chunk', 'no chunked local attention')):
    for w in section[field]:
      require(isinstance(w, int) and not isinstance(w, bool) and w >= 0,
              f'config.model.layers.{field} entries must be integers >= 0 '
              f'(0: {zero}), got {w!r} in {tuple(section[field])!r}.')
  for q in section.qk_norm:
    require(isinstance(q, bool),
            f'config.model.layers.qk_norm entries must be True or False, '
            f'got {q!r} in {tuple(section.qk_norm)!r}.')
  for kind in section.length_scaling:
    require(kind in length_scaling.REGISTRY,
            f'config.model.layers.length_scaling names {kind!r}, which is '
            f'not one of: {", ".join(map(repr, length_scaling.REGISTRY))}.')
  specs = plan(model_cfg)
  if tuple(section.position):
    enc = positions.get_encoding(model_cfg.position)
    require(not _absolute(enc),
            f'config.model.layers.position gives every layer its encoding, '
            f'so config.model.position={model_cfg.position!r} (an absolute '
            'encoding, which adds to the embeddings) would act nowhere. Set '
            "config.model.position to a relative encoding or 'none', or "
            'leave config.model.layers.position=().')
    names = tuple(dict.fromkeys(s.position for s in specs))
    # The run is labelled and reported by config.model.position: it must
    # be an encoding some layer really uses.
    require(model_cfg.position in names,
            f'config.model.layers.position gives every layer its encoding '
            f'({", ".join(map(repr, names))}), so config.model.position='
            f'{model_cfg.position!r}, by which the run is labelled and '
            'reported, would act in no layer. Set config.model.position to '
            f'the main one of the layers\' encodings (e.g. {names[0]!r}).')
  for i, spec in enumerate(specs):
    require(not (spec.window and spec.chunk),
            f'config.model.layers gives layer {i} both a sliding window '
            f'({spec.window}) and a chunk ({spec.chunk}): a layer has one '
            'mask. Set one of config.model.layers.window and '
            'config.model.layers.chunk to 0 for it.')
    require(not (spec.qk_norm and spec.length_scaling in length_scaling.REGISTRY
                 and length_scaling.get(spec.length_scaling).scales_queries),
            f'config.model.layers gives layer {i} qk-norm and the '
            f'{spec.length_scaling!r} query scaling: the norm would undo the '
            'scale the queries get before it. Give the scaling to layers '
            'without qk-norm (as Llama 4 does), or use a scaling of the '
            'scores (' + ', '.join(
                repr(n) for n, m in length_scaling.REGISTRY.items()
                if m.scales_scores) + ').')
  masking = [m for m in far.active(model_cfg)
             if m.mask(model_cfg) is not None]
  for field in ('window', 'chunk'):
    if any(getattr(s, field) for s in specs) and masking:
      what = 'a sliding window' if field == 'window' else 'chunked attention'
      raise ConfigError(
          f'config.model.layers.{field} gives layers {what}, and '
          f'{far.switch_field(masking[0])} gives every layer '
          f'{masking[0].summary}: a layer has one mask. Set '
          f'{far.switch_field(masking[0])}=0 (and its other settings), or '
          f'the {field} entries to 0.')
  stickbreaking.check(model_cfg, [s.length_scaling for s in specs])
  require(not (model_cfg.scan_layers and len(set(specs)) > 1),
          'config.model.scan_layers=True traces one block for every layer, '
          'but config.model.layers gives the layers different encodings, '
          'masks, qk-norm or length scalings. Set '
          'config.model.scan_layers=False, or make the layers alike.')


def _absolute(enc) -> bool:
  """Whether the encoding acts on the embeddings (``embed``)."""
  return enc.embed is not positions.PositionEncoding.embed
