"""Evaluation at unseen lengths: loss against length, per-position loss, plots.

For each length ``L`` the validation stream is cut into non-overlapping
windows of ``L`` tokens (``lmx.data.windows.eval_windows``); the same first
``config.eval.tokens`` tokens are scored at every length, so lengths differ
only in how much context each token gets. Positions follow
``config.positions.eval`` ('train' = the training sampling).
"""

from __future__ import annotations

import json
import math
import os
from typing import Optional, Sequence

import jax
import ml_collections
import numpy as np

from lmx import checkpoint
from lmx import config as config_lib
from lmx import model as model_lib
from lmx import trainer
from lmx.data import corpus, windows
from lmx.positions import sample_positions


def make_loss_fn(graphdef):
  apply = trainer.apply_fn(graphdef)

  @jax.jit
  def token_losses(params, inputs, positions, targets):
    logits = apply(params, inputs, positions)
    return model_lib.cross_entropy(logits, targets)

  return token_losses


def loss_at_length(token_losses, params, config, stream: np.ndarray,
                   length: int) -> dict:
  """Mean loss over the scored tokens and the mean loss at each position."""
  e = config.eval
  inputs, targets = windows.eval_windows(stream, length, e.tokens)
  n = inputs.shape[0]
  batch = max(1, min(n, e.batch_tokens // length))
  sampling = config_lib.resolve_eval_sampling(config)
  rng = windows.step_rng(e.seed, length)
  total = np.zeros((length,), np.float64)
  for i in range(0, n, batch):
    x, y = inputs[i:i + batch], targets[i:i + batch]
    real = x.shape[0]
    if real < batch:  # pad to one compiled shape; padding is not scored
      pad = ((0, batch - real), (0, 0))
      x, y = np.pad(x, pad), np.pad(y, pad)
    pos = sample_positions(sampling, batch, length,
                           config.positions.max_position, rng)
    losses = np.asarray(token_losses(params, x, pos, y), np.float64)[:real]
    total += losses.sum(axis=0)
  per_position = total / n
  loss = float(per_position.mean())
  return {'length': length, 'loss': loss, 'perplexity': math.exp(loss),
          'bits_per_byte': loss / math.log(2), 'windows': n,
          'tokens': n * length, 'per_position': per_position}


def bucket(per_position: np.ndarray, buckets: int) -> list[dict]:
  """Mean loss over ``buckets`` equal ranges of positions."""
  edges = np.linspace(0, per_position.size, min(buckets, per_position.size) + 1)
  edges = np.unique(edges.astype(int))
  return [{'start': int(a), 'end': int(b),
           'loss': float(per_position[a:b].mean())}
          for a, b in zip(edges[:-1], edges[1:])]


def load_params(config, workdir: str, step: Optional[int] = None):
  """(graphdef, params) restored from the workdir's checkpoint."""
  graphdef, target = trainer.abstract_state(config)
  step = checkpoint.require_checkpoint(workdir, step)
  state = checkpoint.load(workdir, step, target)
  return graphdef, state['params'], int(state['step'])


def evaluate(config: ml_collections.ConfigDict, workdir: str,
             lengths: Optional[Sequence[int]] = None,
             out_dir: Optional[str] = None, plots: bool = True,
             step: Optional[int] = None) -> dict:
  """Evaluates a checkpoint (default: the latest); writes JSON and PNGs."""
  config_lib.validate(config)
  run_lengths, skipped = config_lib.eval_lengths(config, lengths)
  if not run_lengths:
    raise config_lib.ConfigError(
        'No evaluation length can be run with this config: '
        + ' '.join(skipped.values()))
  checkpoint.require_checkpoint(workdir, step)
  stream = corpus.token_stream(corpus.load_documents(config.data, 'validation'))
  for length in run_lengths:  # refuse before compiling anything
    windows.eval_windows(stream, length, config.eval.tokens)

  graphdef, params, step = load_params(config, workdir, step)
  token_losses = make_loss_fn(graphdef)
  rows = []
  for length in run_lengths:
    r = loss_at_length(token_losses, params, config, stream, length)
    rows.append(r)
  longest = rows[-1]
  results = {
      'workdir': os.path.abspath(workdir), 'step': step,
      'position': config.model.position,
      'train_sampling': config.positions.train,
      'eval_sampling': config_lib.resolve_eval_sampling(config),
      'train_length': config.train.seq_len,
      'results': [{k: v for k, v in r.items() if k != 'per_position'}
                  for r in rows],
      'skipped': {str(k): v for k, v in skipped.items()},
  }
  per_position = {
      'length': longest['length'], 'train_length': config.train.seq_len,
      'buckets': bucket(longest['per_position'], config.eval.position_buckets),
  }
  out_dir = out_dir or os.path.join(workdir, 'eval')
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'results.json'), 'w') as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(out_dir, 'per_position.json'), 'w') as f:
    json.dump(per_position, f, indent=2)
  if plots:
    plot_loss_vs_length(results, os.path.join(out_dir, 'loss_vs_length.png'))
    plot_per_position(per_position, config.model.position,
                      os.path.join(out_dir, 'per_position.png'))
  results['per_position'] = per_position
  return results


def format_table(results: dict) -> str:
  """A markdown table of loss and perplexity against length."""
  train_len = results['train_length']
  lines = ['| length | x train | loss (nats) | bits/byte | perplexity |',
           '|---:|---:|---:|---:|---:|']
  for r in results['results']:
    lines.append(f"| {r['length']} | {r['length'] / train_len:g} | "
                 f"{r['loss']:.4f} | {r['bits_per_byte']:.4f} | "
                 f"{r['perplexity']:.3f} |")
  for length in results.get('skipped', {}):
    lines.append(f'| {length} | {int(length) / train_len:g} | n/a | n/a | '
                 'n/a |')
  return '\n'.join(lines)


def pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def length_axis(ax, lengths) -> None:
  """A log2 length axis labelled with the plain lengths."""
  ax.set_xscale('log', base=2)
  ticks = sorted(set(lengths))
  ax.set_xticks(ticks)
  ax.set_xticklabels([str(t) for t in ticks])
  ax.minorticks_off()


def plot_loss_vs_length(results: dict, path: str) -> None:
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  xs = [r['length'] for r in results['results']]
  ys = [r['loss'] for r in results['results']]
  ax.plot(xs, ys, marker='o', label=results['position'])
  ax.axvline(results['train_length'], color='gray', linestyle='--',
             label=f'training length ({results["train_length"]})')
  length_axis(ax, xs)
  ax.set_xlabel('evaluation length (tokens)')
  ax.set_ylabel('loss (nats / byte)')
  ax.set_title(f'{results["position"]}: loss against length '
               f'(step {results["step"]})')
  ax.grid(True, alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_per_position(per_position: dict, name: str, path: str) -> None:
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  b = per_position['buckets']
  xs = [(x['start'] + x['end'] - 1) / 2 for x in b]
  ax.plot(xs, [x['loss'] for x in b], marker='.', label=name)
  ax.axvline(per_position['train_length'], color='gray', linestyle='--',
             label=f'training length ({per_position["train_length"]})')
  ax.set_xlabel('position in the sequence (token index)')
  ax.set_ylabel('mean loss (nats / byte)')
  ax.set_title(f'{name}: loss by position at length {per_position["length"]}')
  ax.grid(True, alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
