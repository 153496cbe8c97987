"""The published setups of configs/recipes: each full recipe validates and
has the parameters its paper states (within 15%); each ``:smoke`` variant
trains two steps on the CPU."""

import importlib

import numpy as np
import pytest

from lmx import memory
from lmx.training import checkpoint
from lmx.config import validate as config_lib
from lmx.training import trainer
from lmx.errors import ConfigError

# (module, argument, key of its PAPER figures or None for the top level)
RECIPES = [('alibi_wt103', 'L=512', None), ('alibi_wt103', 'L=3072', None),
           ('kerple_owt2', '', None), ('sandwich_owt2', '', None),
           ('fire_c4', 'size=base', 'base'), ('fire_c4', 'size=large', 'large'),
           ('gpt', 'size=125m', '125m'), ('gpt', 'size=350m', '350m')]
MODULES = sorted({m for m, _, _ in RECIPES})


def _module(name):
  return importlib.import_module(f'configs.recipes.{name}')


@pytest.mark.parametrize('name,arg,key', RECIPES)
def test_a_full_recipe_validates_and_has_the_papers_size(name, arg, key):
  m = _module(name)
  c = m.get_config(arg)
  config_lib.validate(c)
  paper = m.PAPER[key] if key else m.PAPER
  assert m.paper(arg) == paper
  count = memory.param_count(c)
  assert abs(count / paper['params'] - 1) < 0.15, (count, paper['params'])
  assert paper['tokens'] > 0 and m.PAPER['section']
  assert c.data.source != 'stdlib' and c.data.tokenizer == 'sentencepiece'
  assert c.model.vocab_size == c.data.sentencepiece.vocab_size


def test_every_recipe_file_is_tested():
  import os  # pylint: disable=g-import-not-at-top
  folder = os.path.dirname(_module('gpt').__file__)
  files = {f[:-3] for f in os.listdir(folder)
           if f.endswith('.py') and f != '__init__.py'}
  assert files == set(MODULES)


def test_a_bad_recipe_argument_names_the_valid_ones():
  with pytest.raises(ConfigError, match='L=512 and L=3072'):
    _module('alibi_wt103').get_config('L=1024')
  with pytest.raises(ConfigError, match='size=base and size=large'):
    _module('fire_c4').get_config('size=xl')
  with pytest.raises(ConfigError, match='smoke'):
    _module('kerple_owt2').get_config('steps=3')


def test_every_smoke_variant_trains_two_steps(tiny_config, tmp_path):
  cache = tiny_config().data.cache_dir
  for name in MODULES:
    c = _module(name).get_config('smoke')
    assert c.data.source == 'stdlib' and c.model.d_model <= 32
    c.data.cache_dir = cache
    workdir = str(tmp_path / name)
    metrics = trainer.train(c, workdir, progress=False)
    assert checkpoint.latest_step(workdir) == 2, name
    assert np.isfinite(metrics['loss']), name
