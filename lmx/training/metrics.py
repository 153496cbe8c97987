"""Metrics to JSONL and TensorBoard event files in the workdir, and the
training-curve plot drawn from them."""

from __future__ import annotations

import json
import math
import os
import re
import sys
from typing import Mapping

from lmx.evaluation import plots

METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'


class MetricWriter:
  """Appends ``{"step": s, **scalars}`` lines to metrics.jsonl and writes the
  same scalars as TensorBoard events under ``<workdir>/tensorboard``.

  A run resumed at ``resume_step`` first drops the rows of later steps (and
  a half-written last line) that the interrupted run wrote after its last
  checkpoint, so metrics.jsonl reads as one uninterrupted run.
  """

  def __init__(self, workdir: str, enabled: bool = True,
               resume_step: int = 0):
    self.enabled = enabled
    self.path = os.path.join(workdir, METRICS_FILE)
    self._tb = None
    if enabled and os.path.exists(self.path):
      _truncate(self.path, resume_step)
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    row = {'step': int(step), **{k: float(v) for k, v in scalars.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(row) + '\n')
    for k, v in scalars.items():
      self._tb.add_scalar(k, float(v), int(step))

  def flush(self):
    if self._tb is not None:
      self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def _truncate(path: str, step: int) -> None:
  rows, damaged = [], 0
  with open(path, 'rb') as f:
    for raw in f:
      try:
        line = raw.decode('utf-8')
        row = json.loads(line)
      except ValueError:  # cut short by a kill, or damaged bytes
        damaged += bool(raw.strip())
        continue
      if isinstance(row, dict) and row.get('step', 0) <= step:
        rows.append(line if line.endswith('\n') else line + '\n')
  if damaged:
    print(f'note: {path}: dropped {damaged} damaged line(s) (not JSON '
          'or not UTF-8) while resuming.', file=sys.stderr)
  with open(path + '.tmp', 'w') as f:
    f.writelines(rows)
  os.replace(path + '.tmp', path)


def read_jsonl(path: str) -> list[dict]:
  """The rows of a JSONL file; a damaged line (cut short by a kill, not
  UTF-8, not a JSON object) is skipped."""
  rows = []
  with open(path, 'rb') as f:
    for raw in f:
      try:
        row = json.loads(raw.decode('utf-8'))
      except ValueError:
        continue
      if isinstance(row, dict):
        rows.append(row)
  return rows


def write_tensorboard(logdir: str, step: int,
                      scalars: Mapping[str, float]) -> None:
  """Adds ``scalars`` ({tag: value}) at ``step`` to a new event file in
  ``logdir``, beside any the training wrote. Its name ends in a random
  suffix: event files are named by the second they are opened, and one
  opened in the same second as another would replace it."""
  import uuid  # pylint: disable=g-import-not-at-top
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  tb = SummaryWriter(logdir, filename_suffix=f'.{uuid.uuid4().hex[:12]}')
  try:
    for tag, value in scalars.items():
      tb.add_scalar(tag, float(value), int(step))
  finally:
    tb.close()


def read_tensorboard(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """``{tag: [(step, value), ...]}`` of the scalars in every event file of
  ``logdir``, in file order (for tests and notebooks; TensorBoard itself
  is not needed)."""
  import struct  # pylint: disable=g-import-not-at-top
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  out: dict[str, list[tuple[int, float]]] = {}
  for name in sorted(os.listdir(logdir)):
    if 'tfevents' not in name:
      continue
    with open(os.path.join(logdir, name), 'rb') as f:
      data = f.read()
    i = 0
    while i + 12 <= len(data):  # records: length, crc, event, crc
      (n,) = struct.unpack('<Q', data[i:i + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[i + 12:i + 12 + n])
      i += 12 + n + 4
      for v in event.summary.value:
        if v.WhichOneof('value') == 'simple_value':
          out.setdefault(v.tag, []).append((int(event.step), v.simple_value))
  return out


# The validation loss at length L of the evaluation during training
# (lmx.training.trainer, config.train.eval_every): rows of their own in metrics.jsonl.
EVAL_KEY = re.compile(r'eval_loss_len(\d+)$')


def curve_data(rows: list[dict]) -> dict:
  """Steps, loss and learning rate of metrics.jsonl rows, in step order
  (one point per step: a later row of a step replaces an earlier one), and
  under ``eval`` ``{length: {'step': [...], 'loss': [...]}}`` from the rows
  of the evaluation during training (``eval_loss_len<L>``), the same way."""
  by_step, evals = {}, {}
  for r in rows:
    if 'step' not in r:
      continue
    if 'loss' in r:
      by_step[int(r['step'])] = r
    for key, value in r.items():
      match = EVAL_KEY.match(key)
      if match:
        evals.setdefault(int(match.group(1)), {})[int(r['step'])] = value
  steps = sorted(by_step)
  return {'step': steps,
          'loss': [float(by_step[s]['loss']) for s in steps],
          'learning_rate': [float(by_step[s].get('learning_rate', math.nan))
                            for s in steps],
          'eval': {length: {'step': sorted(points),
                            'loss': [float(points[s]) for s in
                                     sorted(points)]}
                   for length, points in sorted(evals.items())}}


def plot_training_curve(rows: list[dict], path: str, title: str = '',
                        train_length: int | None = None) -> dict:
  """Loss (log scale) and learning rate against step, two panels sharing
  the step axis, with the validation loss of the evaluation during training
  as one curve per length (labelled with its multiple of ``train_length``
  when given); returns the ``curve_data`` drawn."""
  data = curve_data(rows)
  plt = plots.pyplot()
  fig, (ax_loss, ax_lr) = plt.subplots(
      2, 1, figsize=(7, 5), sharex=True, gridspec_kw={'height_ratios': (2, 1)})
  marker = 'o' if len(data['step']) <= 40 else None
  ax_loss.plot(data['step'], data['loss'], marker=marker, markersize=3,
               label="training (the logged step's batch)")
  for i, (length, curve) in enumerate(data['eval'].items()):
    times = (f' ({length / train_length:g}x training length)'
             if train_length else '')
    ax_loss.plot(curve['step'], curve['loss'], marker='s', markersize=4,
                 linestyle='--', color=f'C{(i + 2) % 10}',
                 label=f'validation at length {length}{times}')
  finite = [v for v in data['loss'] + [
      x for c in data['eval'].values() for x in c['loss']]
            if math.isfinite(v)]
  log_y = bool(finite) and min(finite) > 0 and max(finite) > 2 * min(finite)
  if log_y:  # a loss that falls a lot: log scale, plain tick labels
    from matplotlib import ticker  # pylint: disable=g-import-not-at-top
    ax_loss.set_yscale('log')
    ax_loss.yaxis.set_major_locator(
        ticker.LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
    ax_loss.yaxis.set_major_formatter(ticker.FormatStrFormatter('%g'))
    ax_loss.yaxis.set_minor_formatter(ticker.NullFormatter())
  ax_loss.set_ylabel(('loss' if data['eval'] else
                      "loss of the logged step's batch")
                     + '\n(nats / token'
                     + (', log scale)' if log_y else ')'))
  ax_loss.grid(True, which='both', alpha=0.3)
  if data['eval']:
    ax_loss.legend(fontsize=8)
  ax_lr.plot(data['step'], data['learning_rate'], color='C1', marker=marker,
             markersize=3)
  ax_lr.set_ylabel('learning rate')
  ax_lr.set_xlabel('step')
  ax_lr.ticklabel_format(axis='y', style='sci', scilimits=(-2, 3))
  ax_lr.grid(True, alpha=0.3)
  n = len(data['step'])
  ax_loss.set_title((f'{title}: ' if title else '') + 'training loss'
                    + (', validation loss' if data['eval'] else '')
                    + f' and learning rate ({n} logged steps)', fontsize=10)
  fig.tight_layout()
  plots.save(fig, path)
  return data
