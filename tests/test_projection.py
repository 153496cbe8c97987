"""Each position encoding projects its own parameters
(``PositionEncoding.project``, walked by ``run_state.project``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmx import positions
from lmx import trees
from lmx.training import run_state


class _Low(positions.Kerple):
  """KERPLE with its ``scale`` kept in [0.1, 0.2]."""

  @classmethod
  def param_bounds(cls, model_cfg):
    return {'scale': (0.1, 0.2)}


class _High(positions.Kerple):
  """KERPLE with its ``scale`` kept in [5, 6]: the same leaf name."""

  @classmethod
  def param_bounds(cls, model_cfg):
    return {'scale': (5.0, 6.0)}


@pytest.fixture
def two_encodings():
  positions.register('test_low', _Low)
  positions.register('test_high', _High)
  yield
  del positions.REGISTRY['test_low'], positions.REGISTRY['test_high']


def _scales(params) -> dict:
  """{layer: its encoding's scale} of a per-layer model's parameters."""
  return {path[1]: np.asarray(leaf)
          for path, leaf in trees.leaves_by_path(params).items()
          if path[-1] == 'scale' and 'position' in path}


def test_encodings_sharing_a_parameter_name_keep_their_own_bounds(
    two_encodings, tiny_config):
  c = tiny_config('test_low', **{'model.num_layers': 2})
  c.model.layers.position = ('test_low', 'test_high')
  # Built and projected: each layer's scale inside its own encoding's bounds.
  _, params = run_state.init_model(c)
  scales = _scales(params)
  assert sorted(scales) == [0, 1]
  assert ((scales[0] >= 0.1) & (scales[0] <= 0.2)).all(), scales[0]
  assert ((scales[1] >= 5.0) & (scales[1] <= 6.0)).all(), scales[1]
  # Pushed far outside, inside the jitted projection: each to its own bound.
  project = jax.jit(run_state.project(c))
  for far, low, high in ((100.0, 0.2, 6.0), (-100.0, 0.1, 5.0)):
    pushed = jax.tree_util.tree_map_with_path(
        lambda path, x, v=far: jnp.full_like(x, v)
        if trees.path_keys(path)[-1] == 'scale' else x, params)
    scales = _scales(project(pushed))
    np.testing.assert_array_equal(scales[0], np.float32(low))
    np.testing.assert_array_equal(scales[1], np.float32(high))
    # KERPLE's shape has no bound in either toy: left as it was.
    got = trees.leaves_by_path(project(pushed))
    want = trees.leaves_by_path(pushed)
    for path in got:
      if path[-1] != 'scale':
        np.testing.assert_array_equal(got[path], want[path])


def test_a_model_without_bounds_is_left_as_it_is(tiny_config):
  c = tiny_config('alibi')
  _, params = run_state.init_model(c)
  assert run_state.project(c)(params) is params


@pytest.mark.parametrize('overrides', [
    {'model.kerple.kernel': 'power'},
    {'model.kerple.kernel': 'log'},
    {'model.kerple.per_layer': True},
    {'model.layers.position': ('kerple', 'alibi')},
])
def test_one_encoding_is_projected_as_by_its_bounds_by_leaf_name(
    overrides, tiny_config):
  """Where no two encodings share a parameter name, the walk clips what
  the bounds by leaf name (the former projection) clip, by the same
  bounds."""
  c = tiny_config('kerple', **{'model.num_layers': 2, **overrides})
  bounds = positions.Kerple.param_bounds(c.model)
  _, params = run_state.init_model(c)
  pushed = jax.tree.map(lambda x: jnp.full_like(x, 50.0), params)
  want = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.clip(x, *bounds[trees.path_keys(path)[-1]])
      if 'position' in trees.path_keys(path) else x, pushed)
  got = jax.jit(run_state.project(c))(pushed)
  flat_got, flat_want = trees.leaves_by_path(got), trees.leaves_by_path(want)
  assert flat_got.keys() == flat_want.keys()
  for path, leaf in flat_want.items():
    np.testing.assert_array_equal(flat_got[path], leaf, err_msg=str(path))
  clipped = [p for p in flat_want if 'position' in p]
  assert len(clipped) == (4 if overrides.get('model.kerple.per_layer') else 2)
