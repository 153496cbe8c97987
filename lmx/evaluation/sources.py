"""What a run is trained and evaluated on: validation text or a task.

A run reads one of two kinds of data: the text corpus of ``config.data``
(language modelling) or the generated examples of a synthetic task
(``config.task``, ``lmx.data.tasks``). Both are a ``Source`` behind one
protocol: the training batches, the lengths an evaluation runs, the
checks before anything compiles, the evaluators a config asks for by
default and the fields of results.json that are not any evaluator's.
``data_source(config)`` picks one, in this one place, so that neither the
trainer nor the evaluation asks ``config.task.name`` itself.

(``lmx.data.sources`` is another thing: where a text corpus comes from.)
"""

from __future__ import annotations

import json
import os
from typing import Callable, Optional, Sequence

import numpy as np

from lmx import memory
from lmx.config import validate as config_lib
from lmx.data import store, subword, tasks, windows


class Source:
  """The protocol of a run's data. ``kind`` names it: an evaluator says
  which kinds it can score (``Evaluator.sources``)."""

  kind = ''
  what = ''  # for messages: 'text (language modelling)', 'a task'

  def describe(self, config) -> str:
    """What the training line says after the model ('' for text)."""
    return ''

  def train_batches(self, config, rows: Optional[np.ndarray] = None,
                    tok=None) -> Callable:
    """``step -> batch``, a pure function of (config, step); ``rows``:
    only those global rows of each batch (one process's share)."""
    raise NotImplementedError

  def validation(self, config, tok):
    """The validation stream the evaluation during training scores, or
    None when this data has none."""
    return None

  def training_eval_note(self, config) -> Optional[str]:
    """Why ``config.train.eval_every`` is ignored for this data (a note,
    not a refusal), or None when it is not."""
    return None

  def default_evaluators(self, config) -> tuple[str, ...]:
    """The evaluators of ``config.eval.evaluators=()``: those the
    switches of ``config.eval`` turn on for this data."""
    raise NotImplementedError

  def lengths(self, config, explicit: Optional[Sequence[int]] = None):
    """(lengths to evaluate, {skipped length: reason}); ConfigError when
    none can run."""
    raise NotImplementedError

  def open(self, ctx) -> None:
    """Reads what the evaluation needs (``ctx.tok``, ``ctx.stream``,
    ``ctx.byte_lengths``); CheckpointError / DataError say what is
    missing."""

  def check(self, ctx) -> None:
    """Refuses what cannot run at ``ctx.lengths``, before compiling."""

  def results_head(self, ctx) -> dict:
    """The first fields of results.json, before the evaluators' own."""
    return {}

  def results_tail(self, ctx) -> dict:
    """The last fields of results.json, after the evaluators' own."""
    return {'skipped': {str(k): v for k, v in ctx.skipped.items()},
            'overrides': dict(ctx.overrides or {}),
            'config': config_dict(ctx.config)}

  def returned(self) -> dict:
    """Keys ``evaluate`` returns beside results.json's, with their value
    when no evaluator set them."""
    return {}


def config_dict(config) -> dict:
  """The complete config as plain JSON values."""
  return json.loads(config.to_json())


class TextSource(Source):
  """The validation split of the text corpus (``config.data``), scored in
  windows of each length (``lmx.data.windows``)."""

  kind = 'text'
  what = 'text (language modelling)'

  def train_batches(self, config, rows=None, tok=None):
    t = config.train
    tok = tok or subword.for_config(config)  # the tokenizer of the run
    # The training split, tokenized once into the store and memory-mapped:
    # each call reads only the windows (of ``rows``) it returns.
    stream = store.open_split(config.data, 'train', tok)
    return lambda step: windows.train_batch(
        stream, seed=config.seed, step=step, batch=t.batch_size,
        seq_len=t.seq_len, sampling=config.positions.train,
        max_position=config.positions.max_position, rows=rows,
        positions_cfg=config.positions)

  def validation(self, config, tok):
    # The store refuses an empty split: an evaluation needs text.
    return store.open_split(config.data, 'validation', tok)

  def default_evaluators(self, config):
    e = config.eval
    names = ['loss']
    if e.sliding:
      names.append('sliding')
    names.append('per_position')
    if e.diagnostics_windows:
      names.append('attention')
    if e.generation:
      names.append('generation')
    if e.ood:
      names.append('ood')
    return tuple(names)

  def lengths(self, config, explicit=None):
    run_lengths, skipped = config_lib.eval_lengths(config, explicit)
    if not run_lengths:
      raise config_lib.ConfigError(
          'No evaluation length can be run with this config: '
          + ' '.join(skipped.values()))
    return run_lengths, skipped

  def open(self, ctx):
    ctx.tok = subword.for_run(ctx.config, ctx.workdir)  # the run's own
    ctx.stream = store.open_split(ctx.config.data, 'validation', ctx.tok)
    ctx.byte_lengths = (None if ctx.tok.kind == 'bytes'
                        else ctx.tok.byte_lengths)

  def check(self, ctx):
    for length in ctx.lengths:  # DataError / ConfigError before compiling
      windows.eval_windows(ctx.stream, length, ctx.config.eval.tokens)
      memory.check_evaluation(ctx.config, length)

  def results_head(self, ctx):
    c = ctx.config
    return {
        'kind': 'lm',
        'workdir': os.path.abspath(ctx.workdir), 'step': ctx.step,
        'position': c.model.position,
        'train_sampling': c.positions.train,
        'eval_sampling': config_lib.resolve_eval_sampling(c),
        'train_length': c.train.seq_len,
        'tokenizer': ctx.tok.describe(),
        'results': [],
        'sliding': [],
        'sliding_stride': c.eval.sliding_stride,
    }

  def returned(self):
    return {'per_position': None, 'attention': None, 'generation': None,
            'ood': None}


class TaskSource(Source):
  """Examples of the synthetic task ``config.task`` (``lmx.data.tasks``),
  generated from a seed: no validation text, lengths are task lengths."""

  kind = 'task'
  what = 'a synthetic task'

  def describe(self, config):
    return f' on the {config.task.name} task'

  def train_batches(self, config, rows=None, tok=None):
    batch = config.train.batch_size
    if rows is None:
      return lambda step: tasks.train_batch(config, step=step, batch=batch)
    # Examples share one generator, so all are drawn; only ours are kept.
    return lambda step: {k: v[rows] for k, v in tasks.train_batch(
        config, step=step, batch=batch).items()}

  def training_eval_note(self, config):
    return (f'config.train.eval_every={config.train.eval_every} is ignored: '
            f'the {config.task.name!r} task has no validation text to score '
            'during training. Evaluate its checkpoints with eval.py.')

  def default_evaluators(self, config):
    # config.eval.generation is kept so that its check refuses it by name.
    return ('tasks',) + (('generation',) if config.eval.generation else ())

  def lengths(self, config, explicit=None):
    run_lengths, skipped = config_lib.task_eval_lengths(config, explicit)
    if not run_lengths:
      raise config_lib.ConfigError(
          'No task length can be evaluated with this config: '
          + ' '.join(skipped.values()))
    return run_lengths, skipped

  def results_tail(self, ctx):
    return {'workdir': os.path.abspath(ctx.workdir), 'step': ctx.step,
            **super().results_tail(ctx)}


def data_source(config) -> Source:
  """The run's data: a task when ``config.task.name`` is set, else text.
  The one place that asks."""
  return TaskSource() if config.task.name else TextSource()


def check_same_data(config, trained, workdir: str) -> None:
  """ConfigError unless ``config`` asks for the data the run (``trained``,
  its saved config) was trained on: a task's metric on a model trained for
  that task, text metrics on a text model."""
  asked, done = config.task.name, trained.task.name
  if asked != done:
    what = lambda n: f'the {n!r} task' if n else 'text (language modelling)'
    raise config_lib.ConfigError(
        f'{workdir} was trained on {what(done)}, so it cannot be evaluated '
        f'on {what(asked)}: config.task.name={asked!r} does not fit the run. '
        f'Drop the --config.task.name override, or train a model for '
        f'{what(asked)}.')
