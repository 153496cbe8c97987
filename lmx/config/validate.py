"""Whole-config validation, run before anything is built or compiled.

Every message names the field to change and how.
"""

from typing import Optional, Sequence

import jax
import ml_collections

from lmx.model import attention
from lmx.model import layer_plan
from lmx.model import transformer as model_lib
from lmx import positions
from lmx import sharding
from lmx.config import specs
from lmx.config.fields import Fields, check_section, require
from lmx.data import subword
from lmx.data import tasks
from lmx.errors import ConfigError
from lmx.positions import dape as score_adapter
from lmx.positions import far
from lmx.positions import length_scaling
from lmx.positions import sampling as sampling_lib

INT32_MAX = specs.INT32_MAX

__all__ = ['ConfigError', 'check_length', 'eval_lengths', 'position_bound',
           'resolve_eval_sampling', 'task_eval_lengths',
           'training_eval_config', 'training_eval_lengths', 'validate']


def position_bound(config: ml_collections.ConfigDict, sampling: str,
                   length: int) -> Optional[int]:
  """The largest position + 1 a sequence of ``length`` may use."""
  return sampling_lib.get(sampling).bound(config.positions, length)


def resolve_eval_sampling(config) -> str:
  """The position sampling an evaluation uses: ``positions.eval``, or for
  'train' the training kind (contiguous after PoSE training)."""
  kind = config.positions.eval
  if kind == 'train':
    return sampling_lib.eval_kind(config.positions.train)
  return kind


def check_length(config: ml_collections.ConfigDict, length: int,
                 sampling: str, what: str) -> Optional[str]:
  """Why ``length`` cannot be run with this config, or None if it can."""
  sampler = sampling_lib.get(sampling)
  if sampler.drawn and length > config.positions.max_position:
    return (f'{what} length {length} is longer than '
            f'config.positions.max_position={config.positions.max_position}: '
            f'{sampling} positions are drawn from [0, max_position). Raise '
            f'config.positions.max_position to at least {length} (and train '
            f'with it), or evaluate with shorter lengths.')
  # Positions of one sequence span its length, or (randomized) up to the
  # whole range they are drawn from.
  span = sampler.span(config.positions, length)
  needed = position_bound(config, sampling, length)
  # Every encoding some layer uses (config.model.layers.position).
  for name, encoding in layer_plan.used_encodings(config.model).items():
    view = layer_plan.view(config.model, name)
    limit = encoding.max_span(view)
    if limit is not None and span > limit[0]:
      return (f'{what} length {length} spans {span} positions, but the '
              f'{name!r} encoding cannot: {limit[1]}.')
    bound = encoding.max_positions(view)
    if bound is not None and needed > bound:
      return (f'{what} length {length} needs positions up to {needed - 1}, '
              f'but the {name!r} encoding only has {bound} '
              f'({encoding.bound_setting()}={bound}). A learned table cannot '
              f'represent positions it has no row for: raise '
              f'{encoding.bound_setting()} and train again, or use shorter '
              f'lengths.')
  return None


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for the first invalid field or cross-field rule.

  Checks types and ranges of every field lmx reads, then the rules that tie
  fields together (heads divide the width, lengths against what the
  encoding and the position range can represent). The encoding checks its
  own settings (``PositionEncoding.check``), and no other registered
  encoding's switch is changed (``PositionEncoding.switches``): nothing
  here is specific to one encoding.
  """
  f = Fields(config, 'config')
  m = config.model
  if f.get('model.position') not in positions.REGISTRY:
    raise ConfigError(
        f'Unknown position encoding {m.position!r} in config.model.position. '
        f'Valid names: {", ".join(sorted(positions.REGISTRY))}.')
  check_section(config, 'config', specs.TOP, closed=False)
  require(isinstance(f.get('init_from'), str),
          'config.init_from must be the --workdir of a trained run, or \'\'.')
  check_section(m, 'config.model', specs.MODEL, closed=False)
  require(m.d_model % m.num_heads == 0,
          f'config.model.num_heads={m.num_heads} does not divide '
          f'config.model.d_model={m.d_model}: choose heads that divide the '
          f'width (e.g. num_heads='
          f'{max(h for h in range(1, m.num_heads + 1) if m.d_model % h == 0)}).')
  subword.check_config(config)
  f.choice('model.remat', tuple(model_lib.REMAT_POLICIES))
  require('layers' in m,
          'config.model.layers is missing. Start from a config in configs/ '
          '(they build on lmx/config/defaults.py, which sets it).')
  layer_plan.check(m)
  # The encodings the layers use (config.model.position alone unless
  # config.model.layers.position names them): each checks the model as
  # its own, and every other one that none of its settings asks for an
  # effect.
  used = layer_plan.used_encodings(m)
  _check_attention(config, used)
  for name, encoding in used.items():
    encoding.check(layer_plan.view(m, name))
  _check_unused_switches(m, used)

  check_section(config.positions, 'config.positions',
                specs.positions(tuple(sampling_lib.REGISTRY)), closed=False)
  _check_real_positions(config, used)

  t = config.train
  check_section(t, 'config.train', specs.TRAIN, closed=False)
  # Warm-up ends before the last step (the cosine's length is what is left).
  f.int('train.warmup_steps', 0, t.steps - 1)
  micro = t.microbatches
  require(t.batch_size % micro == 0,
          f'config.train.microbatches={micro} does not divide '
          f'config.train.batch_size={t.batch_size}: choose a divisor (e.g. '
          f'{max(d for d in range(1, micro + 1) if t.batch_size % d == 0)}).')
  mults = f.get('train.eval_multipliers')
  require(isinstance(mults, (tuple, list)) and len(mults) > 0 and all(
      isinstance(x, int) and not isinstance(x, bool) and x > 0
      for x in mults),
          'config.train.eval_multipliers must be one or more positive '
          f'integers (multiples of config.train.seq_len), got {mults!r}: e.g. '
          '(1, 4, 16). Set config.train.eval_every=0 to evaluate no length '
          'during training.')
  sharding.validate_config(config)
  problem = check_length(config, t.seq_len, config.positions.train, 'Training')
  require(problem is None, problem or '')

  d = config.data
  require(isinstance(f.get('data.source'), str) and d.source,
          "config.data.source must name 'stdlib', a folder, a glob or "
          "'tfds:<name>'.")
  check_section(d, 'config.data', specs.DATA, closed=False)
  require(isinstance(f.get('data.validation_source'), str),
          'config.data.validation_source must be a file, folder or glob of '
          "validation text, or '' to split config.data.source.")
  require(not (d.validation_source and d.source.startswith('tfds:')),
          'config.data.validation_source applies to local text; a tfds '
          'catalog dataset names its split in config.data.validation_split.')
  require(isinstance(f.get('data.text_key'), str) and d.text_key,
          'config.data.text_key must name the field (jsonl), column '
          '(parquet) or feature (tfds) that holds the text.')

  require(not ('task' in config and config.task.name
               and d.tokenizer != 'bytes'),
          f'config.task.name={config.task.name!r} is a synthetic task, '
          'written in byte tokens; config.data.tokenizer='
          f'{d.tokenizer!r} applies to text corpora only. Drop '
          "--config.data.tokenizer (tasks use 'bytes').")
  problem = tasks.check(config) if 'task' in config else None
  require(problem is None, problem or '')
  if 'task' in config and config.task.name:
    # The longest training sequence must have positions, as for text.
    problem = check_length(config, tasks.sequence_length(
        config.task, config.task.train_max_length), config.positions.train,
                           'Task training')
    require(problem is None, problem or '')

  e = config.eval
  check_section(e, 'config.eval', specs.EVAL, closed=False)
  # The names are checked against the registry where the evaluators are
  # chosen (lmx.evaluation.evaluators.names), which this module cannot
  # import without a cycle.
  names = e.get('evaluators', ())
  require(isinstance(names, (tuple, list))
          and all(isinstance(n, str) and n for n in names),
          'config.eval.evaluators must be a tuple of evaluator names (or () '
          f'for those the config.eval switches turn on), got {names!r}.')
  heads, layers = int(m.num_heads), int(m.num_layers)
  require(isinstance(e.ood_head, int) and 0 <= e.ood_head < heads,
          f'config.eval.ood_head={e.ood_head!r} must name a head of the '
          f'model: an integer in [0, {heads}) (config.model.num_heads='
          f'{heads}).')
  require(isinstance(e.ood_layer, int) and -layers <= e.ood_layer < layers,
          f'config.eval.ood_layer={e.ood_layer!r} must name a block: an '
          f'integer in [{-layers}, {layers}) (negative counts from the last; '
          f'config.model.num_layers={layers}).')
  require(not e.generation or e.generation_multipliers
          or e.generation_positions,
          'config.eval.generation=true needs positions: set '
          'config.eval.generation_multipliers (of train.seq_len) or '
          'config.eval.generation_positions.')
  for length in e.lengths:
    require(isinstance(length, int) and length > 0,
            f'config.eval.lengths must be positive integers, got {length!r}.')
    problem = check_length(config, length, resolve_eval_sampling(config),
                           'Evaluation')
    require(problem is None, problem or '')


def _check_unused_switches(m, used) -> None:
  """One rule for every encoding no layer uses: a setting of its section
  that switches an effect on (``PositionEncoding.switches``) is refused
  when changed, since it would silently do nothing."""
  for name, encoding in positions.REGISTRY.items():
    if name in used or name not in m:
      continue
    defaults_ = encoding.default_config()
    for field, effect in encoding.switches.items():
      value = m[name][field]
      require(value == defaults_[field],
              f'config.model.{name}.{field}={value!r} {effect}, but this '
              f'model uses the {m.position!r} encoding (no layer uses '
              f'{name!r}). Set config.model.{name}.{field}='
              f'{defaults_[field]!r}, or use config.model.position='
              f'{name!r}.')


def _check_real_positions(config, used) -> None:
  """The samplers' settings, and the rules of a sampling that draws
  real-valued positions: only for training, and only for an encoding that
  takes them (``real_positions``)."""
  sampling_lib.check_sections(config.positions)
  p, m = config.positions, config.model
  require(p.eval == 'train' or not sampling_lib.get(p.eval).train_only,
          f'config.positions.eval={p.eval!r} augments positions for '
          'training; an evaluation uses contiguous integer positions (as '
          "the paper evaluates). Set config.positions.eval='train' (which "
          "means contiguous after it) or 'contiguous'.")
  if not sampling_lib.get(p.train).real:
    return
  takers = ', '.join(n for n, e in positions.REGISTRY.items()
                     if e.real_positions)
  integer = [n for n, e in used.items() if not e.real_positions]
  require(not integer,
          f'config.positions.train={p.train!r} trains on real-valued '
          f'(float32) positions, but the {", ".join(map(repr, integer))} '
          'encoding needs '
          'integer positions (it indexes a table, buckets distances or '
          'computes them in integers). Use an encoding that takes real '
          f'positions ({takers}), or another config.positions.train.')
  require(m.attention != 'flash',
          f"config.model.attention='flash' reads int32 position tiles, so "
          f'the real-valued positions of config.positions.train={p.train!r} '
          "would be cut to integers. Use 'chunked', 'dense' or 'auto'.")


def _check_flash(config, used) -> None:
  """``model.attention='flash'``: what the fused kernel cannot compute is
  refused here, where the config already says it (a call outside a config
  falls back instead, ``lmx.model.attention.FLASH``)."""
  m = config.model
  if m.attention != 'flash':
    return
  for member in far.active(m):
    why = member.kernel_refusal(m)
    field = (far.far_switch_field(member) if member.far(m) is not None
             else f'config.model.{member.name}')
    require(why is None,
            f"config.model.attention='flash' cannot compute "
            f'{member.summary} ({field}): {why}. Use '
            "'chunked' or 'dense', or turn it off.")
  scores = [k for k in {s.length_scaling for s in layer_plan.plan(m)}
            if length_scaling.get(k).scales_scores]
  for name, encoding in used.items():
    why = encoding.kernel_refusal(layer_plan.view(m, name))
    require(why is None,
            f"config.model.attention='flash' computes the bias inside the "
            f'kernel, but for the {name!r} encoding {why}. Use '
            "'chunked' or 'dense'.")
    if scores and encoding.has_bias():
      raise ConfigError(
          "config.model.attention='flash' adds the bias inside the kernel, "
          f'and the length scaling {scores[0]!r} '
          f'({length_scaling.get(scores[0]).__name__}) scales the whole score, '
          f"the {name!r} bias included. Use 'chunked' or 'dense', or "
          'another length scaling.')


def _check_attention(config, used) -> None:
  """The attention backend, the far branches and masks
  (``lmx.positions.far``) and the length scalings
  (``lmx.positions.length_scaling``); ``used``: ``{name: encoding}`` of the
  encodings the layers use."""
  f = Fields(config, 'config')
  m = config.model
  f.choice('model.attention', attention.BACKENDS)
  require(m.attention != 'cudnn' or jax.default_backend() == 'gpu',
          f"config.model.attention='cudnn' needs a GPU, but JAX runs on "
          f"{jax.default_backend()} here. Use 'auto' (it picks per "
          "platform), 'dense' or 'chunked'.")
  far.check(m, used)
  kinds = [s.length_scaling for s in layer_plan.plan(m)]
  where = ('config.model.layers.length_scaling'
           f'={tuple(m.layers.length_scaling)!r}'
           if tuple(m.layers.length_scaling) else
           f'config.model.length_scaling.kind={m.length_scaling.kind!r}')
  length_scaling.check(m, kinds, where)
  score_adapter.check(m, used)
  _check_flash(config, used)


def eval_lengths(config: ml_collections.ConfigDict,
                 explicit: Optional[Sequence[int]] = None):
  """(lengths to run, {skipped length: reason}).

  Lengths asked for explicitly (the argument or config.eval.lengths) must all
  be runnable, else ConfigError. The default multiples of the training
  length silently drop those the encoding cannot represent, reporting why.
  Every length to run must fit config.eval.tokens: a window of n tokens
  needs at least n of them (``windows.num_eval_windows = tokens // n``).
  """
  lengths, skipped = _eval_lengths(config, explicit)
  tokens = int(config.eval.tokens)
  if lengths and tokens < max(lengths):
    raise ConfigError(
        f'config.eval.tokens={tokens} is smaller than one evaluation window '
        f'of {max(lengths)} tokens (the longest length to evaluate; windows '
        f'= tokens // length would be 0): raise config.eval.tokens to at '
        f'least {max(lengths)} (config.train.eval_tokens for the evaluation '
        'during training), or evaluate shorter lengths.')
  return lengths, skipped


def _eval_lengths(config, explicit):
  sampling = resolve_eval_sampling(config)
  asked = list(explicit or config.eval.lengths or ())
  if asked:
    for length in asked:
      require(isinstance(length, int) and length > 0,
               f'Evaluation lengths must be positive integers, got {length!r}.')
      problem = check_length(config, length, sampling, 'Evaluation')
      require(problem is None, problem or '')
    return sorted(set(asked)), {}
  lengths, skipped = [], {}
  for mult in config.eval.multipliers:
    length = mult * config.train.seq_len
    problem = check_length(config, length, sampling, 'Evaluation')
    if problem is None:
      lengths.append(length)
    else:
      skipped[length] = problem
  return sorted(set(lengths)), skipped


def training_eval_config(
    config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config of the evaluation during training (``train.eval_every``):
  a copy whose ``eval`` section asks for ``train.eval_multipliers`` x the
  training length and ``train.eval_tokens`` tokens per length; every other
  ``config.eval`` setting (batch_tokens, seed) and the position sampling
  (``resolve_eval_sampling``) as eval.py uses them."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.eval.multipliers = tuple(config.train.eval_multipliers)
  c.eval.lengths = ()
  c.eval.tokens = int(config.train.eval_tokens)
  return c


def training_eval_lengths(config: ml_collections.ConfigDict):
  """(lengths the evaluation during training runs, {skipped length:
  reason}): ``eval_lengths`` of ``training_eval_config``. Nothing when it is
  off (``train.eval_every=0``) or the run is a task run."""
  if not config.train.eval_every or config.task.name:
    return [], {}
  return eval_lengths(training_eval_config(config))


def task_eval_lengths(config: ml_collections.ConfigDict,
                      explicit: Optional[Sequence[int]] = None):
  """(task lengths to run, {skipped length: reason}) for a task run, like
  ``eval_lengths``: explicit lengths must all be runnable; the default grid
  drops (and reports) those whose sequences the positions cannot cover."""
  sampling = resolve_eval_sampling(config)
  asked = list(explicit or ())
  lengths, skipped = [], {}
  for n in asked or tasks.eval_lengths(config.task):
    require(isinstance(n, int) and n > 0,
             f'Task lengths must be positive integers, got {n!r}.')
    problem = tasks.alphabet_problem(config.task, n) or check_length(
        config, tasks.sequence_length(config.task, n), sampling,
        f'Task length {n}: the evaluation')
    if problem is None:
      lengths.append(n)
    elif asked:
      raise ConfigError(problem)
    else:
      skipped[n] = problem
  return sorted(set(lengths)), skipped
