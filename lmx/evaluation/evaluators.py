"""Evaluators: each part of an evaluation as an object, chosen by the config.

An evaluation (``lmx.evaluation.runner.evaluate``, eval.py) and the
evaluation during training (``lmx.training.trainer``, ``train.eval_every``)
run the same objects. Each ``Evaluator`` has

* ``check(ctx)``: refuses (ConfigError, naming the field to change) what it
  cannot do with the config, the run's data and the lengths, before any
  checkpoint is read or anything compiles;
* ``prepare(ctx)``: the checks that need the data (read by then), still
  before anything compiles;
* ``run(ctx) -> result``: the measurement;
* ``summary(result) -> dict``: the fields it adds to results.json;
* ``write(result, ctx) -> [file names]``: its own files in
  ``ctx.out_dir`` (after results.json is written, so that a plot may draw
  the fields of other evaluators), the names of those it wrote.

``EVALUATORS`` maps each name to its class. ``config.eval.evaluators``
names those to run, in order; empty (the default) means those the switches
of ``config.eval`` turn on (``chosen``), which is what an evaluation ran
before the field existed. The data of the run (text or a task) is a
``lmx.evaluation.sources.Source`` in ``ctx.source``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional

from lmx.config import validate as config_lib
from lmx.data import windows
from lmx.evaluation import generation as generation_eval
from lmx.evaluation import longppl as longppl_lib
from lmx.evaluation import ood as ood_diagnostics
from lmx.evaluation import protocols
from lmx.evaluation import sources
from lmx.evaluation import task_accuracy as task_eval
from lmx.training import run_state


@dataclasses.dataclass
class Context:
  """What every evaluator reads: the config, the run's data, the lengths,
  the model, where to write. Fields after ``lengths`` are filled as the
  evaluation goes (data by ``source.open``, the model after the checks).

  ``loss_at(length)`` scores non-overlapping windows once per length and
  parameters, so the evaluators that need them (``loss``,
  ``per_position``) share one pass."""

  config: Any
  source: sources.Source
  lengths: list
  skipped: dict = dataclasses.field(default_factory=dict)
  workdir: Optional[str] = None
  out_dir: Optional[str] = None
  plots: bool = True
  overrides: Optional[dict] = None
  report: Callable = lambda i, n, length, row: None
  tok: Any = None
  stream: Any = None
  byte_lengths: Any = None
  step: Optional[int] = None
  graphdef: Any = None
  params: Any = None
  token_losses: Optional[Callable] = None
  summary: Optional[dict] = None  # results.json, once written
  prepared: dict = dataclasses.field(default_factory=dict)
  _losses: dict = dataclasses.field(default_factory=dict)

  def set_params(self, params) -> None:
    """New parameters: the cached losses are of the old ones."""
    self.params = params
    self._losses.clear()

  def loss_at(self, length: int) -> dict:
    """``protocols.loss_at_length`` at ``length``, computed once."""
    if length not in self._losses:
      if self.token_losses is None:
        self.token_losses = protocols.make_loss_fn(self.graphdef)
      self._losses[length] = protocols.loss_at_length(
          self.token_losses, self.params, self.config, self.stream, length,
          self.byte_lengths)
    return self._losses[length]

  def dense_length(self) -> Optional[int]:
    """The longest length whose dense T x T logits the model builds (up to
    ``config.model.chunk_threshold``), where the attention statistics and
    the out-of-distribution factors are taken; None when none is."""
    reach = max(self.config.model.chunk_threshold, 1)
    dense = [n for n in self.lengths if n <= reach]
    return dense[-1] if dense else None


class Evaluator:
  """One part of an evaluation. ``sources``: the kinds of data
  (``Source.kind``) it can score; ``key``: the key ``evaluate`` returns its
  result under (None: only its ``summary`` fields)."""

  name = ''
  sources: tuple[str, ...] = ('text',)
  key: Optional[str] = None

  def check(self, ctx: Context) -> None:
    """ConfigError, naming the field to change, for what this evaluator
    cannot do; called before any checkpoint is read. By default: data of
    a kind it cannot score."""
    if ctx.source.kind not in self.sources:
      raise config_lib.ConfigError(
          f'config.eval.evaluators names {self.name!r}, which cannot score '
          f'{ctx.source.what}, the data of this run. Drop {self.name!r} from '
          'config.eval.evaluators.')

  def prepare(self, ctx: Context) -> None:
    """Checks that need the data; nothing by default."""

  def run(self, ctx: Context):
    """The measurement, on ``ctx.params``; returns its result."""
    raise NotImplementedError

  def summary(self, result) -> dict:
    """The fields ``result`` adds to results.json; none by default."""
    return {}

  def write(self, result, ctx: Context) -> list[str]:
    """Writes ``result``'s files to ``ctx.out_dir`` (plots only with
    ``ctx.plots``); returns their names. None by default."""
    return []


def _write_json(ctx: Context, name: str, data) -> str:
  protocols.write_json(os.path.join(ctx.out_dir, name), data)
  return name


class Loss(Evaluator):
  """Loss, perplexity and bits per byte against length: non-overlapping
  windows (results.json ``results``, loss_vs_length.png, which draws the
  sliding-window losses too)."""

  name = 'loss'

  def run(self, ctx):
    rows = []
    for i, length in enumerate(ctx.lengths, 1):
      rows.append(ctx.loss_at(length))
      ctx.report(i, len(ctx.lengths), length, rows[-1])
    return rows

  def summary(self, result):
    return {'results': [{k: v for k, v in r.items()
                         if k not in ('per_position', 'per_window')}
                        for r in result]}

  def write(self, result, ctx):
    if not ctx.plots:
      return []
    protocols.plot_loss_vs_length(
        ctx.summary, os.path.join(ctx.out_dir, 'loss_vs_length.png'))
    return ['loss_vs_length.png']


class Sliding(Evaluator):
  """The sliding-window protocol at every length (results.json
  ``sliding``; drawn in loss_vs_length.png)."""

  name = 'sliding'

  def run(self, ctx):
    if ctx.token_losses is None:
      ctx.token_losses = protocols.make_loss_fn(ctx.graphdef)
    return [protocols.sliding_loss_at_length(
        ctx.token_losses, ctx.params, ctx.config, ctx.stream, length,
        ctx.byte_lengths) for length in ctx.lengths]

  def summary(self, result):
    return {'sliding': result}


class PerPosition(Evaluator):
  """Loss by position at the longest length, with the spread over
  windows (per_position.json and .png)."""

  name = 'per_position'
  key = 'per_position'

  def run(self, ctx):
    out = protocols.per_position_result(ctx.loss_at(ctx.lengths[-1]),
                                        ctx.config)
    out['tokenizer'] = ctx.tok.describe()
    return out

  def write(self, result, ctx):
    files = [_write_json(ctx, 'per_position.json', result)]
    if ctx.plots:
      protocols.plot_per_position(
          result, ctx.config.model.position,
          os.path.join(ctx.out_dir, 'per_position.png'), ctx.overrides)
      files.append('per_position.png')
    return files


class Attention(Evaluator):
  """Attention entropy and largest logit per layer against position
  (attention.json and .png), from ``config.eval.diagnostics_windows``
  windows of the longest length the dense backend runs: the statistics
  need each layer's T x T logits, so a 64k evaluation does not build
  64k x 64k arrays. Nothing when no length is that short."""

  name = 'attention'
  key = 'attention'

  def run(self, ctx):
    length = ctx.dense_length()
    if length is None or not ctx.config.eval.diagnostics_windows:
      return None
    n = windows.num_eval_windows(ctx.stream.size, length,
                                 ctx.config.eval.tokens)
    return protocols.attention_diagnostics(
        ctx.graphdef, ctx.params, ctx.config, ctx.stream, length,
        min(ctx.config.eval.diagnostics_windows, n))

  def write(self, result, ctx):
    if result is None:
      return []
    files = [_write_json(ctx, 'attention.json', result)]
    if ctx.plots:
      protocols.plot_attention(result, ctx.config.model.position,
                               os.path.join(ctx.out_dir, 'attention.png'),
                               ctx.overrides)
      files.append('attention.png')
    return files


class Generation(Evaluator):
  """BLEU and ROUGE of greedy continuations after each position
  (``lmx.evaluation.generation``; generation.json and .png)."""

  name = 'generation'
  key = 'generation'

  def check(self, ctx):
    config_lib.require(
        ctx.source.kind == 'text',
        'config.eval.generation scores continuations of text documents; '
        f'this is a {ctx.config.task.name!r} task run. Drop '
        '--config.eval.generation=true (task runs report exact match).')
    super().check(ctx)

  def prepare(self, ctx):
    # ConfigError / DataError for positions or documents, before compiling.
    ctx.prepared['generation'] = generation_eval.plan(
        ctx.config, ctx.stream.documents())

  def run(self, ctx):
    pos, skipped, docs = ctx.prepared['generation']
    c = ctx.config
    if not pos:
      return {'train_length': c.train.seq_len, 'rows': [],
              'skipped': skipped, 'tokens': c.eval.generation_tokens,
              'documents': 0, 'position': c.model.position}
    return generation_eval.generation_quality(
        ctx.graphdef, ctx.params, c, pos, skipped, docs, ctx.tok)

  def write(self, result, ctx):
    files = [_write_json(ctx, 'generation.json', result)]
    if ctx.plots and result['rows']:
      generation_eval.plot(result,
                           os.path.join(ctx.out_dir, 'generation.png'),
                           ctx.overrides)
      files.append('generation.png')
    return files


class Ood(Evaluator):
  """LM-Infinite's out-of-distribution factors at the longest length the
  dense path reaches (``lmx.evaluation.ood``; ood.json and .png)."""

  name = 'ood'
  key = 'ood'

  def check(self, ctx):
    super().check(ctx)
    c = ctx.config
    config_lib.require(
        ctx.dense_length() is not None,
        'config.eval.ood=true needs each layer\'s dense logits, taken at the '
        'longest evaluation length up to config.model.chunk_threshold='
        f'{c.model.chunk_threshold}, but every length asked for '
        f'({", ".join(map(str, ctx.lengths))}) is longer. Add a shorter '
        'length (--lengths) or raise config.model.chunk_threshold.')

  def run(self, ctx):
    length = ctx.dense_length()
    return ood_diagnostics.diagnose(
        ctx.graphdef, ctx.params, ctx.config, ctx.stream, length,
        protocols.bucket_edges(length, ctx.config.eval.position_buckets))

  def write(self, result, ctx):
    files = [_write_json(ctx, 'ood.json', result)]
    if ctx.plots:
      ood_diagnostics.plot(result, os.path.join(ctx.out_dir, 'ood.png'),
                           ctx.overrides)
      files.append('ood.png')
    return files


class Tasks(Evaluator):
  """Exact-match accuracy against task length, and the passkey grid
  (``lmx.evaluation.task_accuracy``; accuracy_vs_length.png,
  passkey_heatmap.png)."""

  name = 'tasks'
  sources = ('task',)

  def run(self, ctx):
    return task_eval.evaluate_task(
        ctx.config, run_state.apply_fn(ctx.graphdef), ctx.params,
        lengths=ctx.lengths, progress=ctx.report)

  def summary(self, result):
    return result

  def write(self, result, ctx):
    if not ctx.plots:
      return []
    task_eval.plot_accuracy_vs_length(
        ctx.summary, os.path.join(ctx.out_dir, 'accuracy_vs_length.png'))
    files = ['accuracy_vs_length.png']
    if 'passkey' in result:
      task_eval.plot_passkey_heatmap(
          ctx.summary, os.path.join(ctx.out_dir, 'passkey_heatmap.png'))
      files.append('passkey_heatmap.png')
    return files


class LongPPL(Evaluator):
  """LongPPL (Fang et al. 2025; ``lmx.evaluation.longppl``) at every
  length, self-contrast: perplexity on the tokens whose log-probability the
  long context raises most over the last ``config.eval.longppl_short``
  tokens, with the key tokens' count and fraction, the plain perplexity of
  the same tokens and the mean long-short difference (results.json
  ``longppl``). The long-context losses are the ``loss`` evaluator's
  (``Context.loss_at``); the short ones the same loss function's on
  short windows. Run it by naming it in ``config.eval.evaluators``."""

  name = 'longppl'

  def check(self, ctx):
    super().check(ctx)
    short = longppl_lib.resolve_short(ctx.config)
    config_lib.require(
        any(n >= short for n in ctx.lengths),
        f'config.eval.evaluators names {self.name!r}, whose short context '
        f'is {short} tokens (config.eval.longppl_short, 0: '
        'config.train.seq_len), but every length asked for '
        f'({", ".join(map(str, ctx.lengths))}) is shorter: no token has '
        'that much context. Evaluate longer lengths (--lengths) or lower '
        'config.eval.longppl_short.')

  def run(self, ctx):
    if ctx.token_losses is None:
      ctx.token_losses = protocols.make_loss_fn(ctx.graphdef)
    return [longppl_lib.longppl_at_length(
        ctx.token_losses, ctx.params, ctx.config, ctx.stream, length,
        ctx.loss_at(length)) for length in ctx.lengths]

  def summary(self, result):
    return {'longppl': [{k: v for k, v in r.items()
                         if k not in ('key_mask', 'short_loss')}
                        for r in result]}


EVALUATORS: dict[str, type[Evaluator]] = {
    cls.name: cls
    for cls in (Loss, Sliding, PerPosition, Attention, Generation, Ood, Tasks,
                LongPPL)
}


def names(config, source: Optional[sources.Source] = None
          ) -> tuple[str, ...]:
  """The names of the evaluators ``config`` asks for, in order:
  ``config.eval.evaluators``, or when it is empty those the switches of
  ``config.eval`` turn on for the run's data
  (``Source.default_evaluators``). ConfigError for an unknown name, listing
  the known ones."""
  source = source or sources.data_source(config)
  asked = tuple(config.eval.get('evaluators') or ())
  for name in asked:
    if name not in EVALUATORS:
      raise config_lib.ConfigError(
          f'Unknown evaluator {name!r} in config.eval.evaluators; the known '
          f'ones are {", ".join(sorted(EVALUATORS))} (or () for those '
          'config.eval.sliding, diagnostics_windows, generation and ood '
          'turn on).')
  config_lib.require(
      len(set(asked)) == len(asked),
      f'config.eval.evaluators={asked!r} names an evaluator twice; name '
      'each once.')
  return asked or source.default_evaluators(config)


def chosen(config, source: Optional[sources.Source] = None
           ) -> list[Evaluator]:
  """The evaluator objects of ``names``."""
  return [EVALUATORS[n]() for n in names(config, source)]
