"""Fixtures: a session-wide tfds cache, tiny configs, a tiny run trained
once for the session, and a persistent JAX compilation cache shared by the
test run and the scripts it launches."""

import os
import warnings

import jax
import pytest

from configs import base
import helpers

# Every compile is cached, however small or quick: on the CPU the tiny
# models' steps compile in well under JAX's default threshold of a second.
COMPILATION_CACHE = {
    'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
    'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '-1',
}
READ_ERROR = 'Error reading persistent compilation cache entry'


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
  """A persistent compilation cache for the run: the test process and every
  subprocess it starts (they inherit ``os.environ``) share one folder, so a
  step compiled once is read back, not compiled again, by the next script.

  The folder is under the run's base temp folder, unless
  ``JAX_COMPILATION_CACHE_DIR`` is already set (a folder kept across runs).
  """
  path = os.environ.get('JAX_COMPILATION_CACHE_DIR') or str(
      tmp_path_factory.getbasetemp() / 'jax_compilation_cache')
  # JAX writes an entry in place: a process that reads it while another
  # writes it gets a warning on stderr (and compiles it itself), where
  # scripts' stderr is checked line by line.
  warning_filters = ','.join(filter(None, [
      os.environ.get('PYTHONWARNINGS'), f'ignore:{READ_ERROR}']))
  values = dict(COMPILATION_CACHE, JAX_COMPILATION_CACHE_DIR=path,
                PYTHONWARNINGS=warning_filters)
  saved = {k: os.environ.get(k) for k in values}
  os.environ.update(values)
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)
  with warnings.catch_warnings():
    warnings.filterwarnings('ignore', f'{READ_ERROR}.*')
    yield path
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v


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


@pytest.fixture(scope='session')
def tiny_rope_run(tmp_path_factory, cache_dir):
  """A tiny RoPE run trained in this process to step 4, checkpoints at 2 and
  4: (workdir, config). Shared by every module that reads a finished run; a
  test that changes it works on a copy (``shutil.copytree``)."""
  return helpers.train_tiny(tmp_path_factory, cache_dir, 'rope',
                            'tiny_rope_run')
