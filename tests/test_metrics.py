"""metrics.jsonl, TensorBoard events and the training-curve plot."""

import json

import numpy as np
from PIL import Image

from lmx.training import metrics


def test_curve_data_orders_steps_and_keeps_the_last_row_of_a_step():
  rows = [{'step': 4, 'loss': 3.0, 'learning_rate': 0.5},
          {'step': 2, 'loss': 4.0, 'learning_rate': 1.0},
          {'step': 4, 'loss': 2.5, 'learning_rate': 0.25},  # a resumed rerun
          {'note': 'no step'}]
  data = metrics.curve_data(rows)
  assert data == {'step': [2, 4], 'loss': [4.0, 2.5],
                  'learning_rate': [1.0, 0.25], 'eval': {}}


def test_training_curve_png_has_one_point_per_logged_step(tmp_path):
  rows = [{'step': s, 'loss': 5.0 / s, 'learning_rate': 1e-3 * (1 - s / 60)}
          for s in range(5, 55, 5)]
  path = str(tmp_path / 'curve.png')
  data = metrics.plot_training_curve(rows, path, 'tiny')
  assert data['step'] == list(range(5, 55, 5))
  np.testing.assert_allclose(data['loss'], [5.0 / s for s in data['step']])
  with Image.open(path) as im:
    assert im.format == 'PNG' and im.size[0] > 300 and im.size[1] > 300


def test_metric_writer_and_eval_scalars_read_back_from_tensorboard(tmp_path):
  w = metrics.MetricWriter(str(tmp_path))
  w.write(10, {'loss': 2.5})
  w.write(20, {'loss': 2.0})
  w.close()
  logdir = str(tmp_path / metrics.TENSORBOARD_DIR)
  metrics.write_tensorboard(logdir, 20, {'eval/loss_len64': 1.75})
  got = metrics.read_tensorboard(logdir)
  assert got['loss'] == [(10, 2.5), (20, 2.0)]
  assert got['eval/loss_len64'] == [(20, 1.75)]
  with open(tmp_path / metrics.METRICS_FILE) as f:
    assert [json.loads(line)['step'] for line in f] == [10, 20]
