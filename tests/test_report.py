"""The cross-run report: table rows, the 8x/1x ratio and the combined plot."""

import json
import os

from lmx import report


def _fake_run(root, name, position, losses, sampling='contiguous'):
  os.makedirs(os.path.join(root, name, 'eval'))
  results = {'position': position, 'train_sampling': sampling,
             'eval_sampling': sampling, 'train_length': 64, 'step': 10,
             'results': [{'length': 64 * m, 'loss': l}
                         for m, l in zip((1, 2, 4, 8), losses)]}
  with open(os.path.join(root, name, 'eval', 'results.json'), 'w') as f:
    json.dump(results, f)
  return os.path.join(root, name)


def test_table_and_plot(tmp_path):
  a = _fake_run(str(tmp_path), 'a', 'alibi', [2.0, 1.9, 1.9, 1.8])
  b = _fake_run(str(tmp_path), 'b', 'rope', [2.0, 3.0, 3.5, 5.0],
                sampling='randomized')
  missing = str(tmp_path / 'never_evaluated')
  plot = str(tmp_path / 'all.png')
  assert report.main(['report', a, b, missing, '--plot', plot]) == 0
  rows = report.table(report.load([a, b])).splitlines()
  assert rows[2].startswith('| a | alibi | contiguous | 2.000 | 1.900')
  assert rows[2].endswith('| 0.90 |')            # 1.8 / 2.0
  assert rows[3].endswith('| 2.50 |')            # 5.0 / 2.0
  assert report.label(report.load([b])[0]) == 'rope (randomized)'
  with open(plot, 'rb') as f:
    assert f.read(4) == b'\x89PNG'
  assert report.main(['report', missing]) == 2
