"""A new encoding is one class and one registry line: nothing else changes."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lmx.config import validate as config_lib
from lmx.model import transformer as model_lib
from lmx import positions
from lmx.positions.base import PositionEncoding, relative_distance


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
