"""Config validation: every bad input gets one message naming the fix."""

import glob
import importlib
import json
import os

import ml_collections
import pytest

from configs import base
from lmx.config import validate as config_lib
from lmx import positions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config_modules():
  names = sorted(os.path.basename(p)[:-3]
                 for p in glob.glob(os.path.join(ROOT, 'configs', '*.py')))
  return [n for n in names if n not in ('__init__', 'base')]


def test_every_encoding_has_a_config_file():
  names = set(_config_modules())
  for encoding in positions.REGISTRY:
    assert encoding in names
  assert {'rope_randomized', 'sinusoidal_randomized'} <= names


@pytest.mark.parametrize('name', _config_modules())
@pytest.mark.parametrize('size', ['default', 'tiny'])
def test_shipped_configs_are_valid(name, size):
  module = importlib.import_module(f'configs.{name}')
  # A recipe over another run (configs/drope.py) names one in its argument.
  example = getattr(module, 'EXAMPLE_ARG', '')
  c = module.get_config(','.join(filter(None, (example, f'size={size}'))))
  config_lib.validate(c)
  lengths, _ = config_lib.eval_lengths(c)
  assert c.train.seq_len in lengths


def test_unknown_encoding_lists_valid_names():
  c = base.get_config('size=tiny')
  c.model.position = 'alibbi'
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c)
  msg = str(e.value)
  assert 'alibbi' in msg and 'config.model.position' in msg
  for name in positions.REGISTRY:
    assert name in msg


def test_heads_must_divide_width():
  c = base.get_config('size=tiny')
  c.model.d_model, c.model.num_heads = 30, 4
  with pytest.raises(config_lib.ConfigError, match='does not divide'):
    config_lib.validate(c)


@pytest.mark.parametrize('position', ['rope', 'xpos'])
def test_rotary_needs_even_head_dim(position):
  c = base.get_config('size=tiny')
  c.model.position = position
  c.model.d_model, c.model.num_heads = 30, 2   # head dim 15
  with pytest.raises(config_lib.ConfigError, match='head dimension must be even'):
    config_lib.validate(c)
  c.model.position = 'alibi'                    # odd head dim is fine here
  config_lib.validate(c)


def test_learned_table_too_short_for_an_explicit_length():
  c = importlib.import_module('configs.learned').get_config('size=tiny')
  assert c.model.learned.max_len == c.train.seq_len
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.eval_lengths(c, [4 * c.train.seq_len])
  assert 'config.model.learned.max_len' in str(e.value)
  # Default lengths silently skip what the table cannot cover, with a reason.
  lengths, skipped = config_lib.eval_lengths(c)
  assert lengths == [c.train.seq_len]
  assert all('learned.max_len' in why for why in skipped.values())


def test_learned_table_too_short_for_training():
  c = base.get_config('size=tiny')
  c.model.position = 'learned'
  c.model.learned.max_len = c.train.seq_len - 1
  with pytest.raises(config_lib.ConfigError, match='learned.max_len'):
    config_lib.validate(c)


def test_randomized_positions_cannot_cover_a_longer_eval():
  c = importlib.import_module('configs.rope_randomized').get_config('size=tiny')
  too_long = c.positions.max_position + 1
  with pytest.raises(config_lib.ConfigError, match='max_position'):
    config_lib.eval_lengths(c, [too_long])
  # Evaluating the same run with contiguous positions has no such bound.
  c.positions.eval = 'contiguous'
  assert config_lib.eval_lengths(c, [too_long])[0] == [too_long]


@pytest.mark.parametrize('field,value,match', [
    ('positions.train', 'random', 'config.positions.train'),
    ('train.warmup_steps', 10**6, 'warmup_steps'),
    ('model.dtype', 'float16', 'config.model.dtype'),
    ('model.dropout', 1.5, 'dropout'),
    ('train.batch_size', 0, 'batch_size'),
])
def test_field_errors_name_the_field(field, value, match):
  c = base.get_config('size=tiny')
  section, leaf = field.split('.')
  c[section][leaf] = value
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(c)


def test_unknown_size_variant():
  with pytest.raises(ValueError, match='Unknown size'):
    base.get_config('size=huge')


@pytest.mark.parametrize('arg,match', [
    ('sise=tiny', "Unknown key 'sise'.*valid keys: size"),
    ('tiny', "'tiny', which is not key=value.*valid keys: size"),
    ('size=', "'size=', which is not key=value"),
    ('size=tiny,size=small', "sets 'size' twice"),
])
def test_config_arguments_are_strict(arg, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    base.get_config(arg)
  # Every config file takes the same keys (and sweeps their own, too).
  from configs import alibi  # pylint: disable=g-import-not-at-top
  from configs.sweeps import encodings  # pylint: disable=g-import-not-at-top
  with pytest.raises(config_lib.ConfigError, match=match):
    alibi.get_config(arg)
  with pytest.raises(config_lib.ConfigError, match=match):
    encodings.get_sweep(arg)
  assert encodings.get_sweep('size=tiny,seeds=2')['product'] == {
      'seed': [0, 1]}


@pytest.mark.parametrize('position,field,value,match', [
    # A RoPE base of 0 would train into NaN at step 1.
    ('rope', 'theta', 0.0, r'config.model.rope.theta must be in \(0.0, inf\]'),
    ('rope', 'theta', float('nan'), 'rope.theta must be a finite number'),
    ('xpos', 'theta', -1.0, r'config.model.xpos.theta must be in \(0.0'),
    ('xpos', 'gamma', 0.0, r'config.model.xpos.gamma must be in \(0.0'),
    ('xpos', 'scale_base', float('inf'), 'xpos.scale_base must be a finite'),
    ('sinusoidal', 'max_timescale', 0.0,
     r'config.model.sinusoidal.max_timescale must be in \(0.0'),
    ('learned', 'max_len', 0, 'config.model.learned.max_len must be at least 1'),
    ('learned', 'init_std', -0.5, r'config.model.learned.init_std must be in'),
    ('t5', 'num_buckets', 2, 'config.model.t5.num_buckets must be at least 4'),
    ('t5', 'num_buckets', 32.0, 'config.model.t5.num_buckets must be an integer'),
    ('t5', 'max_distance', 16, 'max_distance > num_buckets/2'),
    ('t5', 'bidirectional', 'no', 't5.bidirectional must be True or False'),
    ('kerple', 'kernel', 'cubic', "kerple.kernel='cubic' is not one of: 'log'"),
    ('kerple', 'eps', 0.0, r'config.model.kerple.eps must be in \(0.0, 2.0\]'),
    ('rope', 'beta_fast', -1.0, None),   # unused by scaling='none': fine
])
def test_every_encoding_checks_its_own_fields(position, field, value, match):
  def edit(d):
    d['model']['position'] = position
    d['model'][position][field] = value
  c = _from_dict(edit)
  if match is None:
    config_lib.validate(c)
    return
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(c)
  # The same field of an encoding that is not chosen is not its concern.
  c.model.position = 'none'
  config_lib.validate(c)


def test_a_scaling_checks_its_own_fields():
  c = base.get_config('size=tiny')
  c.model.rope.update(scaling='yarn', factor=4.0, original_max_len=16,
                      beta_fast=float('nan'))
  with pytest.raises(config_lib.ConfigError,
                     match='config.model.rope.beta_fast must be a finite'):
    config_lib.validate(c)
  c.model.rope.beta_fast = 32.0
  config_lib.validate(c)


def _from_dict(edit):
  """A config rebuilt from plain data, as eval.py reads config.json: field
  types are whatever the file says."""
  data = json.loads(base.get_config('size=tiny').to_json())
  edit(data)
  return ml_collections.ConfigDict(data)


@pytest.mark.parametrize('section,field,value,match', [
    ('train', 'b1', 1.0, r'config.train.b1 must be in \[0.0, 1.0\)'),
    ('train', 'b2', -0.1, r'config.train.b2 must be in'),
    ('train', 'learning_rate', 'fast', 'learning_rate must be a finite number'),
    ('train', 'learning_rate', float('nan'), 'must be a finite number'),
    ('train', 'grad_clip', 0.0, r'config.train.grad_clip must be in \(0.0'),
    ('train', 'steps', True, 'config.train.steps must be an integer'),
    ('train', 'steps', 10.0, 'config.train.steps must be an integer'),
    ('train', 'keep_checkpoints', 0, 'keep_checkpoints must be at least 1'),
    ('train', 'on_corrupt_checkpoint', 'ignore',
     "on_corrupt_checkpoint='ignore' is not one of: 'previous', 'refuse'"),
    ('train', 'max_nonfinite_skips', -1, 'max_nonfinite_skips must be at least 0'),
    ('data', 'validation_fraction', 0.0, r'validation_fraction must be in \(0.0'),
    ('model', 'tie_embeddings', 'yes', 'tie_embeddings must be True or False'),
    ('model', 'vocab_size', 200, 'at least 257'),
    ('eval', 'multipliers', [1, 0], 'multipliers must be positive integers'),
])
def test_types_ranges_and_choices_name_the_field(section, field, value, match):
  def edit(d):
    d[section][field] = value
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(_from_dict(edit))


def test_a_missing_field_says_where_to_start():
  def edit(d):
    del d['train']['grad_clip']
  with pytest.raises(config_lib.ConfigError,
                     match='config.train.grad_clip is missing.*configs/base.py'):
    config_lib.validate(_from_dict(edit))


def test_warmup_must_be_shorter_than_the_run():
  def edit(d):
    d['train']['steps'], d['train']['warmup_steps'] = 10, 10
  with pytest.raises(config_lib.ConfigError,
                     match='warmup_steps must be at most 9'):
    config_lib.validate(_from_dict(edit))


# ------------------------------------------------- CAPE's real positions


def _cape(position='sinusoidal', **fields):
  c = base.get_config('size=tiny')
  c.model.position = position
  c.positions.train = 'cape'
  c.update_from_flattened_dict(fields)
  return c


@pytest.mark.parametrize('position', sorted(
    n for n, e in positions.REGISTRY.items() if e.real_positions))
def test_cape_is_accepted_by_encodings_that_take_real_positions(position):
  config_lib.validate(_cape(position))


@pytest.mark.parametrize('position', ['learned', 't5', 'alibi', 'kerple',
                                      'fire'])
def test_cape_is_refused_for_encodings_that_need_integers(position):
  assert not positions.REGISTRY[position].real_positions
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(_cape(position))
  msg = str(e.value)
  assert "config.positions.train='cape'" in msg and repr(position) in msg
  assert 'sinusoidal' in msg and 'rope' in msg   # what to use instead


@pytest.mark.parametrize('fields,needle', [
    ({'positions.eval': 'cape'}, "config.positions.eval='cape'"),
    ({'model.attention': 'flash'}, "config.model.attention='flash'"),
    ({'positions.cape.max_global_shift': -1.0},
     'config.positions.cape.max_global_shift'),
    ({'positions.cape.max_local_shift': 1.5},
     'config.positions.cape.max_local_shift'),
    ({'positions.cape.max_global_scaling': 0.9},
     'config.positions.cape.max_global_scaling'),
])
def test_bad_cape_settings_are_refused(fields, needle):
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(_cape(**fields))
  assert needle in str(e.value), str(e.value)


def test_cape_ignores_max_position_and_evaluates_contiguous():
  # Positions.max_position bounds randomized draws, not CAPE's.
  c = _cape(**{'positions.max_position': 4})
  config_lib.validate(c)
  assert config_lib.resolve_eval_sampling(c) == 'contiguous'
  lengths, skipped = config_lib.eval_lengths(c)
  assert lengths == [16 * m for m in c.eval.multipliers] and not skipped


def test_no_field_is_named_like_a_configdict_method():
  # config.model.shaw.values would read ConfigDict.values (a bound method,
  # always true), never the field: every name must be free of that trap.
  import ml_collections
  methods = {m for m in dir(ml_collections.ConfigDict) if not m.startswith('_')}
  shadowed = []

  def walk(node, path):
    for key in node.keys():
      if key in methods:
        shadowed.append(path + key)
      if isinstance(node[key], ml_collections.ConfigDict):
        walk(node[key], f'{path}{key}.')

  walk(base.get_config(), 'config.')
  assert not shadowed
  assert 'values' in methods   # the trap is real
