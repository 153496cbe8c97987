"""Fixtures: a session-wide tfds cache and tiny configs."""

import pytest

from configs import base


@pytest.fixture(scope='session')
def cache_dir(tmp_path_factory):
  """One tfds cache for the whole session: the stdlib corpus is built once."""
  return str(tmp_path_factory.mktemp('tfds_cache'))


@pytest.fixture
def tiny_config(cache_dir):
  def make(position='rope', **overrides):
    c = base.get_config('size=tiny')
    c.model.position = position
    c.data.cache_dir = cache_dir
    c.train.log_every = 1
    c.update_from_flattened_dict(overrides)
    return c
  return make
