"""What several test files share: the tiny config with model fields set,
the fast-compile options, and decoding a sequence one token at a time with
the cache."""

import jax.numpy as jnp

from configs import base

# Compiler options for a test's jit on the CPU: compile time is most of the
# cost of the files that use them, and unoptimised XLA cuts it by about a
# third, changing no result beyond float rounding.
FAST_COMPILE = {'xla_backend_optimization_level': 0,
                'xla_llvm_disable_expensive_passes': True}


def tiny_model_config(**fields):
  """The tiny config, with the config.model fields ``fields`` names by their
  path under config.model, '__' (or '.') between the parts."""
  c = base.get_config('size=tiny')
  c.update_from_flattened_dict(
      {'model.' + k.replace('__', '.'): v for k, v in fields.items()})
  return c


def decode_steps(model, tokens, n_prompt):
  """(logits of every token decoded with the cache, the final cache): the
  prompt prefilled, then one token per ``decode`` call. Eager: the tiny ops
  compile once for the whole run, where a jit would compile every case
  anew."""
  t = tokens.shape[1]
  pos = jnp.arange(t, dtype=jnp.int32)[None]
  cache = model.init_cache(1, t)
  logits, cache = model.decode(tokens[:, :n_prompt], pos[:, :n_prompt], cache,
                               prefill=True)
  decoded = [logits]
  for i in range(n_prompt, t):
    logits, cache = model.decode(tokens[:, i:i + 1], pos[:, i:i + 1], cache)
    decoded.append(logits)
  return jnp.concatenate(decoded, axis=1), cache


def train_tiny(tmp_path_factory, cache_dir, position: str, name: str):
  """A tiny run of ``position`` trained in this process to step 4,
  checkpoints at 2 and 4, in a fresh folder named after ``name``:
  (workdir, config)."""
  from lmx.training import trainer  # pylint: disable=g-import-not-at-top
  c = base.get_config('size=tiny')
  c.model.position = position
  c.data.cache_dir = cache_dir
  c.train.steps, c.train.checkpoint_every = 4, 2
  workdir = str(tmp_path_factory.mktemp(name) / 'run')
  trainer.train(c, workdir, progress=False)
  return workdir, c
