"""One RoPE checkpoint evaluated with every inference-time extension.

    python -m lmx.extensions --workdir=runs/rope [--lengths=64,256,1024]

loads a trained ``rope`` run and measures the loss against length with no
extension and with each RoPE frequency scaling of
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
* ``lm_infinite``: ``n_global = 10``, ``n_local = L - 10`` and the distance
  limit ``L`` (the paper's 10 global tokens; ``n_global + n_local <= L``).

Writes
``<workdir>/extensions/``: ``results.json``, ``results.csv`` and
``loss_vs_length.png`` (one curve per method, training length marked).
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Sequence

import ml_collections

from lmx import checkpoint
from lmx import config as config_lib
from lmx import evaluation, trainer
from lmx.data import corpus, windows

SCALINGS = ('linear', 'ntk', 'dynamic', 'ntk_by_parts', 'yarn', 'llama3')
METHODS = ('none',) + SCALINGS + ('rerope', 'leaky_rerope', 'lm_infinite')
LM_INFINITE_GLOBAL = 10


def method_config(config: ml_collections.ConfigDict, method: str,
                  length: int) -> ml_collections.ConfigDict:
  """The run's config with ``method`` set up for evaluation at ``length``."""
  c = ml_collections.ConfigDict(config.to_dict())
  train_len = int(config.train.seq_len)
  factor = length / train_len
  rope = c.model.rope
  rope.original_max_len = train_len
  if method == 'dynamic':
    # The scale follows the length of each call; the factor is its floor.
    rope.scaling, rope.factor = 'dynamic', 1.0
  elif method not in SCALINGS or factor <= 1.0:
    rope.scaling, rope.factor = 'none', 1.0
  else:
    rope.scaling, rope.factor = method, float(factor)
  window = max(train_len // 2, 1)
  if method == 'rerope':
    c.model.rerope.window, c.model.rerope.leak = window, 0.0
  elif method == 'leaky_rerope' and length > train_len:
    c.model.rerope.window = window
    c.model.rerope.leak = (train_len - window) / (length - window)
  elif method == 'lm_infinite':
    n_global = min(LM_INFINITE_GLOBAL, train_len // 2)
    c.model.lm_infinite.n_global = n_global
    c.model.lm_infinite.n_local = train_len - n_global
    c.model.lm_infinite.distance_limit = train_len
  c.eval.sliding = False
  return c


def compare(workdir: str, lengths: Sequence[int] | None = None,
            out_dir: str | None = None, step: int | None = None,
            methods: Sequence[str] = METHODS, plots: bool = True) -> dict:
  """Loss against length for every method; writes JSON, CSV and a plot."""
  config = checkpoint.read_config(workdir)
  if config.model.position != 'rope':
    raise config_lib.ConfigError(
        f'{workdir} holds a {config.model.position!r} model; the RoPE '
        'extensions apply to a model trained with '
        '--config.model.position=rope.')
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise config_lib.ConfigError(
        f'Unknown extension(s) {", ".join(unknown)}; valid: '
        f'{", ".join(METHODS)}.')
  train_len = int(config.train.seq_len)
  lengths = sorted(set(lengths or [m * train_len
                                   for m in config.eval.multipliers]))
  for m in methods:  # every configuration is valid before any compile
    for n in lengths:
      config_lib.validate(method_config(config, m, n))
  checkpoint.require_checkpoint(workdir, step)
  stream = corpus.token_stream(corpus.load_documents(config.data,
                                                     'validation'))
  for n in lengths:
    windows.eval_windows(stream, n, config.eval.tokens)
  _, params, step = evaluation.load_params(config, workdir, step)
  rows, done = [], {}
  for m in methods:
    for n in lengths:
      c = method_config(config, m, n)
      rope = c.model.rope
      # At n <= L the static scalings are plain RoPE: computed once.
      key = (c.model.to_json(), n)
      if key not in done:
        graphdef, _ = trainer.abstract_model(c)
        done[key] = evaluation.loss_at_length(
            evaluation.make_loss_fn(graphdef), params, c, stream, n)
      r = done[key]
      rows.append({'method': m, 'length': n, 'factor': rope.factor,
                   'loss': r['loss'], 'perplexity': r['perplexity'],
                   'bits_per_byte': r['bits_per_byte']})
      print(f'{m:>13} {n:>6}: loss {r["loss"]:.4f}', flush=True)
  results = {'workdir': os.path.abspath(workdir), 'step': step,
             'train_length': train_len, 'methods': list(methods),
             'lengths': lengths, 'results': rows}
  out_dir = out_dir or os.path.join(workdir, 'extensions')
  os.makedirs(out_dir, exist_ok=True)
  evaluation.write_json(os.path.join(out_dir, 'results.json'), results)
  with open(os.path.join(out_dir, 'results.csv'), 'w', newline='') as f:
    w = csv.DictWriter(f, list(rows[0]))
    w.writeheader()
    w.writerows(rows)
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
  plt = evaluation.pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for m in results['methods']:
    rows = [r for r in results['results'] if r['method'] == m]
    ax.plot([r['length'] for r in rows], [r['loss'] for r in rows],
            marker='o', label=m if m != 'none' else 'none (plain RoPE)')
  t = results['train_length']
  ax.axvline(t, color='gray', linestyle='--', label=f'training length ({t})')
  evaluation.length_axis(ax, results['lengths'])
  ax.set_xlabel('evaluation length (tokens, log scale)')
  ax.set_ylabel('loss (nats / byte)')
  ax.set_title(f'RoPE extensions without training (step {results["step"]})')
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: Sequence[str]) -> int:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog='python -m lmx.extensions',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--lengths', default='',
                      help='comma-separated; default: eval.multipliers x L')
  parser.add_argument('--methods', default=','.join(METHODS))
  parser.add_argument('--step', type=int, default=None)
  parser.add_argument('--out', default=None)
  args = parser.parse_args(argv)
  try:
    lengths = [int(x) for x in args.lengths.split(',') if x]
  except ValueError:
    print(f'error: --lengths must be integers, got {args.lengths}',
          file=sys.stderr)
    return 2
  try:
    results = compare(args.workdir, lengths, args.out, args.step,
                      [m for m in args.methods.split(',') if m])
  except (config_lib.ConfigError, corpus.DataError,
          checkpoint.CheckpointError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(format_table(results))
  out = args.out or os.path.join(args.workdir, 'extensions')
  print(f'Wrote results.json, results.csv and loss_vs_length.png to {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
