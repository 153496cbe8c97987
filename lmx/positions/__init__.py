"""Position encodings, chosen by name with ``config.model.position``.

Adding an encoding is one module in this package and one line in REGISTRY
(or, from outside the package, one ``register`` call before the config is
built): the encoding's settings, defaults, checks and math live in its
module, and nothing else in lmx names it.
"""

from lmx.positions.alibi import ALiBi, alibi_bias, alibi_slopes
from lmx.positions.base import PositionEncoding, relative_distance
from lmx.positions.cope import (CoPE, cope_interpolate, cope_positions,
                                cope_query_table)
from lmx.positions.fire import FIRE, fire_inputs, fire_mlp
from lmx.positions.fox import FoX, fox_decay, fox_log_gates, fox_prefix
from lmx.positions.keynorm import KeyNorm, keynorm_logits, normalize_keys
from lmx.positions.kerple import Kerple, kerple_log, kerple_power
from lmx.positions.learned import Learned
from lmx.positions.nope import NoPE
from lmx.positions.rope import (RoPE, apply_rope, kept_pairs, p_rope,
                                rope_angles, rope_inv_freq)
from lmx.positions.sampling import KINDS as SAMPLING_KINDS
from lmx.positions.sampling import cape_positions, sample_positions
from lmx.positions.sandwich import (Sandwich, sandwich_bias,
                                    sandwich_frequencies, sandwich_kernel,
                                    sandwich_scales)
from lmx.positions.shaw import (Shaw, shaw_distances, shaw_query_table,
                                shaw_scores, shaw_values, shaw_weight_sums)
from lmx.positions.sinusoidal import Sinusoidal, sinusoidal_table
from lmx.positions.t5 import T5Bias, t5_relative_bucket
from lmx.positions.txl import (TransformerXL, txl_inv_freq,
                               txl_position_scores, txl_relative_sinusoid)
from lmx.positions.xpos import XPos, xpos_scale, xpos_zeta

# The encoding of config.model.position unless a config chooses another.
DEFAULT = 'rope'

REGISTRY: dict[str, type[PositionEncoding]] = {
    'none': NoPE,
    'sinusoidal': Sinusoidal,
    'learned': Learned,
    't5': T5Bias,
    'alibi': ALiBi,
    'kerple': Kerple,
    'fire': FIRE,
    'sandwich': Sandwich,
    'txl': TransformerXL,
    'shaw': Shaw,
    'fox': FoX,
    'cope': CoPE,
    'xpos': XPos,
    'keynorm': KeyNorm,
    'rope': RoPE,
}


def register(name: str, encoding: type[PositionEncoding]
             ) -> type[PositionEncoding]:
  """Registers ``encoding`` as ``config.model.position=name``. Configs built
  afterwards (``lmx.config.defaults.get_config``) carry its section
  ``config.model.<name>`` with its ``default_config()``."""
  if not (isinstance(encoding, type) and issubclass(encoding, PositionEncoding)):
    raise TypeError(f'{encoding!r} is not a PositionEncoding subclass.')
  REGISTRY[name] = encoding
  return encoding


def get_encoding(name: str) -> type[PositionEncoding]:
  """The encoding class registered under ``name``."""
  try:
    return REGISTRY[name]
  except KeyError:
    raise ValueError(
        f'Unknown position encoding {name!r} (config.model.position). '
        f'Valid names: {", ".join(sorted(REGISTRY))}.') from None

__all__ = [
    'ALiBi', 'CoPE', 'DEFAULT', 'FIRE', 'FoX', 'KeyNorm', 'Kerple', 'Learned',
    'NoPE', 'PositionEncoding', 'REGISTRY', 'RoPE', 'SAMPLING_KINDS',
    'Sandwich', 'Shaw', 'Sinusoidal', 'T5Bias', 'TransformerXL', 'XPos',
    'alibi_bias', 'alibi_slopes',
    'apply_rope', 'cape_positions', 'cope_interpolate', 'cope_positions',
    'cope_query_table', 'fire_inputs', 'fire_mlp', 'fox_decay',
    'fox_log_gates', 'fox_prefix', 'get_encoding',
    'kept_pairs', 'keynorm_logits', 'normalize_keys', 'p_rope', 'register',
    'kerple_log', 'kerple_power', 'relative_distance', 'rope_angles',
    'rope_inv_freq', 'sample_positions', 'sandwich_bias',
    'sandwich_frequencies', 'sandwich_kernel', 'sandwich_scales',
    'shaw_distances', 'shaw_query_table', 'shaw_scores', 'shaw_values',
    'shaw_weight_sums',
    'sinusoidal_table', 't5_relative_bucket', 'txl_inv_freq',
    'txl_position_scores', 'txl_relative_sinusoid', 'xpos_scale', 'xpos_zeta',
]
