"""One RoPE checkpoint evaluated with every inference-time extension.

    python -m lmx.evaluation.extensions --workdir=runs/rope [--lengths=64,256,1024]

loads a trained run of a scalable encoding (``rope``) and measures the loss
against length with no extension and with each RoPE frequency scaling of
``lmx.positions.rope_scaling`` (Position Interpolation, NTK-aware, dynamic
NTK, NTK-by-parts, YaRN, Llama 3), with ReRoPE and Leaky ReRoPE, and with
LM-Infinite, without any training. Each length ``n`` gets the scale factor
``s = n / L`` (``L`` the training length) relative to ``L``; at ``n <= L``
the static scalings are plain RoPE by definition. The attention-side methods
act at every length:

* ``rerope``: distances clamped at ``w = L/2``;
* ``leaky_rerope``: ``w = L/2`` and leak ``(L - w) / (n - w)``, so the
  longest distance of a length-``n`` window maps to ``L`` (plain RoPE at
  ``n <= L``);
* ``rerope_logn``: ReRoPE at ``w = L/2`` with log-n query scaling relative to
  ``L``, as the ReRoPE author's patch runs it;
* ``self_extend``: Self-Extend with the neighbour window ``W = L/2`` and the
  smallest group ``G`` whose largest grouped distance,
  ``(n - 1) // G + W - W // G``, stays below ``L`` (off at ``n <= L``);
* ``lm_infinite``: ``n_global = 10``, ``n_local = L - 10`` and the distance
  limit ``L`` (the paper's 10 global tokens; ``n_global + n_local <= L``).
* ``dca``: Dual Chunk Attention with the released code's chunk length
  ``3L/4 - L/8`` and local window ``L/8`` (``lmx.positions.dca``);
* ``string``: STRING with ``W = min(128, L/8)`` and ``S = int(0.33 n)``,
  raised to ``n - L + W`` where the largest shifted distance would pass
  ``L - 1`` (``lmx.positions.string_shift``).

``longrope`` is one of the scalings; without LongRoPE's evolutionary
search its long factors are the search's starting point, YaRN's per-pair
ratios at ``s = n / L`` (``rope_scaling.LongRoPE.for_length``).

The methods are a registry (``REGISTRY``): the scalings come from
``rope_scaling.SCALINGS``, the attention-side methods are defined here, and
each is one small definition that sets a run's config up for a length.

Writes
``<workdir>/extensions/``: ``results.json``, ``results.csv`` and
``loss_vs_length.png`` (small multiples: each method in its own panel
beside plain RoPE, on one loss scale, training length marked).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import os
import sys
from collections.abc import Callable, Sequence

import ml_collections
from absl import app, flags

from lmx.training import checkpoint
from lmx import cli
from lmx.config import validate as config_lib
from lmx.evaluation import runner as evaluation
from lmx import fs
from lmx.evaluation import plots
from lmx import positions
from lmx.training import run_state
from lmx.data import store, subword, windows
from lmx.errors import CheckpointError, ConfigError, DataError
from lmx.positions import far
from lmx.positions import rope_scaling

@dataclasses.dataclass(frozen=True)
class Method:
  """An inference-time extension: ``setup(model_cfg, train_len, length)``
  edits ``config.model`` (a copy of the run's) to evaluate a model trained
  at ``train_len`` on windows of ``length``."""
  name: str
  summary: str
  setup: Callable[[ml_collections.ConfigDict, int, int], None]


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
  REGISTRY[method.name] = method
  return method


# Every RoPE scaling, then every extension a far branch or mask offers
# (``lmx.positions.far``): the methods are registry entries of those
# families, set up by the entries themselves.
for _s in rope_scaling.SCALINGS.values():
  register(Method(_s.name, _s.summary,
                  functools.partial(rope_scaling.configure, name=_s.name)))
for _m in far.REGISTRY.values():
  for _name, (_summary, _options) in _m.EXTENSIONS.items():
    register(Method(_name, _summary,
                    functools.partial(_m.configure, **_options)))
METHODS = tuple(REGISTRY)


def method_config(config: ml_collections.ConfigDict, method: str,
                  length: int) -> ml_collections.ConfigDict:
  """The run's config with ``method`` set up for evaluation at ``length``:
  plain RoPE first (whatever scaling the run had), then the method."""
  c = ml_collections.ConfigDict(config.to_dict())
  train_len = int(config.train.seq_len)
  rope_scaling.configure(c.model, train_len, length, rope_scaling.NONE)
  REGISTRY[method].setup(c.model, train_len, length)
  c.eval.sliding = False
  return c


def compare(workdir: str, lengths: Sequence[int] | None = None,
            out_dir: str | None = None, step: int | None = None,
            methods: Sequence[str] = METHODS, plots: bool = True) -> dict:
  """Loss against length for every method; writes JSON, CSV and a plot."""
  config = checkpoint.read_config(workdir)
  out_dir = cli.output_dir(out_dir or os.path.join(workdir, 'extensions'),
                           '--out' if out_dir else 'The extensions folder')
  if not positions.get_encoding(config.model.position).scalable:
    raise ConfigError(
        f'{workdir} holds a {config.model.position!r} model; the RoPE '
        'extensions apply to a model whose encoding follows the RoPE '
        'scalings (train one with --config.model.position=rope).')
  if not methods:
    raise ConfigError(f'--methods names no method: give one or more of '
                      f'{", ".join(METHODS)}.')
  if lengths is not None:
    lengths = cli.int_list([str(n) for n in lengths], '--lengths')
  unknown = [m for m in methods if m not in REGISTRY]
  if unknown:
    raise ConfigError(
        f'Unknown extension(s) {", ".join(unknown)}; valid: '
        f'{", ".join(METHODS)}.')
  train_len = int(config.train.seq_len)
  lengths = sorted(set(lengths or [m * train_len
                                   for m in config.eval.multipliers]))
  for m in methods:  # every configuration is valid before any compile
    for n in lengths:
      config_lib.validate(method_config(config, m, n))
  checkpoint.require_checkpoint(workdir, step)
  tok = subword.for_run(config, workdir)
  stream = store.open_split(config.data, 'validation', tok)
  byte_lengths = None if tok.kind == 'bytes' else tok.byte_lengths
  for n in lengths:
    windows.eval_windows(stream, n, config.eval.tokens)
  _, params, step = run_state.load_params(config, workdir, step)
  rows, done = [], {}
  for m in methods:
    for n in lengths:
      c = method_config(config, m, n)
      # At n <= L the static scalings are plain RoPE: computed once.
      key = (c.model.to_json(), n)
      if key not in done:
        graphdef, _ = run_state.abstract_model(c)
        done[key] = evaluation.loss_at_length(
            evaluation.make_loss_fn(graphdef), params, c, stream, n,
            byte_lengths)
      r = done[key]
      rows.append({'method': m, 'length': n,
                   'factor': rope_scaling.factor_of(c.model),
                   'loss': r['loss'], 'perplexity': r['perplexity'],
                   'bits_per_byte': r['bits_per_byte']})
      print(f'{m:>13} {n:>6}: loss {r["loss"]:.4f}', flush=True)
  results = {'workdir': os.path.abspath(workdir), 'step': step,
             'train_length': train_len, 'methods': list(methods),
             'lengths': lengths, 'results': rows}
  checkpoint.make_writable_dir(out_dir, '--out', ConfigError)
  # Each file whole or not at all: a crash leaves the previous results.
  table = io.StringIO()
  w = csv.DictWriter(table, list(rows[0]))
  w.writeheader()
  w.writerows(rows)
  evaluation.write_json(os.path.join(out_dir, 'results.json'), results)
  fs.write_atomic(os.path.join(out_dir, 'results.csv'), table.getvalue())
  if plots:
    plot(results, os.path.join(out_dir, 'loss_vs_length.png'))
  return results


def format_table(results: dict) -> str:
  lengths = results['lengths']
  t = results['train_length']
  by = {(r['method'], r['length']): r['loss'] for r in results['results']}
  lines = ['| method | ' + ' | '.join(f'{n} ({n / t:g}x)' for n in lengths)
           + ' |', '|---|' + '---:|' * len(lengths)]
  for m in results['methods']:
    lines.append(f'| {m} | ' + ' | '.join(f'{by[(m, n)]:.4f}'
                                          for n in lengths) + ' |')
  return '\n'.join(lines)


def plot(results: dict, path: str) -> None:
  """Small multiples: one panel per method with its curve and plain RoPE's
  (grey), every panel on the same axes, so a dozen methods stay readable."""
  plt = plots.pyplot()
  methods = results['methods']
  t = results['train_length']
  by = {m: [r for r in results['results'] if r['method'] == m]
        for m in methods}
  plain = by.get(rope_scaling.NONE)
  cols = min(4, len(methods))
  rows = -(-len(methods) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 2.5 * rows),
                           sharex=True, sharey=True, squeeze=False)
  for ax, m in zip(axes.flat, methods):
    if plain is not None and m != rope_scaling.NONE:
      ax.plot([r['length'] for r in plain], [r['loss'] for r in plain],
              color='0.6', linestyle='--', linewidth=1.2)
    ax.plot([r['length'] for r in by[m]], [r['loss'] for r in by[m]],
            marker='o', markersize=3, color='C0')
    ax.axvline(t, color='0.3', linestyle=':', linewidth=1)
    ax.set_title(m if m != rope_scaling.NONE else f'{m} (plain RoPE)',
                 fontsize=9)
    ax.grid(True, alpha=0.3)
    plots.length_axis(ax, results['lengths'])
    ax.tick_params(labelsize=7)
  for ax in list(axes.flat)[len(methods):]:
    ax.set_visible(False)
  # Each column's lowest panel in use carries the length labels.
  for col in range(cols):
    row = max(r for r in range(rows) if r * cols + col < len(methods))
    axes[row, col].xaxis.set_tick_params(labelbottom=True)
    axes[row, col].set_xlabel('length (log scale)', fontsize=8)
  for ax in axes[:, 0]:
    ax.set_ylabel('loss (nats / byte)', fontsize=8)
  fig.suptitle(f'RoPE extensions without training (step {results["step"]}): '
               f'each method (blue) beside plain RoPE (grey dashed); dotted: '
               f'training length {t}', fontsize=10)
  fig.tight_layout(rect=(0, 0, 1, 0.96))
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _define_flags() -> dict:
  """The command's flags; defined only when it runs as ``python -m``, so
  importing this module defines none."""
  return {
      'workdir': flags.DEFINE_string('workdir', None,
                                     'Run directory of a trained rope run.'),
      'lengths': flags.DEFINE_list(
          'lengths', None, 'Evaluation lengths; default: '
          'config.eval.multipliers x the training length.'),
      'methods': flags.DEFINE_list(
          'methods', list(METHODS),
          'Methods to compare: ' + ', '.join(
              f'{m.name} ({m.summary})' for m in REGISTRY.values()) + '.'),
      'step': flags.DEFINE_integer('step', None,
                                   'Checkpoint step; default: the latest.'),
      'out': flags.DEFINE_string('out', None, 'Output directory; default '
                                 '<workdir>/extensions.'),
  }


def main(argv: Sequence[str], fl: dict) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  workdir = fl['workdir'].value
  if not workdir:
    raise app.UsageError('--workdir is required.')
  try:
    lengths = cli.int_list(fl['lengths'].value, '--lengths')
    results = compare(workdir, lengths, fl['out'].value, fl['step'].value,
                      fl['methods'].value)
  except (ConfigError, DataError, CheckpointError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(format_table(results))
  out = fl['out'].value or os.path.join(workdir, 'extensions')
  print(f'Wrote results.json, results.csv and loss_vs_length.png to {out}')


if __name__ == '__main__':
  _FLAGS = _define_flags()
  app.run(lambda argv: main(argv, _FLAGS), flags_parser=cli.parse_flags)
