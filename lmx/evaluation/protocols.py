"""The evaluation protocols: the loss of windows at a length (non-overlapping
and sliding), the loss by position, attention statistics, and their plots.

For each length ``L`` the validation stream is cut into non-overlapping
windows of ``L`` tokens (``lmx.data.windows.eval_windows``); the same first
``config.eval.tokens`` tokens are scored at every length, so lengths differ
only in how much context each token gets. Positions follow
``config.positions.eval`` ('train' = the training sampling). The
evaluators (``lmx.evaluation.evaluators``) run them; ``lmx.evaluation.
runner`` names them for the code that calls them directly.
"""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np
from flax import nnx

from lmx.config import validate as config_lib
from lmx.data import windows
from lmx.evaluation import plots
from lmx.model import transformer as model_lib
from lmx.positions import sample_positions
from lmx.training import run_state

def make_loss_fn(graphdef):
  apply = run_state.apply_fn(graphdef)

  @jax.jit
  def token_losses(params, inputs, positions, targets):
    logits = apply(params, inputs, positions)
    return model_lib.cross_entropy(logits, targets)

  return token_losses


def mesh_loss_fn(graphdef, mesh, split_rows: bool = True):
  """``make_loss_fn`` on ``mesh``, for parameters placed by its rules
  (``sharding.tree_shardings``): with ``split_rows`` the windows' rows
  split over its data axes where they divide, else replicated; heads and
  the MLP split over its tensor axis as the parameters are; the losses come
  back replicated. Same arguments as ``make_loss_fn``'s function, as host
  arrays."""
  from lmx import sharding  # pylint: disable=g-import-not-at-top
  rep = sharding.replicated(mesh)
  rows = sharding.batch_sharding(mesh)
  split = mesh.shape['data'] * mesh.shape['fsdp']
  losses = jax.jit(make_loss_fn(graphdef), out_shardings=rep)

  def token_losses(params, *arrays):
    divides = np.shape(arrays[0])[0] % split == 0
    where = rows if split_rows and divides else rep
    return losses(params, *(sharding.place(a, where) for a in arrays))

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


def write_json(path: str, data) -> None:
  """Written whole or not at all: a reader never sees half a file."""
  with open(path + '.tmp', 'w') as f:
    json.dump(data, f, indent=2)
  os.replace(path + '.tmp', path)


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
