"""A new method of any family is one definition and one registry line: a toy
member of each family (an encoding, a RoPE scaling, a length scaling, a far
branch, a position sampler), registered from outside lmx, is configured,
validated, built and run without any other file changing."""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import base
from lmx import positions
from lmx.config import validate as config_lib
from lmx.config.fields import Field, require
from lmx.data import windows
from lmx.errors import ConfigError
from lmx.model import transformer as model_lib
from lmx.positions import far
from lmx.positions import length_scaling
from lmx.positions import rope_scaling
from lmx.positions import sampling
from lmx.positions.base import PositionEncoding, relative_distance


class ToyBias(positions.PositionEncoding):
  """A relative bias ``-slope * |q - k|`` with one setting."""

  @classmethod
  def default_config(cls):
    import ml_collections  # pylint: disable=g-import-not-at-top
    return ml_collections.ConfigDict({'slope': 0.5})

  @classmethod
  def check(cls, model_cfg):
    super().check(model_cfg)
    cls.fields(model_cfg).float('toy_bias.slope', 0.0)

  def __init__(self, cfg, *, rngs):
    super().__init__(cfg, rngs=rngs)
    self.slope = float(cfg.toy_bias.slope)

  def bias(self, q_positions_BxT, k_positions_BxS):
    d = positions.relative_distance(q_positions_BxT, k_positions_BxS)
    b = -self.slope * jnp.abs(d).astype(jnp.float32)
    return jnp.broadcast_to(b[:, None], (d.shape[0], self.num_heads)
                            + d.shape[1:])


class Halve(rope_scaling.Scaling):
  """Every frequency halved, whatever the length."""
  name = 'toy_halve'
  summary = 'every frequency halved'
  needs_original_len = False

  def inv_freq(self, rope_cfg, head_dim, theta, positions):
    return rope_scaling.rope_inv_freq(head_dim, theta) / 2.0


@dataclasses.dataclass(frozen=True)
class Double(length_scaling.LengthScaling):
  """The queries times ``toy_factor``."""
  FIELDS: ClassVar[dict[str, Field]] = {
      'toy_factor': Field(2.0, 'the queries times it', positive=True)}
  scales_queries: ClassVar[bool] = True
  toy_factor: float = 2.0

  def query_scale(self, q_pos_BxT):
    return jnp.full(q_pos_BxT.shape, self.toy_factor, jnp.float32)


class Cap(far.Member):
  """Every distance from ``limit`` on scored at ``limit`` (a clamp)."""
  name = 'toy_cap'
  FIELDS = {'limit': Field(0, 'the cap (0: off)', lo=0)}
  switch = 'limit'
  far_switch = 'limit'
  summary = 'the toy cap'

  @classmethod
  def check(cls, model_cfg, used):
    require(int(model_cfg.toy_cap.limit) >= 2,
            'config.model.toy_cap.limit must be at least 2.')

  @classmethod
  def far(cls, model_cfg):
    return far.Clamp(int(model_cfg.toy_cap.limit))


class Strided(sampling.Sampler):
  """Every second position: ``0, 2, 4, ...``."""

  @classmethod
  def draw(cls, batch, length, max_position, rng, section):
    return np.broadcast_to(2 * np.arange(length, dtype=np.int32),
                           (batch, length)).copy()

  @classmethod
  def bound(cls, positions_cfg, length):
    return 2 * length - 1

  @classmethod
  def span(cls, positions_cfg, length):
    return 2 * length - 1


@pytest.fixture
def toys(monkeypatch):
  """Each toy in its family's registry (one line each), for this test."""
  monkeypatch.setitem(positions.REGISTRY, 'toy_bias', ToyBias)
  monkeypatch.setitem(rope_scaling.SCALINGS, Halve.name, Halve())
  monkeypatch.setitem(length_scaling.REGISTRY, 'toy_double', Double)
  monkeypatch.setitem(far.REGISTRY, Cap.name, Cap)
  monkeypatch.setitem(sampling.REGISTRY, 'toy_strided', Strided)


def _config(**fields):
  c = base.get_config('size=tiny')
  c.model.d_model, c.model.num_heads, c.model.num_layers = 16, 2, 2
  c.train.seq_len = 16
  for path, value in fields.items():
    node = c
    *parents, leaf = path.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _logits(c, t=16):
  config_lib.validate(c)
  m = model_lib.build(c.model, 0)
  tokens = jnp.asarray(np.arange(t)[None] % 250, jnp.int32)
  pos = sampling.sample_positions(c.positions.train, 1, t,
                                  c.positions.max_position,
                                  np.random.default_rng(0), c.positions)
  return m, np.asarray(m(tokens, jnp.asarray(pos)))


def test_every_toy_member_is_configured_validated_and_run(toys):
  # Their sections and settings come from the registries alone.
  c = _config()
  assert c.model.toy_bias.slope == 0.5 and c.model.toy_cap.limit == 0
  assert c.model.length_scaling.toy_factor == 2.0
  c = _config(**{'model.position': 'toy_bias',
                 'model.length_scaling.kind': 'toy_double',
                 'model.toy_cap.limit': 4,
                 'positions.train': 'toy_strided'})
  m, got = _logits(c)
  assert np.all(np.isfinite(got))
  spec = m.blocks[0].attn.spec
  assert spec.scaling == Double(2.0) and spec.far == far.Clamp(4)
  assert isinstance(m.blocks[0].attn.position, ToyBias)
  # Each member acts: switching it off changes the logits.
  for path, off in (('model.length_scaling.kind', 'off'),
                    ('model.toy_cap.limit', 0),
                    ('positions.train', 'contiguous'),
                    ('model.toy_bias.slope', 0.0)):
    other = _config(**{'model.position': 'toy_bias',
                       'model.length_scaling.kind': 'toy_double',
                       'model.toy_cap.limit': 4,
                       'positions.train': 'toy_strided', path: off})
    assert not np.allclose(_logits(other)[1], got), path
  # The RoPE scaling, on a rotary model.
  plain = _logits(_config(**{'model.position': 'rope'}))[1]
  halved = _logits(_config(**{'model.position': 'rope',
                              'model.rope.scaling': Halve.name,
                              'model.rope.factor': 2.0}))[1]
  assert not np.allclose(plain, halved)
  # A training batch draws the toy sampler's positions.
  batch = windows.train_batch(np.arange(400) % 250, seed=0, step=0, batch=2,
                              seq_len=8, sampling='toy_strided',
                              max_position=64)
  np.testing.assert_array_equal(batch['positions'][0], 2 * np.arange(8))


def test_toy_members_check_their_own_rules_and_the_generic_ones(toys):
  with pytest.raises(ConfigError, match='toy_cap.limit must be at least 2'):
    config_lib.validate(_config(**{'model.toy_cap.limit': 1}))
  # Two far branches at once: the generic rule names both switches.
  with pytest.raises(ConfigError, match='toy_cap.limit.*both rescore'):
    config_lib.validate(_config(**{'model.toy_cap.limit': 4,
                                   'model.self_extend.window': 4}))
  with pytest.raises(ConfigError, match='length_scaling.toy_factor'):
    config_lib.validate(_config(**{
        'model.length_scaling.kind': 'toy_double',
        'model.length_scaling.toy_factor': -1.0}))
  # A sampler's length rule comes from its own bound.
  c = _config(**{'positions.train': 'toy_strided',
                 'positions.max_position': 16})
  assert config_lib.position_bound(c, 'toy_strided', 16) == 31


def test_a_toy_model_trains_one_step(toys):
  c = _config(**{'model.position': 'toy_bias',
                 'model.length_scaling.kind': 'toy_double',
                 'model.toy_cap.limit': 4})
  config_lib.validate(c)
  m = model_lib.build(c.model, 0)
  graphdef, params = nnx.split(m, nnx.Param)
  tokens = jnp.asarray(np.arange(32).reshape(2, 16) % 250, jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(16), (2, 16))

  def loss(params):
    model = nnx.merge(graphdef, params)
    return model_lib.token_losses(model, tokens, pos, tokens).mean()

  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  assert np.isfinite(float(value))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


# ------------------------------------------------ an encoding, in detail


class HalfDistance(PositionEncoding):
  """A toy relative bias: ``-strength * |i - j|`` for every head."""

  @classmethod
  def default_config(cls):
    return ml_collections.ConfigDict({'strength': 0.5})

  def __init__(self, cfg, *, rngs):
    super().__init__(cfg, rngs=rngs)
    self.strength = float(cfg.half_distance.strength)

  def bias(self, q_positions_BxT, k_positions_BxS):
    d = jnp.abs(relative_distance(q_positions_BxT, k_positions_BxS))
    return -self.strength * d[:, None].astype(jnp.float32)


@pytest.fixture
def registered(monkeypatch):
  monkeypatch.setitem(positions.REGISTRY, 'half_distance', HalfDistance)


def test_a_registered_encoding_is_configurable_and_runs(registered):
  from configs import base
  c = base.get_config('size=tiny')
  assert c.model.half_distance.strength == 0.5   # its section appears
  c.model.position = 'half_distance'
  config_lib.validate(c)
  model = model_lib.build(c.model, seed=0)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 257, (2, 10)),
                       jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(10, dtype=jnp.int32), (2, 10))
  logits = model(tokens, pos)
  assert logits.shape == (2, 10, 257)
  # Its bias is really used: a different strength changes the logits.
  c.model.half_distance.strength = 5.0
  other = model_lib.build(c.model, seed=0)(tokens, pos)
  assert float(jnp.abs(other - logits).max()) > 1e-3
  # ...and, being relative, it is shift invariant through the whole model.
  np.testing.assert_allclose(model(tokens, pos + 40), logits, atol=1e-4)


def test_unregistered_name_is_still_refused():
  from configs import base
  c = base.get_config('size=tiny')
  c.model.position = 'half_distance'
  with pytest.raises(config_lib.ConfigError, match='Valid names'):
    config_lib.validate(c)


class Gentle(HalfDistance):
  """HalfDistance with a rule of its own: a strength of at most 1."""

  @classmethod
  def check(cls, model_cfg):
    super().check(model_cfg)
    strength = cls.fields(model_cfg).float('half_distance.strength', 0.0)
    if strength > 1.0:
      raise config_lib.ConfigError(
          f'config.model.half_distance.strength={strength} is above 1: '
          'Gentle biases are gentle. Lower it.')


def test_a_registered_encodings_own_check_reaches_validate(monkeypatch):
  from configs import base
  monkeypatch.setattr(positions, 'REGISTRY', dict(positions.REGISTRY))
  positions.register('half_distance', Gentle)   # at runtime, no file touched
  c = base.get_config('size=tiny')
  c.model.position = 'half_distance'
  config_lib.validate(c)
  c.model.half_distance.strength = 3.0
  with pytest.raises(config_lib.ConfigError,
                     match='strength=3.0 is above 1: Gentle'):
    config_lib.validate(c)
  c = ml_collections.ConfigDict(c.to_dict(), type_safe=False)
  c.model.half_distance.strength = 'strong'   # the shared field checks too
  with pytest.raises(config_lib.ConfigError,
                     match='half_distance.strength must be a finite number'):
    config_lib.validate(c)
  with pytest.raises(TypeError, match='not a PositionEncoding'):
    positions.register('bad', object)
