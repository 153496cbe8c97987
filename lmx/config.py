"""Whole-config validation, run before anything is built or compiled.

Every message names the field to change and how.
"""

import math
from typing import Optional, Sequence

import jax
import ml_collections

from lmx import attention
from lmx import positions
from lmx import sharding
from lmx.positions import rope_scaling
from lmx.data import tasks


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


def _get(config, path: str):
  node = config
  for part in path.split('.'):
    if part not in node:
      raise ConfigError(
          f'config.{path} is missing. Start from a config in configs/ (they '
          'all build on configs/base.py), which sets every field.')
    node = node[part]
  return node


def _int(config, path: str, lo: Optional[int] = None,
         hi: Optional[int] = None) -> int:
  value = _get(config, path)
  _require(isinstance(value, int) and not isinstance(value, bool),
           f'config.{path} must be an integer, got {value!r}.')
  _require(lo is None or value >= lo,
           f'config.{path} must be at least {lo}, got {value}.')
  _require(hi is None or value <= hi,
           f'config.{path} must be at most {hi}, got {value}.')
  return value


def _float(config, path: str, lo: Optional[float] = None,
           hi: Optional[float] = None, lo_open: bool = False,
           hi_open: bool = False) -> float:
  value = _get(config, path)
  _require(isinstance(value, (int, float)) and not isinstance(value, bool)
           and math.isfinite(value),
           f'config.{path} must be a finite number, got {value!r}.')
  lo_ok = lo is None or (value > lo if lo_open else value >= lo)
  hi_ok = hi is None or (value < hi if hi_open else value <= hi)
  if not (lo_ok and hi_ok):
    left = '(' if lo_open else '['
    right = ')' if hi_open else ']'
    raise ConfigError(
        f'config.{path} must be in {left}{"-inf" if lo is None else lo}, '
        f'{"inf" if hi is None else hi}{right}, got {value}.')
  return value


def _bool(config, path: str) -> bool:
  value = _get(config, path)
  _require(isinstance(value, bool),
           f'config.{path} must be True or False, got {value!r}.')
  return value


def _choice(config, path: str, options: Sequence[str]) -> str:
  value = _get(config, path)
  _require(value in options,
           f'config.{path}={value!r} is not one of: '
           f'{", ".join(map(repr, options))}.')
  return value


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for the first invalid field or cross-field rule.

  Checks types and ranges of every field lmx reads, then the rules that tie
  fields together (heads divide the width, rotary head dimension even,
  lengths against what the encoding and the position range can represent).
  """
  m = config.model
  if _get(config, 'model.position') not in positions.REGISTRY:
    raise ConfigError(
        f'Unknown position encoding {m.position!r} in config.model.position. '
        f'Valid names: {", ".join(sorted(positions.REGISTRY))}.')
  _int(config, 'seed', 0)
  _require(isinstance(_get(config, 'init_from'), str),
           'config.init_from must be the --workdir of a trained run, or \'\'.')
  _int(config, 'init_from_step', 0)
  _bool(config, 'init_interpolate')
  for field in ('d_model', 'num_layers', 'num_heads', 'mlp_dim', 'vocab_size'):
    _int(config, f'model.{field}', 1)
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
  problem = rope_scaling.check(m)
  _require(problem is None, problem or '')
  scaling = m.rope.get('scaling', 'none') if 'rope' in m else 'none'
  _require(scaling == 'none' or m.position == 'rope',
           f'config.model.rope.scaling={scaling!r} rescales RoPE frequencies, '
           f'but this model uses the {m.position!r} encoding. Set '
           "config.model.rope.scaling='none', or use config.model.position="
           "'rope'.")
  _require(not (m.position == 'sinusoidal' and m.d_model % 2),
           f'sinusoidal needs an even config.model.d_model, got {m.d_model}.')
  _require(m.vocab_size >= 257,
           f'config.model.vocab_size={m.vocab_size} is too small for 256 '
           f'bytes plus the end-of-document token: use at least 257.')
  _choice(config, 'model.dtype', ('float32', 'bfloat16'))
  _float(config, 'model.dropout', 0.0, 1.0, hi_open=True)
  _bool(config, 'model.tie_embeddings')
  if m.position == 'kerple':
    _choice(config, 'model.kerple.kernel', ('log', 'power'))
  _check_attention(config, encoding)
  if m.position == 't5':
    _int(config, 'model.t5.num_buckets', 4)
    _int(config, 'model.t5.max_distance', 1)
    _require(m.t5.max_distance > m.t5.num_buckets // 2,
             'config.model.t5 needs max_distance > num_buckets/2, got '
             f'{m.t5.max_distance} and {m.t5.num_buckets}.')

  kinds = positions.SAMPLING_KINDS
  _choice(config, 'positions.train', kinds)
  _choice(config, 'positions.eval', kinds + ('train',))
  _int(config, 'positions.max_position', 1)

  t = config.train
  for field in ('seq_len', 'batch_size', 'steps', 'checkpoint_every',
                'log_every', 'keep_checkpoints'):
    _int(config, f'train.{field}', 1)
  _int(config, 'train.warmup_steps', 0, t.steps - 1)
  _float(config, 'train.learning_rate', 0.0, lo_open=True)
  _float(config, 'train.min_lr_ratio', 0.0, 1.0)
  _float(config, 'train.weight_decay', 0.0)
  _float(config, 'train.b1', 0.0, 1.0, hi_open=True)
  _float(config, 'train.b2', 0.0, 1.0, hi_open=True)
  _float(config, 'train.grad_clip', 0.0, lo_open=True)
  _choice(config, 'train.on_corrupt_checkpoint', ('previous', 'refuse'))
  _int(config, 'train.max_nonfinite_skips', 0)
  sharding.validate_config(config)
  problem = check_length(config, t.seq_len, config.positions.train, 'Training')
  _require(problem is None, problem or '')

  d = config.data
  _require(isinstance(_get(config, 'data.source'), str) and d.source,
           "config.data.source must name 'stdlib', a folder, a glob or "
           "'tfds:<name>'.")
  _float(config, 'data.validation_fraction', 0.0, 1.0, lo_open=True,
         hi_open=True)

  problem = tasks.check(config) if 'task' in config else None
  _require(problem is None, problem or '')
  if 'task' in config and config.task.name:
    # The longest training sequence must have positions, as for text.
    problem = check_length(config, tasks.sequence_length(
        config.task, config.task.train_max_length), config.positions.train,
                           'Task training')
    _require(problem is None, problem or '')

  e = config.eval
  _require(all(isinstance(x, int) and x > 0 for x in e.multipliers),
           f'config.eval.multipliers must be positive integers, got '
           f'{e.multipliers!r}.')
  _int(config, 'eval.tokens', 1)
  _int(config, 'eval.batch_tokens', 1)
  _int(config, 'eval.position_buckets', 1)
  _bool(config, 'eval.sliding')
  _int(config, 'eval.sliding_stride', 0)
  _int(config, 'eval.diagnostics_windows', 0)
  for length in e.lengths:
    _require(isinstance(length, int) and length > 0,
             f'config.eval.lengths must be positive integers, got {length!r}.')
    problem = check_length(config, length, resolve_eval_sampling(config),
                           'Evaluation')
    _require(problem is None, problem or '')


def _check_attention(config, encoding) -> None:
  """The attention backend, ReRoPE and LM-Infinite settings."""
  m = config.model
  _choice(config, 'model.attention', attention.BACKENDS)
  _require(m.attention != 'cudnn' or jax.default_backend() == 'gpu',
           f"config.model.attention='cudnn' needs a GPU, but JAX runs on "
           f"{jax.default_backend()} here. Use 'auto' (it picks per "
           "platform), 'dense' or 'chunked'.")
  _int(config, 'model.attention_block', 1)
  _int(config, 'model.chunk_threshold', 0)
  window = _int(config, 'model.rerope.window', 0)
  leak = _float(config, 'model.rerope.leak', 0.0, 1.0, hi_open=True)
  _require(leak == 0.0 or window > 0,
           f'config.model.rerope.leak={leak} acts beyond the ReRoPE window: '
           'set config.model.rerope.window too (e.g. the training length).')
  _require(window == 0 or encoding.rotary,
           f'config.model.rerope.window={window} clamps rotary angles, but the '
           f'{m.position!r} encoding is not rotary. Use rope or xpos, or '
           'LM-Infinite\'s config.model.lm_infinite.distance_limit, which '
           'clamps the distances of any encoding.')
  n_global = _int(config, 'model.lm_infinite.n_global', 0)
  n_local = _int(config, 'model.lm_infinite.n_local', 0)
  limit = _int(config, 'model.lm_infinite.distance_limit', 0)
  _require(n_local > 0 or (n_global == 0 and limit == 0),
           'config.model.lm_infinite.n_global and distance_limit act only '
           'with the Lambda-shaped mask: set config.model.lm_infinite.n_local '
           '(e.g. the training length), or set both to 0.')
  _require(limit == 0 or n_global + n_local <= limit,
           f'config.model.lm_infinite: n_global + n_local = {n_global} + '
           f'{n_local} = {n_global + n_local} is larger than distance_limit='
           f'{limit} (the pretraining length), so local distances would pass '
           'the limit. Lower n_local to at most '
           f'{max(limit - n_global, 0)}, or raise distance_limit.')
  _require(not (window and limit),
           'config.model.rerope.window and config.model.lm_infinite.'
           'distance_limit both clamp distances; set one of them to 0.')
  scaling = m.rope.get('scaling', 'none') if 'rope' in m else 'none'
  _require(not ((window or limit) and scaling == 'dynamic'),
           "config.model.rope.scaling='dynamic' follows the largest key "
           'position, which a distance clamp (config.model.rerope.window or '
           'lm_infinite.distance_limit) moves: use another scaling, or no '
           'clamp.')


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


def task_eval_lengths(config: ml_collections.ConfigDict,
                      explicit: Optional[Sequence[int]] = None):
  """(task lengths to run, {skipped length: reason}) for a task run, like
  ``eval_lengths``: explicit lengths must all be runnable; the default grid
  drops (and reports) those whose sequences the positions cannot cover."""
  sampling = resolve_eval_sampling(config)
  asked = list(explicit or ())
  lengths, skipped = [], {}
  for n in asked or tasks.eval_lengths(config.task):
    _require(isinstance(n, int) and n > 0,
             f'Task lengths must be positive integers, got {n!r}.')
    problem = check_length(config, tasks.sequence_length(config.task, n),
                           sampling, f'Task length {n}: the evaluation')
    if problem is None:
      lengths.append(n)
    elif asked:
      raise ConfigError(problem)
    else:
      skipped[n] = problem
  return sorted(set(lengths)), skipped
