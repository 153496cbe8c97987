"""What the tests of the content-term encodings (tests/test_shaw.py,
test_fox.py, test_cope.py) share: a minimal config.model, random q and k,
the whole sequence as one tile, and a tiny model with the encoding built
and (CoPE) its embeddings given values."""

import jax.numpy as jnp
import ml_collections
import numpy as np

from lmx import positions as P
from lmx.positions.base import Tile


def model_cfg(position, num_heads=2, d_model=8, **fields):
  c = ml_collections.ConfigDict()
  c.position = position
  c.num_heads = num_heads
  c.d_model = d_model
  c.attention = 'dense'
  for name, encoding in P.REGISTRY.items():
    c[name] = encoding.default_config()
  for path, value in fields.items():
    section, key = path.split('__')
    c[section][key] = value
  return c


def qk(b, t, h, k, seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(b, t, h, k)), jnp.float32)
  kk = jnp.asarray(rng.normal(size=(b, t, h, k)), jnp.float32)
  return q, kk


def tile(term, q, k, pos, k_idx=None):
  """The whole sequence as one tile (what the dense backend passes)."""
  t = q.shape[1]
  logits = jnp.einsum('bthk,bshk->bhts', q, k) * q.shape[-1] ** -0.5
  visible = jnp.tril(jnp.ones((t, t), bool))
  idx = jnp.arange(t, dtype=jnp.int32) if k_idx is None else k_idx
  return Tile(q, k, pos, pos, term.q_side, term.k_side, logits, visible, idx)




def built(position, seed=0, **fields):
  from configs import base
  from lmx.config import validate as config_lib
  from lmx.model import transformer as model_lib
  c = base.get_config('size=tiny')
  c.model.position = position
  c.update_from_flattened_dict(
      {'model.' + k.replace('__', '.'): v for k, v in fields.items()})
  config_lib.validate(c)
  model = model_lib.build(c.model, seed=0)
  if position == 'cope':
    rng = np.random.default_rng(seed)
    for block in model.blocks:
      emb = block.attn.position.emb
      emb[...] = jnp.asarray(rng.normal(size=emb.shape), jnp.float32)
  return model


def tokens(b, t, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(0, 257, (b, t)), jnp.int32)
