"""Accuracy against length on the algorithmic tasks of ``lmx.data.tasks``.

For every evaluation length ``n`` (``config.task.eval_lengths`` or the
default grid 1..5L) ``config.task.eval_examples`` fresh examples are drawn
from ``(config.eval.seed, n)`` (and the depth, for passkey, which is
evaluated at every ``config.task.depths``). The metric is **teacher-forced
exact match**: the model reads the whole example (prompt and the true
answer) in one forward pass, and an example counts as correct iff the
argmax of the logits equals the target at every answer token (the answer
and its closing EOD). ``token_accuracy`` is the fraction of answer tokens
right, ``loss`` the mean cross-entropy (nats) over answer tokens.

Exact match so defined equals that of greedy decoding: when every
teacher-forced argmax is right, greedy decoding sees the true prefix at each
step and emits the same tokens; when greedy decoding is right, its prefixes
were the true ones. (Token accuracy has no such equivalence.)

Positions follow ``config.positions.eval`` ('train' = the training
sampling), drawn per length from the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lmx.positions import sampling
from lmx.config import validate as config_lib
from lmx.evaluation import plots
from lmx.data import tasks


def _bucket(t: int) -> int:
  """Compiled width for a sequence of t tokens: at most ~25% padding.

  Padding goes to the right and attention is causal, so the extra tokens
  change nothing before them; bucketing keeps the number of compilations
  logarithmic in the longest length instead of one per length.
  """
  g = max(8, 2 ** (int(t).bit_length() - 3))
  return -(-int(t) // g) * g


def _pad_to(batch: dict, rows: int, width: int) -> dict:
  """Pads a batch to ``[rows, width]``: EOD tokens, weight 0, last position."""
  b, t = batch['inputs'].shape
  out = {}
  for k in ('inputs', 'targets', 'weights'):
    out[k] = np.pad(batch[k], ((0, rows - b), (0, width - t)),
                    constant_values=tasks.PAD if k != 'weights' else 0)
  pos = np.pad(batch['positions'], ((0, rows - b), (0, 0)), mode='edge')
  out['positions'] = np.pad(pos, ((0, 0), (0, width - t)), mode='edge')
  return out


def make_score_fn(apply_fn: Callable) -> Callable:
  """Jitted per-example (exact, correct tokens, loss sum, answer tokens)."""
  def score(params, inputs, positions, targets, weights):
    logits = apply_fn(params, inputs, positions).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    hit = jnp.argmax(logits, axis=-1) == targets
    answer = weights > 0
    return {'exact': jnp.all(hit | ~answer, axis=1),
            'correct': jnp.sum(hit & answer, axis=1),
            'loss': jnp.sum(jnp.where(answer, nll, 0.0), axis=1),
            'tokens': jnp.sum(answer, axis=1)}
  return jax.jit(score)


def score_batch(score, params, batch: dict, batch_tokens: int) -> dict:
  """Sums of the score over a batch, run in chunks of ~batch_tokens."""
  n, t = batch['inputs'].shape
  width = _bucket(t)
  rows = max(1, min(n, batch_tokens // width))
  total = {'exact': 0, 'correct': 0, 'loss': 0.0, 'tokens': 0, 'examples': n}
  for i in range(0, n, rows):
    chunk = {k: v[i:i + rows] for k, v in batch.items()}
    real = chunk['inputs'].shape[0]
    chunk = _pad_to(chunk, rows, width)
    out = jax.device_get(score(params, chunk['inputs'], chunk['positions'],
                               chunk['targets'], chunk['weights']))
    for k in ('exact', 'correct', 'tokens'):
      total[k] += int(np.asarray(out[k])[:real].sum())
    total['loss'] += float(np.asarray(out['loss'], np.float64)[:real].sum())
  return total


def _row(length: int, s: dict) -> dict:
  return {'length': int(length), 'accuracy': s['exact'] / s['examples'],
          'token_accuracy': s['correct'] / max(s['tokens'], 1),
          'loss': s['loss'] / max(s['tokens'], 1),
          'examples': int(s['examples'])}


def evaluate_task(config, apply_fn: Callable, params, *,
                  lengths: Sequence[int] | None = None,
                  progress: Callable | None = None) -> dict:
  """Teacher-forced exact-match accuracy per length of ``config.task``.

  ``apply_fn(params, tokens [B,T], positions [B,T]) -> logits [B,T,V]``.
  Returns ``{'kind': 'task', 'task', 'position', 'train_sampling',
  'eval_sampling', 'train_length', 'results': [{'length', 'accuracy',
  'token_accuracy', 'loss', 'examples'}]}``; passkey adds ``'passkey':
  {'lengths', 'depths', 'accuracy'}`` with one row of accuracies (one per
  length) for each depth. The results row of a passkey length pools all
  depths. ``progress(i, n, length, row)``, if given, is called after each
  length.
  """
  tc = config.task
  tasks.get_task(tc.name)
  lengths = sorted({int(n) for n in lengths}) if lengths else \
      tasks.eval_lengths(tc)
  sampling = config_lib.resolve_eval_sampling(config)
  depths = list(tc.depths) if tc.name == 'passkey' else [None]
  score = make_score_fn(apply_fn)
  rows, grid = [], [[0.0] * len(lengths) for _ in depths]
  for j, n in enumerate(lengths):
    pooled = None
    for i, depth in enumerate(depths):
      batch = tasks.eval_batch(config, length=n, count=tc.eval_examples,
                               seed=config.eval.seed, depth=depth,
                               sampling=sampling)
      s = score_batch(score, params, batch, config.eval.batch_tokens)
      grid[i][j] = s['exact'] / s['examples']
      pooled = s if pooled is None else {k: pooled[k] + s[k] for k in s}
    rows.append(_row(n, pooled))
    if progress is not None:
      progress(j + 1, len(lengths), n, rows[-1])
  out = {'kind': 'task', 'task': tc.name, 'position': config.model.position,
         'train_sampling': config.positions.train, 'eval_sampling': sampling,
         'train_length': int(tc.train_max_length), 'results': rows}
  if tc.name == 'passkey':
    out['passkey'] = {'lengths': list(lengths),
                      'depths': [float(d) for d in depths], 'accuracy': grid}
  return out


def format_task_table(results: dict) -> str:
  """Markdown: accuracy, token accuracy and answer loss against length
  (and, for passkey, accuracy by depth and length)."""
  train_len = results['train_length']
  title = (f"{results['task']} ({results['position']}, positions "
           f"{results['train_sampling']} -> {results['eval_sampling']}), "
           f'trained on lengths up to {train_len}')
  title = plots.titled(title, results.get('overrides'), width=None) + ':'
  header = ('| length | x train | exact match | token accuracy | answer loss '
            '| examples |')
  lines = [title, '', header, '|---:|---:|---:|---:|---:|---:|']
  for r in results['results']:
    lines.append(f"| {r['length']} | {r['length'] / train_len:.2g} | "
                 f"{r['accuracy']:.3f} | {r['token_accuracy']:.3f} | "
                 f"{r['loss']:.4f} | {r['examples']} |")
  pk = results.get('passkey')
  if pk:
    lines += ['', 'passkey exact match (rows: depth, columns: length):', '',
              '| depth | ' + ' | '.join(map(str, pk['lengths'])) + ' |',
              '|---:|' + '---:|' * len(pk['lengths'])]
    for d, accs in zip(pk['depths'], pk['accuracy']):
      lines.append(f'| {d:g} | ' + ' | '.join(f'{a:.2f}' for a in accs)
                   + ' |')
  return '\n'.join(lines)


def _label(results: dict) -> str:
  s = results['train_sampling']
  return results['position'] + ('' if s == sampling.DEFAULT else f' ({s})')


def plot_accuracy_vs_length(results, path: str) -> None:
  """Exact match against length; ``results`` is one result dict or a list
  (one line per run, labelled with its encoding). The title shows the
  evaluation overrides of a single result."""
  runs = [results] if isinstance(results, dict) else list(results)
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(6.5, 4))
  xs_all = []
  for r in runs:
    xs = [x['length'] for x in r['results']]
    xs_all += xs
    ax.plot(xs, [x['accuracy'] for x in r['results']], marker='.',
            label=_label(r))
  train_len = runs[0]['train_length']
  ax.axvline(train_len, color='gray', linestyle='--',
             label=f'longest training length ({train_len})')
  ticks = sorted({2 ** k for k in range(
      int(math.log2(max(xs_all))) + 1)} | {max(xs_all)})
  plots.length_axis(ax, ticks)
  ax.set_ylim(-0.03, 1.03)
  ax.set_xlabel('task length n (log2 scale)')
  ax.set_ylabel('exact-match accuracy (teacher-forced)')
  overrides = runs[0].get('overrides') if len(runs) == 1 else None
  ax.set_title(plots.titled(f"{runs[0]['task']}: accuracy against length",
                            overrides), fontsize=10, wrap=True)
  ax.grid(True, alpha=0.3)
  plots.legend_outside(ax)
  fig.tight_layout()
  plots.save(fig, path)


def plot_passkey_heatmap(results: dict, path: str) -> None:
  """Passkey exact match of one run: x = length, y = key depth."""
  pk = results['passkey']
  draw_passkey_heatmap(pk['lengths'], pk['depths'], pk['accuracy'],
                       plots.titled(f'passkey: exact match, {_label(results)}',
                                    results.get('overrides')), path,
                       train_length=results['train_length'])


def draw_passkey_heatmap(lengths, depths, accuracy, title: str, path: str,
                         train_length: int | None = None) -> None:
  """A depth x length heatmap of accuracies (rows = depths), values written
  in the cells and the longest training length marked when it is shown."""
  acc = np.asarray(accuracy, np.float64)
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(lengths) + 2),
                                  0.45 * len(depths) + 2))
  im = ax.imshow(acc, vmin=0.0, vmax=1.0, cmap='viridis', aspect='auto',
                 origin='lower')
  ax.set_xticks(range(len(lengths)))
  ax.set_xticklabels([str(n) for n in lengths], fontsize=7)
  ax.set_yticks(range(len(depths)))
  ax.set_yticklabels([f'{d:g}' for d in depths])
  for i in range(acc.shape[0]):
    for j in range(acc.shape[1]):
      ax.text(j, i, f'{acc[i, j]:.2f}', ha='center', va='center', fontsize=6,
              color='white' if acc[i, j] < 0.5 else 'black')
  trained = ''
  if train_length is not None:
    trained = f'; trained up to {train_length}'
    if train_length in list(lengths):
      ax.axvline(list(lengths).index(train_length) + 0.5, color='red',
                 linestyle='--', linewidth=1)
  ax.set_xlabel(f'length (filler sentences{trained})')
  ax.set_ylabel('depth of the key (0 = start)')
  ax.set_title(title, fontsize=9)
  fig.colorbar(im, ax=ax, label='exact-match accuracy')
  fig.tight_layout()
  plots.save(fig, path)
