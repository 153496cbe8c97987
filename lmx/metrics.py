"""Metrics to JSONL and TensorBoard event files in the workdir."""

from __future__ import annotations

import json
import os
from typing import Mapping


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
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    if enabled and os.path.exists(self.path):
      _truncate(self.path, resume_step)
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

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
  rows = []
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        continue  # a line cut short by a kill
      if isinstance(row, dict) and row.get('step', 0) <= step:
        rows.append(line if line.endswith('\n') else line + '\n')
  with open(path + '.tmp', 'w') as f:
    f.writelines(rows)
  os.replace(path + '.tmp', path)


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
