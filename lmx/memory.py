"""What a run will allocate, estimated before anything is compiled.

A width or a length far beyond the machine makes XLA abort in C++ (or the
kernel kill the process) long after the command started. These estimates
are deliberately low (they count only the buffers that must exist: the
parameters, the optimizer's moments and gradients, the activations a step
keeps for its backward pass, a KV cache), so a run they refuse could not
have fitted; a run they accept may still be tight.

The limit is the memory of the accelerators JAX runs on (their
``bytes_limit``), or on CPU the host's available memory, or the
``LMX_MEMORY_LIMIT`` environment variable (bytes, or with a K/M/G/T
suffix, e.g. ``LMX_MEMORY_LIMIT=8G``) when set.
"""

from __future__ import annotations

import math
import os
import re
from typing import Optional

import jax

from lmx import trees
from lmx.model import attention
from lmx.errors import ConfigError

ENV = 'LMX_MEMORY_LIMIT'
_UNITS = {'': 1, 'K': 2**10, 'M': 2**20, 'G': 2**30, 'T': 2**40}


def _gib(n: float) -> str:
  return f'{n / 2**30:,.2f} GiB'


def limit_bytes() -> tuple[int, str]:
  """(bytes available to a run, where that number comes from)."""
  env = os.environ.get(ENV, '').strip()
  if env:
    m = re.fullmatch(r'(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?', env.upper())
    if not m:
      raise ConfigError(f'{ENV}={env!r} is not a size: give bytes, or a '
                        'number with K, M, G or T (e.g. 8G).')
    return int(float(m.group(1)) * _UNITS[m.group(2)]), f'{ENV}={env}'
  devices = jax.local_devices()
  if devices and devices[0].platform != 'cpu':
    total = 0
    for d in devices:
      stats = d.memory_stats() or {}
      total += int(stats.get('bytes_limit', 0))
    if total:
      return total, (f'the memory of {len(devices)} '
                     f'{devices[0].platform.upper()} device(s)')
  return _host_available(), 'the available host memory'


def _host_available() -> int:
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  try:
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  except (ValueError, OSError, AttributeError):
    return 2**63


def param_count(config) -> int:
  """Parameters of the model of ``config``, counted from its shapes (the
  model is traced, nothing is allocated)."""
  return sum(n for n, _ in _param_sizes(config).values())


def _param_sizes(config) -> dict:
  """``{path: (size, shape)}`` of every parameter of ``config``'s model."""
  from lmx.training import run_state  # pylint: disable=g-import-not-at-top
  _, params = run_state.abstract_model(config)
  flat, _ = jax.tree_util.tree_flatten_with_path(params)
  return {trees.path_str(path): (int(math.prod(leaf.shape)), tuple(leaf.shape))
          for path, leaf in flat}


def _itemsize(m) -> int:
  return 2 if m.dtype == 'bfloat16' else 4


def _attention_keys(m, length: int) -> int:
  """Keys a query's logits are kept for at once: all of them (dense) or a
  tile (chunked)."""
  limit = attention.dense_key_limit(attention.Spec(
      threshold=int(m.chunk_threshold),
      accelerator_threshold=int(m.accelerator_chunk_threshold)))
  dense = m.attention == 'dense' or (m.attention == 'auto' and length <= limit)
  return length if dense else min(length, int(m.attention_block))


def activation_bytes(m, rows: int, length: int, backward: bool) -> int:
  """Activations of ``rows`` sequences of ``length``: per layer the
  residual stream, q/k/v, the MLP's hidden layer and the attention logits
  (kept for the backward pass), plus the output logits in float32."""
  d, f, h, n = int(m.d_model), int(m.mlp_dim), int(m.num_heads), int(
      m.num_layers)
  tokens = rows * length
  logits = rows * h * length * _attention_keys(m, length)
  per_layer = (6 * d + f) * tokens + logits
  kept = n * per_layer if backward else 2 * per_layer
  return kept * _itemsize(m) + tokens * int(m.vocab_size) * 4 * (
      2 if backward else 1)


def _refuse(what: str, need: int, knobs: str) -> None:
  limit, source = limit_bytes()
  if need > limit:
    raise ConfigError(
        f'{what} needs at least {_gib(need)}, more than {source} '
        f'({_gib(limit)}); XLA would abort. Lower {knobs}, or set {ENV} if '
        'the estimate is wrong for this machine.')


def data_bytes(config) -> int:
  """The data path of a training run: the batch in use and the
  ``config.data.prefetch`` batches built ahead, each held on the host
  (inputs, targets, positions; int32 or float32) and on the devices. The
  token store is memory-mapped: its pages are the kernel's page cache, not
  the process's memory, and are not counted."""
  t = config.train
  batch = 3 * 4 * int(t.batch_size) * int(t.seq_len)
  return 2 * batch * (1 + int(config.data.get('prefetch', 0)))


def check_training(config) -> None:
  """ConfigError if a training step cannot fit: parameters, gradients and
  AdamW's two moments (float32), one step's activations, and the batches
  of the data path (``data_bytes``)."""
  m, t = config.model, config.train
  sizes = _param_sizes(config)
  p = sum(n for n, _ in sizes.values())
  largest = max(sizes, key=lambda k: sizes[k][0])
  rows = int(t.batch_size) // max(int(t.get('microbatches', 1)), 1)
  step = activation_bytes(m, rows, int(t.seq_len), backward=True)
  # The evaluation during training (train.eval_every) runs between steps,
  # beside the training state: its longest length's forward pass.
  from lmx.config import validate as config_lib  # pylint: disable=g-import-not-at-top
  lengths, _ = config_lib.training_eval_lengths(config)
  longest = max(lengths, default=0)
  evaluation = 0
  if longest:
    eval_rows = max(1, int(config.eval.batch_tokens) // longest)
    evaluation = activation_bytes(m, eval_rows, longest, backward=False)
  need = 4 * 4 * p + max(step, evaluation) + data_bytes(config)
  knobs = ('the fields that set that shape (config.model.d_model, mlp_dim, '
           'num_layers, vocab_size, an encoding\'s table such as '
           'config.model.learned.max_len), or config.train.batch_size or '
           'seq_len, or config.data.prefetch')
  what = (f'Training this model ({p:,} parameters, the largest {largest} '
          f'of shape {sizes[largest][1]}; batches of {t.batch_size} x '
          f'{t.seq_len} tokens, {config.data.get("prefetch", 0)} of them '
          'prefetched)')
  if evaluation > step:
    what = (f'{what[:-1]}; the evaluation during training at length '
            f'{longest}, {eval_rows} window(s) per pass)')
    knobs += (', config.train.eval_multipliers or config.eval.batch_tokens '
              '(or config.train.eval_every=0)')
  _refuse(what, need, knobs)


def check_evaluation(config, length: int) -> None:
  """ConfigError if a forward pass at ``length`` cannot fit."""
  m = config.model
  rows = max(1, int(config.eval.batch_tokens) // max(length, 1))
  need = 4 * param_count(config) + activation_bytes(m, rows, length,
                                               backward=False)
  _refuse(f'Evaluating at length {length} ({rows} window(s) per pass)',
          need, 'the evaluation lengths (--lengths, config.eval.multipliers), '
          'config.eval.batch_tokens, or use the chunked backend '
          '(config.model.attention=chunked)')


def check_cache(config, slots: int, prompt_len: int,
                what: Optional[str] = None) -> None:
  """ConfigError if a KV cache of ``slots`` (and the prompt's prefill)
  cannot fit."""
  m = config.model
  cache = 2 * int(m.num_layers) * slots * int(m.d_model) * _itemsize(m)
  prefill = activation_bytes(m, 1, max(prompt_len, 1), backward=False)
  need = 4 * param_count(config) + cache + prefill
  _refuse(what or f'A KV cache of {slots:,} tokens', need,
          '--max_new_tokens (or the prompt), or bound the cache with '
          'config.model.lm_infinite.n_local')

