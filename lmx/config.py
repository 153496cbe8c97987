"""Whole-config validation, run before anything is built or compiled.

Every message names the field to change and how.
"""

from typing import Optional, Sequence

import ml_collections

from lmx import positions


class ConfigError(ValueError):
  """An invalid configuration; the message names the field and the fix."""


def _require(cond: bool, msg: str):
  if not cond:
    raise ConfigError(msg)


def position_bound(config: ml_collections.ConfigDict, sampling: str,
                   length: int) -> Optional[int]:
  """The largest position + 1 a sequence of ``length`` may use."""
  if sampling == 'contiguous':
    return length
  return int(config.positions.max_position)


def resolve_eval_sampling(config) -> str:
  kind = config.positions.eval
  return config.positions.train if kind == 'train' else kind


def check_length(config: ml_collections.ConfigDict, length: int,
                 sampling: str, what: str) -> Optional[str]:
  """Why ``length`` cannot be run with this config, or None if it can."""
  if sampling != 'contiguous' and length > config.positions.max_position:
    return (f'{what} length {length} is longer than '
            f'config.positions.max_position={config.positions.max_position}: '
            f'{sampling} positions are drawn from [0, max_position). Raise '
            f'config.positions.max_position to at least {length} (and train '
            f'with it), or evaluate with shorter lengths.')
  encoding = positions.get_encoding(config.model.position)
  bound = encoding.max_positions(config.model)
  needed = position_bound(config, sampling, length)
  if bound is not None and needed > bound:
    return (f'{what} length {length} needs positions up to {needed - 1}, but '
            f'the {config.model.position!r} encoding only has {bound} '
            f'({encoding.bound_setting()}={bound}). A learned table cannot '
            f'represent positions it has no row for: raise '
            f'{encoding.bound_setting()} and train again, or use shorter '
            f'lengths.')
  return None


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for the first invalid field or cross-field rule."""
  m = config.model
  if m.position not in positions.REGISTRY:
    raise ConfigError(
        f'Unknown position encoding {m.position!r} in config.model.position. '
        f'Valid names: {", ".join(sorted(positions.REGISTRY))}.')
  for field in ('d_model', 'num_layers', 'num_heads', 'mlp_dim', 'vocab_size'):
    _require(isinstance(m[field], int) and m[field] > 0,
             f'config.model.{field} must be a positive integer, got '
             f'{m[field]!r}.')
  _require(m.d_model % m.num_heads == 0,
           f'config.model.num_heads={m.num_heads} does not divide '
           f'config.model.d_model={m.d_model}: choose heads that divide the '
           f'width (e.g. num_heads='
           f'{max(h for h in range(1, m.num_heads + 1) if m.d_model % h == 0)}).')
  head_dim = m.d_model // m.num_heads
  encoding = positions.get_encoding(m.position)
  _require(not (encoding.rotary and head_dim % 2),
           f'The rotary encoding {m.position!r} turns channel pairs, so the '
           f'head dimension must be even, but d_model/num_heads = '
           f'{m.d_model}/{m.num_heads} = {head_dim}. Change config.model.'
           f'd_model or config.model.num_heads.')
  _require(not (m.position == 'sinusoidal' and m.d_model % 2),
           f'sinusoidal needs an even config.model.d_model, got {m.d_model}.')
  _require(m.vocab_size >= 257,
           f'config.model.vocab_size={m.vocab_size} is too small for 256 '
           f'bytes plus the end-of-document token: use at least 257.')
  _require(m.dtype in ('float32', 'bfloat16'),
           f"config.model.dtype must be 'float32' or 'bfloat16', got "
           f'{m.dtype!r}.')
  _require(0.0 <= m.dropout < 1.0,
           f'config.model.dropout must be in [0, 1), got {m.dropout}.')
  if m.position == 'kerple':
    _require(m.kerple.kernel in ('log', 'power'),
             f"config.model.kerple.kernel must be 'log' or 'power', got "
             f'{m.kerple.kernel!r}.')
  if m.position == 't5':
    _require(m.t5.num_buckets >= 4 and
             m.t5.max_distance > m.t5.num_buckets // 2,
             'config.model.t5 needs num_buckets >= 4 and max_distance > '
             f'num_buckets/2, got {m.t5.num_buckets} and {m.t5.max_distance}.')

  p = config.positions
  kinds = positions.SAMPLING_KINDS
  _require(p.train in kinds,
           f'config.positions.train={p.train!r} is not a sampling kind; valid: '
           f'{", ".join(kinds)}.')
  _require(p.eval in kinds + ('train',),
           f'config.positions.eval={p.eval!r} is not a sampling kind; valid: '
           f'{", ".join(kinds + ("train",))}.')
  _require(isinstance(p.max_position, int) and p.max_position > 0,
           f'config.positions.max_position must be a positive integer, got '
           f'{p.max_position!r}.')

  t = config.train
  for field in ('seq_len', 'batch_size', 'steps'):
    _require(isinstance(t[field], int) and t[field] > 0,
             f'config.train.{field} must be a positive integer, got '
             f'{t[field]!r}.')
  _require(0 <= t.warmup_steps < t.steps,
           f'config.train.warmup_steps={t.warmup_steps} must be in [0, '
           f'train.steps={t.steps}).')
  _require(t.learning_rate > 0, 'config.train.learning_rate must be > 0.')
  _require(0.0 <= t.min_lr_ratio <= 1.0,
           'config.train.min_lr_ratio must be in [0, 1].')
  _require(t.checkpoint_every > 0 and t.log_every > 0,
           'config.train.checkpoint_every and log_every must be positive.')
  _require(t.keep_checkpoints >= 1,
           'config.train.keep_checkpoints must be at least 1.')
  problem = check_length(config, t.seq_len, p.train, 'Training')
  _require(problem is None, problem or '')

  e = config.eval
  _require(all(isinstance(x, int) and x > 0 for x in e.multipliers),
           f'config.eval.multipliers must be positive integers, got '
           f'{e.multipliers!r}.')
  _require(e.tokens > 0 and e.batch_tokens > 0,
           'config.eval.tokens and config.eval.batch_tokens must be positive.')
  for length in e.lengths:
    problem = check_length(config, length, resolve_eval_sampling(config),
                           'Evaluation')
    _require(problem is None, problem or '')


def eval_lengths(config: ml_collections.ConfigDict,
                 explicit: Optional[Sequence[int]] = None):
  """(lengths to run, {skipped length: reason}).

  Lengths asked for explicitly (the argument or config.eval.lengths) must all
  be runnable, else ConfigError. The default multiples of the training
  length silently drop those the encoding cannot represent, reporting why.
  """
  sampling = resolve_eval_sampling(config)
  asked = list(explicit or config.eval.lengths or ())
  if asked:
    for length in asked:
      _require(isinstance(length, int) and length > 0,
               f'Evaluation lengths must be positive integers, got {length!r}.')
      problem = check_length(config, length, sampling, 'Evaluation')
      _require(problem is None, problem or '')
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
