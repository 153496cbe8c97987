"""Evaluation at unseen lengths: loss against length, per-position loss, plots.

For each length ``L`` the validation stream is cut into non-overlapping
windows of ``L`` tokens (``lmx.data.windows.eval_windows``); the same first
``config.eval.tokens`` tokens are scored at every length, so lengths differ
only in how much context each token gets. Positions follow
``config.positions.eval`` ('train' = the training sampling).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import time
from typing import Optional, Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx

from lmx.training import checkpoint
from lmx import memory
from lmx.training import metrics as metrics_lib
from lmx.config import validate as config_lib
from lmx.evaluation import generation as generation_eval
from lmx.model import transformer as model_lib
from lmx.evaluation import ood as ood_diagnostics
from lmx.evaluation import task_accuracy as task_eval
from lmx.evaluation import plots
from lmx.training import run_state
from lmx.data import store, subword, windows
from lmx.positions import sample_positions


def make_loss_fn(graphdef):
  apply = run_state.apply_fn(graphdef)

  @jax.jit
  def token_losses(params, inputs, positions, targets):
    logits = apply(params, inputs, positions)
    return model_lib.cross_entropy(logits, targets)

  return token_losses


def _window_losses(token_losses, params, config, inputs: np.ndarray,
                   targets: np.ndarray, rng: np.random.Generator
                   ) -> np.ndarray:
  """Per-token losses ``[N, L]`` (float64) of windows, in batches of about
  ``config.eval.batch_tokens`` tokens, padded to one compiled shape."""
  n, length = inputs.shape
  batch = max(1, min(n, config.eval.batch_tokens // length))
  sampling = config_lib.resolve_eval_sampling(config)
  out = np.empty((n, length), np.float64)
  for i in range(0, n, batch):
    x, y = inputs[i:i + batch], targets[i:i + batch]
    real = x.shape[0]
    if real < batch:  # padding rows are computed but not kept
      pad = ((0, batch - real), (0, 0))
      x, y = np.pad(x, pad), np.pad(y, pad)
    pos = sample_positions(sampling, batch, length,
                           config.positions.max_position, rng)
    out[i:i + real] = np.asarray(token_losses(params, x, pos, y))[:real]
  return out


def _summary(length: int, loss: float, tokens: int, nbytes: int) -> dict:
  """Loss per token (nats), perplexity per token, and bits per byte: the
  same total over the UTF-8 bytes the scored tokens decode to
  (``tokenizer.byte_lengths``; EOD is one byte, its newline). With bytes,
  tokens == bytes and bits per byte is exactly loss / ln 2."""
  return {'length': length, 'loss': loss, 'perplexity': math.exp(loss),
          'bits_per_byte': loss * (tokens / nbytes) / math.log(2),
          'bytes': nbytes}


def _scored_bytes(targets: np.ndarray, byte_lengths) -> int:
  if byte_lengths is None:  # the byte tokenizer: one byte per token
    return int(targets.size)
  return int(np.asarray(byte_lengths)[targets].sum())


def loss_at_length(token_losses, params, config, stream: np.ndarray,
                   length: int, byte_lengths=None) -> dict:
  """Non-overlapping windows: mean loss over the scored tokens, the mean
  loss at each position and (``per_window``, not saved) every window's
  per-token losses ``[windows, length]``. ``byte_lengths`` (the
  tokenizer's; None: bytes) gives bits per byte."""
  inputs, targets = windows.eval_windows(stream, length, config.eval.tokens)
  losses = _window_losses(token_losses, params, config, inputs, targets,
                          windows.step_rng(config.eval.seed, length))
  per_position = losses.mean(axis=0)
  return {**_summary(length, float(per_position.mean()), losses.size,
                     _scored_bytes(targets, byte_lengths)),
          'windows': inputs.shape[0], 'tokens': losses.size,
          'per_position': per_position, 'per_window': losses}


def sliding_stride(config, length: int) -> int:
  """``config.eval.sliding_stride`` tokens, or a quarter of ``length``."""
  stride = config.eval.sliding_stride or max(1, length // 4)
  return min(stride, length)


def sliding_loss_at_length(token_losses, params, config, stream: np.ndarray,
                           length: int, byte_lengths=None) -> dict:
  """The sliding-window protocol: windows every ``stride`` tokens, each
  scoring only its last ``stride`` targets (Press et al. 2022 compare it
  with non-overlapping windows). The scored tokens are the same as in
  ``loss_at_length``; each gets at least ``length - stride`` tokens of
  context, except in the first window."""
  stride = sliding_stride(config, length)
  inputs, targets, scored = windows.sliding_windows(
      stream, length, config.eval.tokens, stride)
  losses = _window_losses(token_losses, params, config, inputs, targets,
                          windows.step_rng(config.eval.seed, length, 1))
  loss = float(losses[scored].mean())
  return {**_summary(length, loss, int(scored.sum()),
                     _scored_bytes(targets[scored], byte_lengths)),
          'stride': stride,
          'windows': inputs.shape[0], 'tokens': int(scored.sum())}


def make_stats_fn(graphdef):
  """The jitted ``(params, tokens, positions) -> [per layer {'entropy',
  'max_logit'}]``, each ``[B, T]``, from the model's attention layers."""

  @jax.jit
  def stats(params, tokens, positions):
    probe = model_lib.Probe(stats=True)
    nnx.merge(graphdef, params)(tokens, positions, probe=probe)
    return probe.stats

  return stats


def attention_diagnostics(graphdef, params, config, stream: np.ndarray,
                          length: int, count: int) -> dict:
  """Attention entropy and maximum logit per layer against position, from
  ``count`` validation windows of ``length`` tokens, bucketed like the
  per-position loss. See ``lmx.model.attention.attention_stats``."""
  inputs, _ = windows.eval_windows(stream, length, count * length)
  stats_fn = make_stats_fn(graphdef)
  sampling = config_lib.resolve_eval_sampling(config)
  rng = windows.step_rng(config.eval.seed, length, 2)
  sums = None
  for x in inputs:  # one window at a time: the logits are T x T per layer
    pos = sample_positions(sampling, 1, length, config.positions.max_position,
                           rng)
    layers = jax.device_get(stats_fn(params, x[None], pos))
    got = [{k: np.asarray(v[0], np.float64) for k, v in layer.items()}
           for layer in layers]
    sums = got if sums is None else [
        {k: s[k] + g[k] for k in s} for s, g in zip(sums, got)]
  n = inputs.shape[0]
  edges = bucket_edges(length, config.eval.position_buckets)
  out_layers = []
  for i, layer in enumerate(sums):
    row = {'layer': i}
    for k, total in layer.items():
      row[k] = [float(total[a:b].mean() / n) for a, b in edges]
    out_layers.append(row)
  return {'length': length, 'train_length': config.train.seq_len,
          'windows': n,
          'buckets': [{'start': a, 'end': b} for a, b in edges],
          'layers': out_layers}


def bucket_edges(length: int, buckets: int) -> list[tuple[int, int]]:
  """``buckets`` (at most ``length``) near-equal ranges of positions."""
  edges = np.linspace(0, length, min(buckets, length) + 1)
  edges = np.unique(edges.astype(int))
  return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def log_bucket_edges(length: int, buckets: int) -> list[tuple[int, int]]:
  """At most ``buckets`` ranges of positions ``[a, b)`` whose 1-based ends
  are near-evenly spaced on a log scale: single positions first, wider
  ranges further on. They tile ``0 .. length``."""
  edges = np.geomspace(1, length + 1, min(buckets, length) + 1)
  edges = np.unique(np.round(edges).astype(int)) - 1
  edges[0], edges[-1] = 0, length
  edges = np.unique(edges)
  return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def position_profile(per_window: np.ndarray, edges) -> list[dict]:
  """Per range of positions ``(a, b)`` in ``edges``: the mean loss over all
  windows (``loss``) and the 25th, 50th and 75th percentiles over windows
  of each window's mean loss in that range (``q25``, ``median``, ``q75``).
  ``per_window`` is ``[windows, length]``."""
  out = []
  for a, b in edges:
    means = per_window[:, a:b].mean(axis=1)
    q25, q50, q75 = np.percentile(means, (25, 50, 75))
    out.append({'start': a, 'end': b, 'loss': float(means.mean()),
                'q25': float(q25), 'median': float(q50), 'q75': float(q75)})
  return out


def per_position_result(row: dict, config) -> dict:
  """per_position.json: the loss by position at ``row``'s length, in equal
  ranges (``buckets``) and log-spaced ranges (``log_buckets``), each with
  the interquartile range over windows."""
  length = row['length']
  buckets = config.eval.position_buckets
  return {'length': length, 'train_length': config.train.seq_len,
          'windows': int(row['per_window'].shape[0]),
          'band': 'q25-q75: interquartile range over windows of each '
                  "window's mean loss in the range",
          'buckets': position_profile(row['per_window'],
                                      bucket_edges(length, buckets)),
          'log_buckets': position_profile(row['per_window'],
                                          log_bucket_edges(length, buckets))}


def config_dict(config: ml_collections.ConfigDict) -> dict:
  """The complete config as plain JSON values."""
  return json.loads(config.to_json())


def tensorboard_scalars(results: dict, prefix: str = 'eval') -> dict:
  """``{tag: value}`` of an evaluation, for TensorBoard: ``<prefix>/loss_len
  <L>`` (and bits_per_byte, perplexity, sliding_loss; accuracy and
  token_accuracy for a task run), one tag per length."""
  out = {}
  for r in results['results']:
    for key in ('loss', 'bits_per_byte', 'perplexity', 'accuracy',
                'token_accuracy'):
      if r.get(key) is not None:
        out[f'{prefix}/{key}_len{r["length"]}'] = r[key]
  for r in results.get('sliding') or ():
    out[f'{prefix}/sliding_loss_len{r["length"]}'] = r['loss']
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

  results.json records the complete config of the evaluation (``config``)
  and the command line's ``--config.<field>`` items (``overrides``), which
  the plot titles also show. The scalars go to the run's TensorBoard
  folder too (``write_tensorboard``). With ``progress`` (and in the primary
  process) a line is printed per length evaluated.

  A text run gets loss against length (both protocols), per-position loss
  and attention diagnostics, and on request (``config.eval.generation``,
  ``config.eval.ood``) generation quality at length
  (``lmx.evaluation.generation``) and LM-Infinite's out-of-distribution factors
  (``lmx.evaluation.ood``), each checked before anything compiles; a
  task run gets accuracy against length (and
  the passkey grid), see ``evaluate_task_run``.
  """
  _check_same_task(config, workdir)  # first: the clearest message
  config_lib.validate(config)
  if config.task.name:
    config_lib.require(
        not config.eval.generation,
        'config.eval.generation scores continuations of text documents; '
        f'this is a {config.task.name!r} task run. Drop '
        '--config.eval.generation=true (task runs report exact match).')
    return evaluate_task_run(config, workdir, lengths, out_dir, plots, step,
                             overrides, progress)
  run_lengths, skipped = config_lib.eval_lengths(config, lengths)
  if not run_lengths:
    raise config_lib.ConfigError(
        'No evaluation length can be run with this config: '
        + ' '.join(skipped.values()))
  dense = [n for n in run_lengths
           if n <= max(config.model.chunk_threshold, 1)]
  config_lib.require(
      not config.eval.ood or dense,
      'config.eval.ood=true needs each layer\'s dense logits, taken at the '
      'longest evaluation length up to config.model.chunk_threshold='
      f'{config.model.chunk_threshold}, but every length asked for '
      f'({", ".join(map(str, run_lengths))}) is longer. Add a shorter length '
      '(--lengths) or raise config.model.chunk_threshold.')
  checkpoint.require_checkpoint(workdir, step)
  tok = subword.for_run(config, workdir)  # the run's own tokenizer
  out_dir = checkpoint.make_writable_dir(
      out_dir or os.path.join(workdir, 'eval'), 'The evaluation folder')
  stream = store.open_split(config.data, 'validation', tok)
  byte_lengths = None if tok.kind == 'bytes' else tok.byte_lengths
  for length in run_lengths:  # refuse before compiling anything
    windows.eval_windows(stream, length, config.eval.tokens)
    memory.check_evaluation(config, length)
  gen_plan = (generation_eval.plan(config, stream.documents())
              if config.eval.generation else None)

  graphdef, params, step = run_state.load_params(config, workdir, step)
  token_losses = make_loss_fn(graphdef)
  rows, sliding = [], []
  report = _progress(progress and jax.process_index() == 0)
  for i, length in enumerate(run_lengths, 1):
    rows.append(loss_at_length(token_losses, params, config, stream, length,
                               byte_lengths))
    if config.eval.sliding:
      sliding.append(sliding_loss_at_length(token_losses, params, config,
                                            stream, length, byte_lengths))
    report(i, len(run_lengths), length, rows[-1])
  longest = rows[-1]
  results = {
      'kind': 'lm',
      'workdir': os.path.abspath(workdir), 'step': step,
      'position': config.model.position,
      'train_sampling': config.positions.train,
      'eval_sampling': config_lib.resolve_eval_sampling(config),
      'train_length': config.train.seq_len,
      'tokenizer': tok.describe(),
      'results': [{k: v for k, v in r.items()
                   if k not in ('per_position', 'per_window')} for r in rows],
      'sliding': sliding,
      'sliding_stride': config.eval.sliding_stride,
      'skipped': {str(k): v for k, v in skipped.items()},
      'overrides': dict(overrides or {}),
      'config': config_dict(config),
  }
  per_position = per_position_result(longest, config)
  per_position['tokenizer'] = tok.describe()
  diagnostics = None
  # The statistics need each layer's dense T x T logits: taken at the
  # longest length the dense backend would run (config.model.
  # chunk_threshold), so a 64k evaluation does not build 64k x 64k arrays.
  diag_rows = [r for r in rows
               if r['length'] <= max(config.model.chunk_threshold, 1)]
  if config.eval.diagnostics_windows and diag_rows:
    diagnostics = attention_diagnostics(
        graphdef, params, config, stream, diag_rows[-1]['length'],
        min(config.eval.diagnostics_windows, diag_rows[-1]['windows']))
  generation = None
  if gen_plan is not None:
    gen_pos, gen_skipped, gen_docs = gen_plan
    generation = ({'train_length': config.train.seq_len, 'rows': [],
                   'skipped': gen_skipped,
                   'tokens': config.eval.generation_tokens, 'documents': 0,
                   'position': config.model.position}
                  if not gen_pos else generation_eval.generation_quality(
                      graphdef, params, config, gen_pos, gen_skipped,
                      gen_docs, tok))
  ood = None
  if config.eval.ood and diag_rows:
    length = diag_rows[-1]['length']
    ood = ood_diagnostics.diagnose(
        graphdef, params, config, stream, length,
        bucket_edges(length, config.eval.position_buckets))
  write_json(os.path.join(out_dir, 'results.json'), results)
  write_json(os.path.join(out_dir, 'per_position.json'), per_position)
  if ood is not None:
    write_json(os.path.join(out_dir, 'ood.json'), ood)
    if plots:
      ood_diagnostics.plot(ood, os.path.join(out_dir, 'ood.png'), overrides)
  if generation is not None:
    write_json(os.path.join(out_dir, 'generation.json'), generation)
    if plots and generation['rows']:
      generation_eval.plot(generation,
                           os.path.join(out_dir, 'generation.png'), overrides)
  if diagnostics is not None:
    write_json(os.path.join(out_dir, 'attention.json'), diagnostics)
  if jax.process_index() == 0:
    write_tensorboard(workdir, results, overrides)
  if plots:
    plot_loss_vs_length(results, os.path.join(out_dir, 'loss_vs_length.png'))
    plot_per_position(per_position, config.model.position,
                      os.path.join(out_dir, 'per_position.png'), overrides)
    if diagnostics is not None:
      plot_attention(diagnostics, config.model.position,
                     os.path.join(out_dir, 'attention.png'), overrides)
  results['per_position'] = per_position
  results['attention'] = diagnostics
  results['generation'] = generation
  results['ood'] = ood
  return results


def _check_same_task(config, workdir: str) -> None:
  """An evaluation must fit the run's data: a task's metric on a model
  trained for that task, text metrics on a text model."""
  if not os.path.isfile(os.path.join(workdir, checkpoint.CONFIG_FILE)):
    return  # require_checkpoint reports the missing run
  trained = checkpoint.read_config(workdir).task.name
  asked = config.task.name
  if asked != trained:
    what = lambda n: f'the {n!r} task' if n else 'text (language modelling)'
    raise config_lib.ConfigError(
        f'{workdir} was trained on {what(trained)}, so it cannot be evaluated '
        f'on {what(asked)}: config.task.name={asked!r} does not fit the run. '
        f'Drop the --config.task.name override, or train a model for '
        f'{what(asked)}.')


def evaluate_task_run(config: ml_collections.ConfigDict, workdir: str,
                      lengths: Optional[Sequence[int]] = None,
                      out_dir: Optional[str] = None, plots: bool = True,
                      step: Optional[int] = None,
                      overrides: Optional[dict] = None,
                      progress: bool = True) -> dict:
  """Exact-match accuracy against task length (lmx.evaluation.task_accuracy); results.json
  and TensorBoard as in ``evaluate``."""
  run_lengths, skipped = config_lib.task_eval_lengths(config, lengths)
  if not run_lengths:
    raise config_lib.ConfigError(
        'No task length can be evaluated with this config: '
        + ' '.join(skipped.values()))
  out_dir = checkpoint.make_writable_dir(
      out_dir or os.path.join(workdir, 'eval'), 'The evaluation folder')
  graphdef, params, step = run_state.load_params(config, workdir, step)
  results = task_eval.evaluate_task(
      config, run_state.apply_fn(graphdef), params, lengths=run_lengths,
      progress=_progress(progress and jax.process_index() == 0))
  results.update(workdir=os.path.abspath(workdir), step=step,
                 skipped={str(k): v for k, v in skipped.items()},
                 overrides=dict(overrides or {}),
                 config=config_dict(config))
  write_json(os.path.join(out_dir, 'results.json'), results)
  if jax.process_index() == 0:
    write_tensorboard(workdir, results, overrides)
  if plots:
    task_eval.plot_accuracy_vs_length(
        results, os.path.join(out_dir, 'accuracy_vs_length.png'))
    if 'passkey' in results:
      task_eval.plot_passkey_heatmap(
          results, os.path.join(out_dir, 'passkey_heatmap.png'))
  return results


def write_json(path: str, data) -> None:
  """Written whole or not at all: a reader never sees half a file."""
  with open(path + '.tmp', 'w') as f:
    json.dump(data, f, indent=2)
  os.replace(path + '.tmp', path)


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


def plot_loss_vs_length(results: dict, path: str) -> None:
  """Loss against length (both protocols), training length marked; the
  title shows the evaluation overrides."""
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  xs = [r['length'] for r in results['results']]
  ys = [r['loss'] for r in results['results']]
  ax.plot(xs, ys, marker='o', label=f"{results['position']}: "
          'non-overlapping windows')
  if results.get('sliding'):
    stride = results.get('sliding_stride') or 'length/4'
    ax.plot([r['length'] for r in results['sliding']],
            [r['loss'] for r in results['sliding']], marker='s',
            linestyle=':', label=f"{results['position']}: sliding windows "
            f'(stride {stride})')
  ax.axvline(results['train_length'], color='gray', linestyle='--',
             label=f'training length ({results["train_length"]})')
  plots.length_axis(ax, xs)
  ax.set_xlabel('evaluation length (tokens, log scale)')
  ax.set_ylabel(f'loss (nats / {_unit(results)})')
  ax.set_title(plots.titled(f'{results["position"]}: loss against length '
                            f'(step {results["step"]})',
                            results.get('overrides')), fontsize=10, wrap=True)
  ax.grid(True, alpha=0.3)
  plots.legend_outside(ax, 'below')
  fig.tight_layout()
  plots.save(fig, path)


def _unit(results: dict) -> str:
  """What one token is: a byte, or a subword token."""
  kind = (results.get('tokenizer') or {}).get('kind', 'bytes')
  return 'byte' if kind == 'bytes' else 'subword token'


def plot_per_position(per_position: dict, name: str, path: str,
                      overrides=None) -> None:
  """Mean loss against position on a log axis (log-spaced ranges of
  positions), with the interquartile range over windows as a band and the
  training length marked. Files written before ``log_buckets`` existed
  are drawn from their equal ranges, without a band."""
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(6.5, 4))
  b = per_position.get('log_buckets') or per_position['buckets']
  # 1-based positions, so the first token sits at 1 on the log axis; a
  # range is drawn at its geometric middle.
  xs = [math.sqrt((x['start'] + 1) * x['end']) for x in b]
  ax.plot(xs, [x['loss'] for x in b], marker='.', markersize=4,
          label=f'{name}: mean over windows')
  if all('q25' in x for x in b):
    windows_n = per_position.get('windows')
    ax.fill_between(xs, [x['q25'] for x in b], [x['q75'] for x in b],
                    alpha=0.25, linewidth=0,
                    label='25th-75th percentile over '
                    f'{windows_n or "the"} windows')
  t = per_position['train_length']
  ax.axvline(t, color='gray', linestyle='--',
             label=f'training length ({t})')
  ax.set_xscale('log')
  ax.xaxis.set_major_formatter(plots.plain_numbers())
  ax.set_xlim(1, per_position['length'])
  ax.set_xlabel('position in the window (1 = first token, log scale)')
  ax.set_ylabel(f'mean loss (nats / {_unit(per_position)})')
  ax.set_title(plots.titled(f'{name}: loss by position at length '
                            f'{per_position["length"]}', overrides),
               fontsize=10, wrap=True)
  ax.grid(True, which='both', alpha=0.3)
  plots.legend_outside(ax, 'below')
  fig.tight_layout()
  plots.save(fig, path)


def plot_attention(diagnostics: dict, name: str, path: str,
                   overrides=None) -> None:
  """Attention entropy and maximum logit against position, one curve per
  layer, training length marked."""
  plt = plots.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  xs = [(b['start'] + b['end'] - 1) / 2 for b in diagnostics['buckets']]
  for key, ax, label in (('entropy', axes[0], 'attention entropy (nats)'),
                         ('max_logit', axes[1], 'largest attention logit')):
    for layer in diagnostics['layers']:
      ax.plot(xs, layer[key], marker='.', label=f'layer {layer["layer"]}')
    ax.axvline(diagnostics['train_length'], color='gray', linestyle='--',
               label=f'training length ({diagnostics["train_length"]})')
    ax.set_xlabel('query position (token index)')
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
  axes[0].plot(xs, np.log(np.asarray(xs) + 1), color='black', linewidth=0.8,
               linestyle=':', label='uniform: log(position + 1)')
  # One legend for both panels (the layers, the training length, the
  # uniform entropy), right of them.
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc='upper left', bbox_to_anchor=(1.0, 0.9),
             fontsize=8)
  fig.suptitle(plots.titled(f'{name}: attention at length '
                            f'{diagnostics["length"]} '
                            f'({diagnostics["windows"]} windows)', overrides))
  fig.tight_layout()
  plots.save(fig, path)
