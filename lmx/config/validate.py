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
from lmx.config.fields import Fields, require
from lmx.data import subword
from lmx.data import tasks
from lmx.data import tokenizer as tokenizer_lib
from lmx.errors import ConfigError
from lmx.positions import sampling as sampling_lib

# Positions and steps are int32 on the device.
INT32_MAX = 2**31 - 1

__all__ = ['ConfigError', 'check_length', 'eval_lengths', 'position_bound',
           'resolve_eval_sampling', 'task_eval_lengths',
           'training_eval_config', 'training_eval_lengths', 'validate']


def position_bound(config: ml_collections.ConfigDict, sampling: str,
                   length: int) -> Optional[int]:
  """The largest position + 1 a sequence of ``length`` may use."""
  if sampling == 'contiguous':
    return length
  if sampling in sampling_lib.REAL_KINDS:
    return sampling_lib.cape_bound(length, config.positions.cape)
  return int(config.positions.max_position)


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
  drawn = sampling not in ('contiguous',) + sampling_lib.REAL_KINDS
  if drawn and length > config.positions.max_position:
    return (f'{what} length {length} is longer than '
            f'config.positions.max_position={config.positions.max_position}: '
            f'{sampling} positions are drawn from [0, max_position). Raise '
            f'config.positions.max_position to at least {length} (and train '
            f'with it), or evaluate with shorter lengths.')
  # Positions of one sequence span its length, or (randomized) up to the
  # whole range they are drawn from.
  span = length
  if sampling == 'randomized':
    span = max(length, int(config.positions.max_position))
  elif sampling in sampling_lib.REAL_KINDS:
    span = sampling_lib.cape_span(length, config.positions.cape)
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
  own settings (``PositionEncoding.check``), and every other registered
  encoding that none of its settings asks for an effect
  (``check_unused``): nothing here is specific to one encoding.
  """
  f = Fields(config, 'config')
  m = config.model
  if f.get('model.position') not in positions.REGISTRY:
    raise ConfigError(
        f'Unknown position encoding {m.position!r} in config.model.position. '
        f'Valid names: {", ".join(sorted(positions.REGISTRY))}.')
  f.seed('seed')
  require(isinstance(f.get('init_from'), str),
          'config.init_from must be the --workdir of a trained run, or \'\'.')
  f.int('init_from_step', 0)
  f.bool('init_interpolate')
  for field in ('d_model', 'num_layers', 'num_heads', 'mlp_dim', 'vocab_size'):
    f.int(f'model.{field}', 1)
  require(m.d_model % m.num_heads == 0,
          f'config.model.num_heads={m.num_heads} does not divide '
          f'config.model.d_model={m.d_model}: choose heads that divide the '
          f'width (e.g. num_heads='
          f'{max(h for h in range(1, m.num_heads + 1) if m.d_model % h == 0)}).')
  _check_tokenizer(config)
  f.choice('model.dtype', ('float32', 'bfloat16'))
  f.float('model.dropout', 0.0, 1.0, hi_open=True)
  f.bool('model.tie_embeddings')
  f.bool('model.scan_layers')
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
  first = layer_plan.view(m, next(iter(used)))
  for name, other in positions.REGISTRY.items():
    if name not in used:
      other.check_unused(first)

  kinds = positions.SAMPLING_KINDS
  f.choice('positions.train', kinds)
  f.choice('positions.eval', kinds + ('train',))
  f.int('positions.max_position', 1, INT32_MAX)
  _check_real_positions(config, used)

  t = config.train
  for field in ('seq_len', 'batch_size', 'steps', 'checkpoint_every',
                'log_every', 'keep_checkpoints'):
    f.int(f'train.{field}', 1, INT32_MAX)
  f.int('train.warmup_steps', 0, t.steps - 1)
  f.float('train.learning_rate', 0.0, lo_open=True)
  f.float('train.min_lr_ratio', 0.0, 1.0)
  f.float('train.weight_decay', 0.0)
  f.float('train.b1', 0.0, 1.0, hi_open=True)
  f.float('train.b2', 0.0, 1.0, hi_open=True)
  f.float('train.grad_clip', 0.0, lo_open=True)
  f.choice('train.on_corrupt_checkpoint', ('previous', 'refuse'))
  f.int('train.loss_chunk', 0)
  micro = f.int('train.microbatches', 1)
  require(t.batch_size % micro == 0,
          f'config.train.microbatches={micro} does not divide '
          f'config.train.batch_size={t.batch_size}: choose a divisor (e.g. '
          f'{max(d for d in range(1, micro + 1) if t.batch_size % d == 0)}).')
  f.int('train.max_nonfinite_skips', 0)
  f.int('train.eval_every', 0, INT32_MAX)
  mults = f.get('train.eval_multipliers')
  require(isinstance(mults, (tuple, list)) and len(mults) > 0 and all(
      isinstance(x, int) and not isinstance(x, bool) and x > 0
      for x in mults),
          'config.train.eval_multipliers must be one or more positive '
          f'integers (multiples of config.train.seq_len), got {mults!r}: e.g. '
          '(1, 4, 16). Set config.train.eval_every=0 to evaluate no length '
          'during training.')
  f.int('train.eval_tokens', 1)
  sharding.validate_config(config)
  problem = check_length(config, t.seq_len, config.positions.train, 'Training')
  require(problem is None, problem or '')

  d = config.data
  require(isinstance(f.get('data.source'), str) and d.source,
          "config.data.source must name 'stdlib', a folder, a glob or "
          "'tfds:<name>'.")
  f.float('data.validation_fraction', 0.0, 1.0, lo_open=True, hi_open=True)
  require(isinstance(f.get('data.validation_source'), str),
          'config.data.validation_source must be a file, folder or glob of '
          "validation text, or '' to split config.data.source.")
  require(not (d.validation_source and d.source.startswith('tfds:')),
          'config.data.validation_source applies to local text; a tfds '
          'catalog dataset names its split in config.data.validation_split.')
  require(isinstance(f.get('data.text_key'), str) and d.text_key,
          'config.data.text_key must name the field (jsonl), column '
          '(parquet) or feature (tfds) that holds the text.')
  # 0 = one worker per core; more processes than cores only add memory.
  f.int('data.prepare_workers', 0, 1024)
  # Batches built ahead of the step; each holds one batch on host and device.
  f.int('data.prefetch', 0, 64)

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
  require(all(isinstance(x, int) and x > 0 for x in e.multipliers),
          f'config.eval.multipliers must be positive integers, got '
          f'{e.multipliers!r}.')
  f.int('eval.tokens', 1)
  f.seed('eval.seed')
  f.int('eval.batch_tokens', 1)
  f.int('eval.position_buckets', 1)
  # The names are checked against the registry where the evaluators are
  # chosen (lmx.evaluation.evaluators.names), which this module cannot
  # import without a cycle.
  names = e.get('evaluators', ())
  require(isinstance(names, (tuple, list))
          and all(isinstance(n, str) and n for n in names),
          'config.eval.evaluators must be a tuple of evaluator names (or () '
          f'for those the config.eval switches turn on), got {names!r}.')
  f.bool('eval.sliding')
  f.int('eval.sliding_stride', 0)
  f.int('eval.diagnostics_windows', 0)
  f.bool('eval.generation')
  f.int('eval.generation_tokens', 1)
  f.int('eval.generation_documents', 1)
  for field in ('generation_multipliers', 'generation_positions'):
    values = e[field]
    require(isinstance(values, (tuple, list)) and all(
        isinstance(x, int) and not isinstance(x, bool) and x > 0
        for x in values),
            f'config.eval.{field} must be positive integers, got {values!r}.')
  f.bool('eval.ood')
  f.int('eval.ood_query_rows', 1)
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


def _check_real_positions(config, used) -> None:
  """CAPE's settings, and the rules of a sampling that draws real-valued
  positions: only for training, and only for an encoding that takes them
  (``real_positions``)."""
  f = Fields(config, 'config')
  f.float('positions.cape.max_global_shift', 0.0)
  f.float('positions.cape.max_local_shift', 0.0, 1.0)
  f.float('positions.cape.max_global_scaling', 1.0)
  p, m = config.positions, config.model
  require(p.eval not in sampling_lib.REAL_KINDS,
          f'config.positions.eval={p.eval!r} augments positions for '
          'training; an evaluation uses contiguous integer positions (as '
          "the paper evaluates). Set config.positions.eval='train' (which "
          "means contiguous after it) or 'contiguous'.")
  if p.train not in sampling_lib.REAL_KINDS:
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


def _check_flash(config, used, *, far: bool) -> None:
  """``model.attention='flash'``: what the fused kernel cannot compute is
  refused here, where the config already says it (a call outside a config
  falls back instead, ``attention.flash_unavailable``)."""
  m = config.model
  if m.attention != 'flash':
    return
  require(not far,
          "config.model.attention='flash' computes one logit branch, but a "
          'distance clamp (config.model.rerope.window, config.model.'
          'lm_infinite.distance_limit) or config.model.self_extend.window '
          "scores far pairs with a second one. Use 'chunked' or 'dense', or "
          'set those to 0.')
  ssmax = 'ssmax' in {s.length_scaling for s in layer_plan.plan(m)}
  for name, encoding in used.items():
    why = encoding.kernel_refusal(layer_plan.view(m, name))
    require(why is None,
            f"config.model.attention='flash' computes the bias inside the "
            f'kernel, but for the {name!r} encoding {why}. Use '
            "'chunked' or 'dense'.")
    require(not (ssmax and encoding.has_bias()),
            "config.model.attention='flash' adds the bias inside the "
            "kernel, and SSMax (length_scaling 'ssmax') scales the whole "
            f'score, the {name!r} bias included. Use \'chunked\' or '
            "'dense', or another length scaling.")
  require(not (m.sinks.logit or m.sinks.memory),
          "config.model.attention='flash' computes the keys of the sequence "
          'alone, but config.model.sinks adds sink slots. Use '
          "'chunked' or 'dense', or turn the sinks off.")


def _check_tokenizer(config) -> None:
  """config.data.tokenizer and its settings; model.vocab_size against it.

  A given SentencePiece file is read when a run starts
  (``lmx.data.subword.resolve``, still before anything compiles); a
  trained run reads its own copy instead."""
  f = Fields(config, 'config')
  kind = f.choice('data.tokenizer', tokenizer_lib.KINDS)
  vocab = int(config.model.vocab_size)
  if kind == 'bytes':
    require(vocab >= tokenizer_lib.VOCAB_SIZE,
            f'config.model.vocab_size={vocab} is too small for 256 '
            f'bytes plus the end-of-document token: use at least 257.')
    return
  f.choice('data.sentencepiece.model_type', subword.MODEL_TYPES)
  f.int('data.sentencepiece.vocab_size', subword.MIN_VOCAB + 1,
        subword.MAX_VOCAB)
  f.float('data.sentencepiece.character_coverage', 0.9, 1.0)
  # SentencePiece holds its training sentences in memory (and indexes them
  # with int32 in places): a sample of at least 1 MB and at most 2^31 bytes.
  f.int('data.sentencepiece.train_bytes', 1 << 20, 1 << 31)
  model_file = f.get('data.sentencepiece.model_file')
  require(isinstance(model_file, str),
          'config.data.sentencepiece.model_file must be the path of a '
          "SentencePiece .model file, or '' to train one.")


def _check_attention(config, used) -> None:
  """The attention backend, ReRoPE and LM-Infinite settings; ``used``:
  ``{name: encoding}`` of the encodings the layers use."""
  f = Fields(config, 'config')
  m = config.model
  names = ', '.join(map(repr, used))
  rotary = any(e.rotary for e in used.values())
  relative = any(e.relative() for e in used.values())
  f.choice('model.attention', attention.BACKENDS)
  require(m.attention != 'cudnn' or jax.default_backend() == 'gpu',
          f"config.model.attention='cudnn' needs a GPU, but JAX runs on "
          f"{jax.default_backend()} here. Use 'auto' (it picks per "
          "platform), 'dense' or 'chunked'.")
  f.int('model.attention_block', 1)
  f.int('model.chunk_threshold', 0)
  f.int('model.accelerator_chunk_threshold', 0)
  window = f.int('model.rerope.window', 0)
  leak = f.float('model.rerope.leak', 0.0, 1.0, hi_open=True)
  require(leak == 0.0 or window > 0,
          f'config.model.rerope.leak={leak} acts beyond the ReRoPE window: '
          'set config.model.rerope.window too (e.g. the training length).')
  require(window == 0 or rotary,
          f'config.model.rerope.window={window} clamps rotary angles, but the '
          f'{names} encoding is not rotary. Use a rotary encoding '
          '(rotary = True: rope, xpos), or LM-Infinite\'s '
          'config.model.lm_infinite.distance_limit, which clamps the '
          'distances of any encoding.')
  n_global = f.int('model.lm_infinite.n_global', 0)
  n_local = f.int('model.lm_infinite.n_local', 0)
  limit = f.int('model.lm_infinite.distance_limit', 0)
  require(n_local > 0 or (n_global == 0 and limit == 0),
          'config.model.lm_infinite.n_global and distance_limit act only '
          'with the Lambda-shaped mask: set config.model.lm_infinite.n_local '
          '(e.g. the training length), or set both to 0.')
  require(limit == 0 or n_global + n_local <= limit,
          f'config.model.lm_infinite: n_global + n_local = {n_global} + '
          f'{n_local} = {n_global + n_local} is larger than distance_limit='
          f'{limit} (the pretraining length), so local distances would pass '
          'the limit. Lower n_local to at most '
          f'{max(limit - n_global, 0)}, or raise distance_limit.')
  require(not (window and limit),
          'config.model.rerope.window and config.model.lm_infinite.'
          'distance_limit both clamp distances; set one of them to 0.')
  se_window = f.int('model.self_extend.window', 0)
  f.int('model.self_extend.group', 1)
  require(not se_window or not (window or limit),
          'config.model.self_extend.window and '
          + ('config.model.rerope.window' if window else
             'config.model.lm_infinite.distance_limit')
          + ' both rescore distant pairs; set one of them to 0.')
  require(not se_window or relative,
          f'config.model.self_extend.window={se_window} regroups the '
          f'positions that the rotation or the bias sees, but the '
          f'{names} encoding has neither (it adds its positions to the '
          'embeddings, or has none). Use a relative encoding ('
          + ', '.join(n for n, e in positions.REGISTRY.items() if e.relative())
          + '), or set config.model.self_extend.window=0.')
  f.bool('model.sinks.logit')
  f.int('model.sinks.memory', 0, 4096)
  _check_flash(config, used, far=bool(window or limit or se_window))
  kind = f.choice('model.length_scaling.kind', attention.LENGTH_SCALINGS)
  base_len = f.int('model.length_scaling.base_len', 0)
  kinds = {s.length_scaling for s in layer_plan.plan(m)}
  where = ('config.model.layers.length_scaling'
           f'={tuple(m.layers.length_scaling)!r}'
           if tuple(m.layers.length_scaling) else
           f'config.model.length_scaling.kind={kind!r}')
  require(not ({'logn', 'ssmax'} & kinds) or base_len >= 2,
          f"{where} ('logn' or 'ssmax') needs "
          'config.model.length_scaling.base_len >= 2 (logn scales queries '
          'by log(p + 1) / log(base_len); ssmax starts s at 1 / mean(log n) '
          f'over 1 .. base_len), but it is {base_len}. Set '
          'config.model.length_scaling.base_len to the training length '
          "(config.train.seq_len), or kind='off'.")
  f.positive('model.length_scaling.floor_scale')
  f.float('model.length_scaling.attn_scale', 0.0)
  f.float('model.length_scaling.ssmax_init', 0.0)


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
