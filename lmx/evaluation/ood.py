"""LM-Infinite's out-of-distribution factors (Han et al. 2023, section 3).

Two of the three factors the paper names for the failure of relative
encodings past the pretraining length, measured on one validation window
of the longest evaluation length the dense path reaches:

- **Factor 1, unseen distances** (their Fig. 1a): the attention logits of
  each layer against the relative distance ``i - j`` between query ``i``
  and key ``j`` (token indices), for the last ``config.eval.ood_query_rows``
  queries of the window. Distances are cut into ``eval.position_buckets``
  equal ranges over ``[0, length)``; per bucket: the mean and the maximum
  logit of head ``config.eval.ood_head``, and of the maximum over heads
  (each logit replaced by its largest value across heads). Keys a mask
  hides (LM-Infinite's Lambda mask) do not count; a bucket with no visible
  key is ``None``. Past the training length a rotary encoding's logits
  leave the range they had within it; ALiBi's fall with distance.
- **Factor 3, initial tokens** (their Fig. 1c): a 2-D PCA of the hidden
  states (the output of block ``config.eval.ood_layer``; negative counts
  from the last) of every position of the window, by numpy SVD of the
  centred ``[T, D]`` matrix. The plot colours the points by position and
  rings the first four, to show whether initial tokens sit in a region of
  their own.

(Factor 2, attention entropy, is ``lmx.evaluation.runner.attention_diagnostics``.)
The logits and hidden states come from the model's own forward pass, sown
on request (a ``Probe`` passed to the model),
so every encoding and eval override (Lambda mask, distance clamps, RoPE
scalings) is measured as it runs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lmx.model import attention
from lmx.config import validate as config_lib
from lmx.model import transformer as model_lib
from lmx.evaluation import plots
from lmx.data import windows
from lmx.positions import sample_positions


def make_capture_fn(graphdef, query_rows: int):
  """Jitted ``(params, tokens_1xT, positions_1xT) -> (logits, hidden)``:
  per layer the masked logits of the last ``query_rows`` queries
  ``[H, Q, T]`` (``attention.NEG_INF`` where hidden), and per layer the
  block's output ``[T, D]``."""

  @jax.jit
  def capture(params, tokens, positions):
    probe = model_lib.Probe(logits=True, hidden=True)
    nnx.merge(graphdef, params)(tokens, positions, probe=probe)
    logits = [x[0, :, -query_rows:] for x in probe.logits]
    hidden = [h[0].astype(jnp.float32) for h in probe.hidden]
    return logits, hidden

  return capture


def distance_profile(logits_HxQxT: np.ndarray, query_index: np.ndarray,
                     edges, head: int) -> dict:
  """Mean and max logit per distance bucket for head ``head`` and for the
  maximum over heads; ``query_index`` are the queries' token indices."""
  logits = np.asarray(logits_HxQxT, np.float64)
  t = logits.shape[-1]
  dist_QxT = query_index[:, None] - np.arange(t)[None, :]
  # The mask depends on positions only, so it is the same for every head.
  visible_QxT = (logits[0] > attention.NEG_INF / 2) & (dist_QxT >= 0)
  out = {}
  for name, values in (('head', logits[head]), ('max_heads',
                                                 logits.max(axis=0))):
    mean, top = [], []
    for a, b in edges:
      sel = visible_QxT & (dist_QxT >= a) & (dist_QxT < b)
      mean.append(float(values[sel].mean()) if sel.any() else None)
      top.append(float(values[sel].max()) if sel.any() else None)
    out[f'{name}_mean'] = mean
    out[f'{name}_max'] = top
  return out


def pca_2d(hidden_TxD: np.ndarray) -> dict:
  """The first two principal components of the rows: ``{'points' [T, 2],
  'explained' (fraction of variance of each)}``, by SVD of the centred
  matrix; each component's sign makes its largest-magnitude loading
  positive, so the result does not depend on the SVD's sign choice."""
  x = np.asarray(hidden_TxD, np.float64)
  x = x - x.mean(axis=0, keepdims=True)
  u, s, vt = np.linalg.svd(x, full_matrices=False)
  k = min(2, vt.shape[0])
  for i in range(k):
    if vt[i, np.argmax(np.abs(vt[i]))] < 0:
      vt[i] = -vt[i]
  points = x @ vt[:k].T
  if k < 2:
    points = np.pad(points, ((0, 0), (0, 2 - k)))
  total = float((s ** 2).sum())
  explained = [float(v ** 2 / total) if total else 0.0 for v in s[:2]]
  return {'points': points, 'explained': explained}


def diagnose(graphdef, params, config, stream: np.ndarray, length: int,
             edges) -> dict:
  """Factors 1 and 3 on the first validation window of ``length``;
  ``edges``: the distance buckets, ``[(start, end)]``."""
  e = config.eval
  rows = min(int(e.ood_query_rows), length)
  layers = int(config.model.num_layers)
  layer = int(e.ood_layer) % layers
  inputs, _ = windows.eval_windows(stream, length, length)
  sampling = config_lib.resolve_eval_sampling(config)
  pos = sample_positions(sampling, 1, length, config.positions.max_position,
                         windows.step_rng(e.seed, length, 3))
  logits, hidden = jax.device_get(
      make_capture_fn(graphdef, rows)(params, inputs[:1], pos))
  query_index = np.arange(length - rows, length)
  pca = pca_2d(hidden[layer])
  return {
      'length': length, 'train_length': config.train.seq_len,
      'position': config.model.position, 'eval_sampling': sampling,
      'head': int(e.ood_head), 'query_rows': rows,
      'distance_buckets': [{'start': a, 'end': b} for a, b in edges],
      'layers': [{'layer': i, **distance_profile(lg, query_index, edges,
                                                 int(e.ood_head))}
                 for i, lg in enumerate(logits)],
      'pca': {'layer': layer, 'explained': pca['explained'],
              'points': pca['points'].round(5).tolist()},
  }


def plot(diag: dict, path: str, overrides=None) -> None:
  """Left, middle: mean and max logit against distance per layer (solid:
  the chosen head; dotted: max over heads). Right: the PCA scatter. The
  evaluation's ``overrides`` are in the title."""
  plt = plots.pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
  b = diag['distance_buckets']
  xs = np.array([(x['start'] + x['end'] - 1) / 2 for x in b])
  for key, ax, what in (('mean', axes[0], 'mean'), ('max', axes[1], 'max')):
    for i, layer in enumerate(diag['layers']):
      color = f'C{i % 10}'
      for part, style, text in (('head', '-', f'head {diag["head"]}'),
                                ('max_heads', ':', 'max over heads')):
        ys = np.array([np.nan if v is None else v
                       for v in layer[f'{part}_{key}']])
        ax.plot(xs, ys, linestyle=style, color=color, marker='.',
                markersize=3, label=f'layer {layer["layer"]}, {text}')
    ax.axvline(diag['train_length'], color='gray', linestyle='--',
               label=f'training length ({diag["train_length"]})')
    ax.set_xlabel('relative distance i - j (tokens)')
    ax.set_ylabel(f'{what} attention logit')
    ax.set_title(f'Factor 1: {what} logit of the last {diag["query_rows"]} '
                 'queries', fontsize=10)
    ax.grid(True, alpha=0.3)
  axes[1].legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  pts = np.asarray(diag['pca']['points'])
  ax = axes[2]
  sc = ax.scatter(pts[:, 0], pts[:, 1], c=np.arange(len(pts)), s=6,
                  cmap='viridis')
  first = min(4, len(pts))
  ax.scatter(pts[:first, 0], pts[:first, 1], s=60, facecolors=(0, 0, 0, 0),
             edgecolors='red', label=f'positions 0-{first - 1}')
  fig.colorbar(sc, ax=ax, label='position (token index)')
  ev = diag['pca']['explained']
  ax.set_xlabel(f'PC 1 ({100 * ev[0]:.0f}% of variance)')
  ax.set_ylabel(f'PC 2 ({100 * (ev[1] if len(ev) > 1 else 0):.0f}%)')
  ax.set_title(f'Factor 3: PCA of block {diag["pca"]["layer"]} hidden '
               'states', fontsize=10)
  ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(0.0, -0.15))
  ax.grid(True, alpha=0.3)
  fig.suptitle(plots.titled(
      f'{diag["position"]}: out-of-distribution factors at length '
      f'{diag["length"]} (LM-Infinite)', overrides))
  fig.tight_layout()
  plots.save(fig, path)
