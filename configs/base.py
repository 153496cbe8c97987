"""The base of every config file: lmx's defaults (``lmx/config/defaults.py``), a
byte-level LM on the Python stdlib.

Each ``configs/<name>.py`` imports ``get_config`` from here and changes only
what differs. Variants are chosen with an argument after a colon:

    python train.py --config=configs/alibi.py            # default size
    python train.py --config=configs/alibi.py:size=tiny  # seconds, for tests

and any field can be overridden on the command line, e.g.
``--config.train.steps=50 --config.model.position=rope``. An unknown key or
a malformed argument after the colon is an error that names the valid keys.
"""

import ml_collections

from lmx.config import defaults
from lmx.config.defaults import ARG_KEYS, SIZES, get_config, parse_arg

__all__ = ['ARG_KEYS', 'SIZES', 'encoding_config', 'get_config', 'layered_config',
           'parse_arg']

LAYERS_KEY = {'layers': 'the depth (config.model.num_layers) the per-layer '
                        'structure is built for, e.g. layers=8'}


def layered_config(position: str, arg: str | None, name: str
                   ) -> ml_collections.ConfigDict:
  """``encoding_config`` for a file whose per-layer structure
  (``config.model.layers``) depends on the depth: the argument also takes
  ``layers=N``, and ``config.model.layers.num_layers`` records the depth the
  file builds its tuples for, so an override of config.model.num_layers is
  refused instead of silently repeating them (``lmx.model.layer_plan``)."""
  args = parse_arg(arg, {**ARG_KEYS, **LAYERS_KEY})
  layers = args.pop('layers', None)
  c = encoding_config(position, ','.join(f'{k}={v}' for k, v in args.items())
                      or None, name=name)
  if layers is not None:
    if not layers.isdigit() or int(layers) < 1:
      raise defaults.ConfigError(
          f'layers={layers!r} in the config argument {arg!r} must be a '
          'positive integer (the depth), e.g. layers=8.')
    c.model.num_layers = int(layers)
  c.model.layers.num_layers = c.model.num_layers
  return c


def encoding_config(position: str, arg: str | None = None, *,
                    name: str | None = None,
                    sampling: str = 'contiguous') -> ml_collections.ConfigDict:
  """The base config for one encoding and one training position sampling.

  Randomized and shifted sampling draw from [0, 16 x seq_len), enough for the
  default evaluation lengths (up to 16x).
  """
  c = defaults.get_config(arg)
  c.name = name or position
  c.model.position = position
  c.positions.train = sampling
  if sampling != 'contiguous':  # follows --config.train.seq_len overrides
    c.positions.max_position = c.train.get_ref('seq_len') * 16
  return c
