"""Decoding speed with the KV cache: tokens/s against context length, and
LM-Infinite's bounded cache against the full one.

    python bench/decode.py                      # CPU: a few minutes
    python bench/decode.py --out=decode.json    # also write JSON
    JAX_PLATFORMS=cuda python bench/decode.py --long_context=131072

For each config (default size, freshly initialised parameters, batch 1) and
each context length C, a cache holding C tokens is decoded from, one token
per call of the jitted step that ``lmx.model.decoding.generate`` uses (greedy, so
the time is the model's, not the sampler's): ``--steps`` tokens per repeat,
the median over ``--repeats`` after one warm-up repeat.

The cache is filled with random keys and values at the slots of the C
tokens (``--prefill`` fills it with a real prefill of random tokens
instead): a decoding step attends densely over every slot of the cache, so
its cost depends on the number of slots, never on their contents, and a
32k-token prefill of the full cache would take longer on a CPU than
everything else here.

The LM-Infinite comparison decodes at ``--long_context`` tokens with the
Lambda-shaped mask (``n_global=10``, ``n_local`` = the training length,
``distance_limit = n_global + n_local``, the smallest lmx accepts), whose
cache is a ring of ``n_global + n_local`` slots,
against the plain model with the full cache. The LM-Infinite paper (Han et
al. 2023) reports a 2.72x decoding speedup for its own models, lengths and
hardware; the number here is printed beside it, not as the same experiment.
"""

import json
import os
import platform
import statistics
import sys
import time
import types
from typing import Sequence

from absl import app, flags, logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp

from configs import base  # pylint: disable=g-import-not-at-top
from lmx import cli
from lmx.config import validate as config_lib
from lmx.model import decoding
from lmx.model import kv_cache
from lmx.model import transformer as model_lib
from lmx.training import run_state
from lmx.errors import ConfigError

PAPER_SPEEDUP = 2.72  # LM-Infinite (Han et al. 2023), decoding speedup


def make_config(name: str, size: str, dtype: str, lm_infinite=None):
  config = base.encoding_config(name, f'size={size}')
  config.model.dtype = dtype
  if lm_infinite:
    for key, value in lm_infinite.items():
      config.model.lm_infinite[key] = value
  config_lib.validate(config)
  return config


def filled_cache(model, context: int, capacity: int, seed: int = 0) -> dict:
  """The cache as it is after ``context`` tokens: their slots (the model's
  own rule, ring included) hold random keys and values."""
  cache = model.init_cache(1, capacity)
  c = cache['idx'].shape[0]
  idx = jnp.arange(context, dtype=jnp.int32)
  slots = kv_cache.slots(model.blocks[0].attn.mask, idx, context - 1, c)
  rng = jax.random.PRNGKey(seed)
  keys = jax.random.split(rng, 2 * len(cache['k']))
  shape = cache['k'][0].shape
  rand = lambda k: jax.random.normal(k, shape, cache['k'][0].dtype)
  return {'k': [rand(k) for k in keys[::2]], 'v': [rand(k) for k in keys[1::2]],
          'pos': cache['pos'].at[:, slots].set(idx[None], mode='drop'),
          'idx': cache['idx'].at[slots].set(idx, mode='drop'),
          'next': jnp.asarray(context, jnp.int32)}


def time_decoding(config, context: int, steps: int, repeats: int,
                  prefill: bool) -> dict:
  """Seconds per decoded token (median over repeats) with ``context`` tokens
  already in the cache."""
  graphdef, params = run_state.init_model(config)
  model = model_lib.build(config.model, config.seed)
  capacity = context + steps * (repeats + 1)
  slots = model.cache_capacity(capacity)
  prefill_s = None
  if prefill:
    cache = model.init_cache(1, capacity)
    prompt = jax.random.randint(jax.random.PRNGKey(1), (1, context), 0, 256)
    pos = jnp.arange(context, dtype=jnp.int32)[None]
    fn = decoding.prefill_fn(graphdef)
    t0 = time.perf_counter()
    logits, cache = fn(params, cache, prompt, pos)
    logits.block_until_ready()
    prefill_s = time.perf_counter() - t0  # includes compilation
  else:
    cache = filled_cache(model, context, capacity)
  del model
  step = decoding.step_fn(graphdef, 0, True)
  temperature = jnp.float32(1.0)
  token = jnp.zeros((1,), jnp.int32)
  position = context
  times = []
  for r in range(repeats + 1):  # the first repeat compiles: not counted
    t0 = time.perf_counter()
    for _ in range(steps):
      token, _, cache = step(params, cache, token,
                             jnp.full((1,), position, jnp.int32),
                             decoding.token_key(0, position), temperature)
      position += 1
    token.block_until_ready()
    if r:
      times.append((time.perf_counter() - t0) / steps)
  per_token = statistics.median(times)
  return {'context': context, 'cache_slots': int(slots),
          'ms_per_token': 1e3 * per_token, 'tokens_per_s': 1.0 / per_token,
          'repeats_ms_per_token': [1e3 * t for t in times],
          'prefill_s_with_compile': prefill_s}


def _define_flags() -> dict:
  """The command's flags; defined only when it runs as a program, so
  importing this module defines none."""
  return {
      'configs': flags.DEFINE_list('configs', 'rope,alibi', None),
      'contexts': flags.DEFINE_list('contexts', '1024,8192', None),
      'long_context': flags.DEFINE_integer('long_context', 32768, None),
      'n_global': flags.DEFINE_integer('n_global', 10, None),
      'size': flags.DEFINE_string('size', 'default', None),
      'dtype': flags.DEFINE_enum('dtype', 'float32', ('float32', 'bfloat16'),
                                 None),
      'steps': flags.DEFINE_integer('steps', 32, 'tokens per repeat'),
      'repeats': flags.DEFINE_integer('repeats', 5, None),
      'prefill': flags.DEFINE_bool(
          'prefill', False,
          'fill the cache by a real prefill of random tokens'),
      'out': flags.DEFINE_string('out', None, 'write the results as JSON'),
  }


def main(argv: Sequence[str], fl: dict) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # as before app.run: warnings only
  args = types.SimpleNamespace(**{k: f.value for k, f in fl.items()})
  try:
    contexts = cli.int_list(args.contexts, '--contexts') or []
  except ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2

  device = jax.devices()[0]
  env = {'device': f'{device.platform}: {device.device_kind}',
         'jax': jax.__version__, 'machine': platform.machine(),
         'cpus': os.cpu_count(), 'size': args.size, 'dtype': args.dtype,
         'steps': args.steps, 'repeats': args.repeats,
         'fill': 'prefill' if args.prefill else 'random'}
  print(f'# decoding, batch 1, {env["device"]}, {args.size} size, '
        f'{args.dtype}; median of {args.repeats} x {args.steps} tokens',
        flush=True)

  rows = []
  for name in args.configs:
    for context in contexts:
      r = time_decoding(make_config(name, args.size, args.dtype), context,
                        args.steps, args.repeats, args.prefill)
      rows.append({'config': name, **r})
      print(f'  {name} @ {context}: {r["tokens_per_s"]:.1f} tokens/s',
            file=sys.stderr, flush=True)

  base_cfg = make_config('rope', args.size, args.dtype)
  train_len = int(base_cfg.train.seq_len)
  # lmx refuses n_global + n_local > distance_limit (config.validate): the
  # smallest limit it accepts with n_local = the training length.
  lm = {'n_global': args.n_global, 'n_local': train_len,
        'distance_limit': args.n_global + train_len}
  full = time_decoding(base_cfg, args.long_context, args.steps, args.repeats,
                       args.prefill)
  bounded = time_decoding(make_config('rope', args.size, args.dtype, lm),
                          args.long_context, args.steps, args.repeats,
                          args.prefill)
  speedup = full['ms_per_token'] / bounded['ms_per_token']

  lines = ['', '| config | context | cache slots | ms / token | tokens / s |',
           '|---|---:|---:|---:|---:|']
  for r in rows:
    lines.append(f'| {r["config"]} | {r["context"]} | {r["cache_slots"]} | '
                 f'{r["ms_per_token"]:.2f} | {r["tokens_per_s"]:.1f} |')
  lines += ['', f'LM-Infinite at a {args.long_context}-token context (rope, '
            f'n_global={lm["n_global"]}, n_local={lm["n_local"]}, '
            f'distance_limit={lm["distance_limit"]}):',
            '', '| cache | cache slots | ms / token | tokens / s |',
            '|---|---:|---:|---:|']
  for label, r in (('full', full), ('LM-Infinite (bounded)', bounded)):
    lines.append(f'| {label} | {r["cache_slots"]} | {r["ms_per_token"]:.2f} '
                 f'| {r["tokens_per_s"]:.1f} |')
  lines += ['', f'Speedup of the bounded cache: {speedup:.1f}x here; the '
            f'LM-Infinite paper reports {PAPER_SPEEDUP}x decoding speedup for '
            'its own models, lengths and hardware (not the same setting).']
  print('\n'.join(lines))
  if args.out:
    with open(args.out, 'w') as f:
      json.dump({'env': env, 'decode': rows,
                 'lm_infinite': {'context': args.long_context, 'full': full,
                                 'bounded': bounded, 'speedup': speedup,
                                 'paper_speedup': PAPER_SPEEDUP,
                                 'settings': lm}}, f, indent=2)
  return 0


if __name__ == '__main__':
  _FLAGS = _define_flags()
  app.run(lambda argv: main(argv, _FLAGS), flags_parser=cli.parse_flags)
