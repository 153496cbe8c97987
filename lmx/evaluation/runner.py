"""Evaluation at unseen lengths: a checkpoint through the chosen evaluators.

``evaluate`` is a short walk: the run's data (``sources.data_source``),
the evaluators the config asks for (``evaluators.chosen``), their checks
before anything is read or compiled, then each one's run and files, and
results.json and TensorBoard. The protocols themselves (the loss of
windows at a length, sliding windows, the loss by position, attention
statistics) are in ``lmx.evaluation.protocols``; their names are kept
here for the code that calls them.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
from typing import Optional, Sequence

import jax
import ml_collections

from lmx import sharding
from lmx.config import validate as config_lib
from lmx.evaluation import effective as effective_lib
from lmx.evaluation import evaluators as evaluators_lib
from lmx.evaluation.protocols import (
    attention_diagnostics, bucket_edges, log_bucket_edges, loss_at_length,
    make_loss_fn, make_stats_fn, mesh_loss_fn, per_position_result,
    plot_attention, plot_loss_vs_length, plot_per_position, position_profile,
    sliding_loss_at_length, sliding_stride, write_json)
from lmx.evaluation.sources import (check_same_data, config_dict,
                                    data_source)
from lmx.training import checkpoint
from lmx.training import metrics as metrics_lib
from lmx.model import xla_cpu
from lmx.training import run_state

__all__ = [
    'attention_diagnostics', 'bucket_edges', 'config_dict', 'evaluate',
    'folder_name', 'format_effective', 'format_longppl_table',
    'format_table', 'log_bucket_edges', 'loss_at_length',
    'make_loss_fn', 'make_stats_fn', 'mesh_loss_fn', 'per_position_result',
    'plot_attention', 'plot_loss_vs_length', 'plot_per_position',
    'position_profile', 'sliding_loss_at_length', 'sliding_stride',
    'tag_prefix', 'tensorboard_scalars', 'write_json', 'write_tensorboard',
]


def tensorboard_scalars(results: dict, prefix: str = 'eval') -> dict:
  """``{tag: value}`` of an evaluation, for TensorBoard: ``<prefix>/loss_len
  <L>`` (and bits_per_byte, perplexity, sliding_loss, longppl and
  longppl_key_fraction; accuracy and token_accuracy for a task run), one
  tag per length."""
  out = {}
  for r in results['results']:
    for key in ('loss', 'bits_per_byte', 'perplexity', 'accuracy',
                'token_accuracy'):
      if r.get(key) is not None:
        out[f'{prefix}/{key}_len{r["length"]}'] = r[key]
  for r in results.get('sliding') or ():
    out[f'{prefix}/sliding_loss_len{r["length"]}'] = r['loss']
  for r in results.get('longppl') or ():
    if r.get('longppl') is not None:
      out[f'{prefix}/longppl_len{r["length"]}'] = r['longppl']
    out[f'{prefix}/longppl_key_fraction_len{r["length"]}'] = r['key_fraction']
  return out


def folder_name(overrides: Optional[dict]) -> str:
  """``eval``, or for an evaluation with ``--config.<field>`` overrides
  ``eval_<field>=<value>,...`` (long names end in a hash of them all): the
  name of its folder in the run (eval.py) and, made fit for a tag, its
  TensorBoard prefix (``tag_prefix``)."""
  if not overrides:
    return 'eval'
  name = ','.join(f'{k}={v}' for k, v in overrides.items())
  slug = re.sub(r'[^A-Za-z0-9._=,+-]', '-', name)
  if len(slug) > 100:
    digest = hashlib.sha256(name.encode('utf-8', 'surrogateescape'))
    slug = f'{slug[:80]}-{digest.hexdigest()[:12]}'
  return f'eval_{slug}'


def tag_prefix(overrides: Optional[dict]) -> str:
  """The TensorBoard tag prefix of an evaluation: its ``folder_name`` with
  each character TensorBoard does not keep in a tag (``=``, ``,``) as
  ``_``: ``eval``, ``eval_model.rope.scaling_yarn``."""
  return re.sub(r'[^-\w.]', '_', folder_name(overrides))


def write_tensorboard(workdir: str, results: dict,
                      overrides: Optional[dict]) -> None:
  """The evaluation's scalars at the checkpoint's step, in the run's
  TensorBoard folder beside the training scalars, under tags of their own
  (``tensorboard_scalars`` with ``tag_prefix(overrides)``). A run folder
  that cannot be written to is a warning: the results are already saved."""
  logdir = os.path.join(workdir, metrics_lib.TENSORBOARD_DIR)
  try:
    metrics_lib.write_tensorboard(
        logdir, results['step'],
        tensorboard_scalars(results, tag_prefix(overrides)))
  except OSError as e:
    print(f'warning: evaluation scalars not written to TensorBoard in '
          f'{logdir} ({e.strerror or e}); results.json has them.',
          file=sys.stderr, flush=True)


def _progress(enabled: bool):
  """``(i, n, length, row) -> None``: a line per evaluated length."""
  start = time.perf_counter()

  def report(i, n, length, row):
    if not enabled:
      return
    what = (f'accuracy {row["accuracy"]:.3f}' if 'accuracy' in row
            else f'loss {row["loss"]:.4f}')
    print(f'eval length {i}/{n} ({length}): {what}, elapsed '
          f'{time.perf_counter() - start:.1f}s', flush=True)

  return report


def evaluate(config: ml_collections.ConfigDict, workdir: str,
             lengths: Optional[Sequence[int]] = None,
             out_dir: Optional[str] = None, plots: bool = True,
             step: Optional[int] = None,
             overrides: Optional[dict] = None,
             progress: bool = True) -> dict:
  """Evaluates a checkpoint (default: the latest); writes JSON and PNGs.

  The evaluators are those of ``config.eval.evaluators`` (by default, for
  a text run: loss against length, sliding windows with
  ``config.eval.sliding``, per-position loss, attention statistics with
  ``config.eval.diagnostics_windows``, generation quality with
  ``config.eval.generation``, LM-Infinite's factors with
  ``config.eval.ood``; for a task run: accuracy against task length). Each
  checks the config, the data and the lengths before any checkpoint is
  read or anything compiles, then runs, then writes its files.

  results.json records the complete config of the evaluation (``config``)
  and the command line's ``--config.<field>`` items (``overrides``), which
  the plot titles also show. The scalars go to the run's TensorBoard
  folder too (``write_tensorboard``). With ``progress`` (and in the primary
  process) a line is printed per length evaluated.

  results.json's ``effective_length`` holds, for each length-dependent
  score it has (perplexity, sliding perplexity, LongPPL, task accuracy,
  passkey accuracy by depth), the longest length that keeps
  ``config.eval.effective_fraction`` of the in-distribution score
  (``lmx.evaluation.effective``).

  Returns results.json's fields, the results of the evaluators that have a
  ``key`` (``per_position``, ``attention``, ``generation``, ``ood``: None
  when not run) and ``files``, the names of the files written to the
  output folder.
  """
  _check_same_task(config, workdir)  # first: the clearest message
  # Before anything starts JAX's backend.
  xla_cpu.prepare_host_for(config, evaluation=True)
  config_lib.validate(config)
  source = data_source(config)
  chosen = evaluators_lib.chosen(config, source)
  run_lengths, skipped = source.lengths(config, lengths)
  ctx = evaluators_lib.Context(
      config=config, source=source, lengths=run_lengths, skipped=skipped,
      workdir=workdir, plots=plots, overrides=overrides,
      report=_progress(progress and jax.process_index() == 0))
  for ev in chosen:  # before any checkpoint is read
    ev.check(ctx)
  checkpoint.require_checkpoint(workdir, step)
  source.open(ctx)
  ctx.out_dir = checkpoint.make_writable_dir(
      out_dir or os.path.join(workdir, 'eval'), 'The evaluation folder')
  source.check(ctx)  # refuse before compiling anything
  for ev in chosen:
    ev.prepare(ctx)

  ctx.graphdef, params, ctx.step = run_state.load_params(config, workdir,
                                                         step)
  mesh = None
  if config.cpu_devices > 1 and jax.process_count() == 1:
    # The host's cores as devices: the parameters placed on the config's
    # mesh (heads over its tensor axis), each evaluation's computation
    # split with them; the windows of the loss over its data axes.
    mesh = sharding.make_mesh(config)
    params = sharding.place(params, sharding.tree_shardings(params, mesh))
    ctx.token_losses = mesh_loss_fn(ctx.graphdef, mesh)
  ctx.set_params(params)
  got = [(ev, ev.run(ctx)) for ev in chosen]
  results = source.results_head(ctx)
  if mesh is not None:
    results['mesh'] = dict(mesh.shape)
  for ev, result in got:
    results.update(ev.summary(result))
  if 'train_length' in results:
    results['effective_length'] = effective_lib.of_results(
        results, config.eval.effective_fraction)
  results.update(source.results_tail(ctx))
  ctx.summary = results
  write_json(os.path.join(ctx.out_dir, 'results.json'), results)
  files = ['results.json']
  for ev, result in got:
    files += ev.write(result, ctx)
  if jax.process_index() == 0:
    write_tensorboard(workdir, results, overrides)
  out = {**results, **source.returned()}
  out.update({ev.key: result for ev, result in got if ev.key})
  out['files'] = files
  return out


def _check_same_task(config, workdir: str) -> None:
  """The evaluation's data must be the run's (``sources.check_same_data``);
  a folder without a run is left to ``require_checkpoint``."""
  if os.path.isfile(os.path.join(workdir, checkpoint.CONFIG_FILE)):
    check_same_data(config, checkpoint.read_config(workdir), workdir)


def format_longppl_table(results: dict) -> str:
  """A markdown table of LongPPL against length (``results['longppl']``):
  key tokens, their share, the plain perplexity of the same tokens and the
  mean long-short difference."""
  rows = results.get('longppl') or ()
  if not rows:
    return ''
  lines = ['| length | short | LongPPL | key tokens | key fraction | '
           'perplexity (same tokens) | mean LSD (nats) |',
           '|---:|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    lp = 'n/a' if r['longppl'] is None else f"{r['longppl']:.3f}"
    lsd = 'n/a' if r['lsd'] is None else f"{r['lsd']:.4f}"
    lines.append(f"| {r['length']} | {r['short']} | {lp} | "
                 f"{r['key_tokens']} | {r['key_fraction']:.4f} | "
                 f"{r['perplexity']:.3f} | {lsd} |")
  return '\n'.join(lines)


def format_effective(results: dict) -> str:
  """The effective lengths of results.json (``effective_length``), a
  markdown table, or '' when it has none."""
  eff = results.get('effective_length')
  if not eff:
    return ''
  fraction = next(iter(eff.values()))['fraction']
  return (f'Effective length (longest length keeping {fraction:g} of the '
          'in-distribution score; perplexities: rising at most '
          f'{1 / fraction:.3g}x):\n' + effective_lib.format_table(eff))


def format_table(results: dict) -> str:
  """A markdown table of loss and perplexity against length."""
  train_len = results['train_length']
  sliding = {r['length']: r for r in results.get('sliding') or ()}
  head = '| length | x train | loss (nats) | bits/byte | perplexity |'
  rule = '|---:|---:|---:|---:|---:|'
  if sliding:
    head += ' sliding loss | stride |'
    rule += '---:|---:|'
  lines = [head, rule]
  for r in results['results']:
    line = (f"| {r['length']} | {r['length'] / train_len:g} | "
            f"{r['loss']:.4f} | {r['bits_per_byte']:.4f} | "
            f"{r['perplexity']:.3f} |")
    if sliding:
      sr = sliding[r['length']]
      line += f" {sr['loss']:.4f} | {sr['stride']} |"
    lines.append(line)
  for length in results.get('skipped', {}):
    lines.append(f'| {length} | {int(length) / train_len:g} | n/a | n/a | '
                 'n/a |' + (' n/a | |' if sliding else ''))
  return '\n'.join(lines)
