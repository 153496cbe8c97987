"""One table (and one plot) from many evaluated runs.

    python -m lmx.report runs/* [--plot loss_vs_length.png]

reads ``<workdir>/eval/results.json`` of each run and prints a markdown table
of loss (nats/byte) against length, one row per run, plus the ratio of the
loss at 8x the training length to the loss at 1x. ``--plot`` draws every run
on one loss-against-length plot, training length marked.
"""

from __future__ import annotations

import json
import os
import sys


def load(workdirs):
  runs = []
  for w in workdirs:
    path = os.path.join(w, 'eval', 'results.json')
    if os.path.isfile(path):
      with open(path) as f:
        r = json.load(f)
      r['name'] = os.path.basename(os.path.normpath(w))
      runs.append(r)
  return runs


def table(runs) -> str:
  mults = sorted({r['length'] // run['train_length']
                  for run in runs for r in run['results']})
  head = ['run', 'encoding', 'positions'] + [f'{m}x' for m in mults] + [
      '8x / 1x']
  lines = ['| ' + ' | '.join(head) + ' |',
           '|' + '|'.join(['---'] * 3 + ['---:'] * (len(mults) + 1)) + '|']
  for run in runs:
    by_mult = {r['length'] // run['train_length']: r['loss']
               for r in run['results']}
    cells = [f'{by_mult[m]:.3f}' if m in by_mult else 'n/a' for m in mults]
    ratio = (f'{by_mult[8] / by_mult[1]:.2f}' if 8 in by_mult and 1 in by_mult
             else 'n/a')
    sampling = run['train_sampling']
    if run['eval_sampling'] != sampling:
      sampling += f' / eval {run["eval_sampling"]}'
    lines.append('| ' + ' | '.join([run['name'], run['position'], sampling]
                                   + cells + [ratio]) + ' |')
  return '\n'.join(lines)


def label(run) -> str:
  name = run['position']
  if run['train_sampling'] != 'contiguous':
    name += f' ({run["train_sampling"]})'
  return name


def plot(runs, path: str) -> None:
  from lmx import evaluation  # pylint: disable=g-import-not-at-top
  plt = evaluation.pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  lengths = []
  for run in runs:
    xs = [r['length'] for r in run['results']]
    lengths += xs
    ax.plot(xs, [r['loss'] for r in run['results']], marker='o',
            label=label(run))
  train_lengths = sorted({run['train_length'] for run in runs})
  for t in train_lengths:
    ax.axvline(t, color='gray', linestyle='--')
  evaluation.length_axis(ax, lengths)
  ax.set_xlabel('evaluation length (tokens); dashed: training length')
  ax.set_ylabel('loss (nats / byte)')
  ax.set_title('loss against length')
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  args = list(argv[1:])
  plot_path = None
  if '--plot' in args:
    i = args.index('--plot')
    if i + 1 >= len(args):
      print('--plot needs a file name.', file=sys.stderr)
      return 2
    plot_path = args[i + 1]
    del args[i:i + 2]
  runs = load(args)
  if not runs:
    print('No <workdir>/eval/results.json found: run eval.py first.',
          file=sys.stderr)
    return 2
  print(table(runs))
  if plot_path:
    plot(runs, plot_path)
    print(f'Wrote {plot_path}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
