"""One table from many evaluated runs.

    python -m lmx.report runs/*

reads ``<workdir>/eval/results.json`` of each run and prints a markdown table
of loss (nats/byte) against length, one row per run, plus the ratio of the
loss at 8x the training length to the loss at 1x.
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


def main(argv):
  runs = load(argv[1:])
  if not runs:
    print('No <workdir>/eval/results.json found: run eval.py first.',
          file=sys.stderr)
    return 2
  print(table(runs))
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
