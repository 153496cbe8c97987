"""Tables and plots from many evaluated runs.

    python -m lmx.evaluation.report [--plot=loss_vs_length.png] [--out=DIR] runs/*

reads every evaluation folder of each run (``<workdir>/eval/`` and each
``<workdir>/eval_<field>=<value>,.../`` that eval.py writes for an
evaluation with ``--config`` overrides, :func:`eval_dirs`) and prints a
markdown table of loss (nats/byte) against length, one row per evaluation,
plus the ratio of the loss at 8x the training length to the loss at 1x.
An evaluation with overrides is its own row (``<run>/<folder>``) and, in
the full report, its own group, labelled with its overrides. ``--plot``
draws every evaluation on one loss-against-length plot, training length
marked.

``--out DIR`` (and ``python sweep.py``, through :func:`write`) writes the
full report into DIR: ``report.md``, ``report.csv`` and plots. There, runs
that differ only in their seed (``config.json``'s ``seed``) form one group,
shown as the mean over seeds with the sample standard deviation (tables) or
the min-max range (a band in the plots):

- LM runs: loss against length (``loss_vs_length.png``), one curve per
  group; with more than three groups, small multiples: one panel per group
  on shared axes, the other groups in grey behind it. The sliding-window
  loss, when evaluated, as dotted curves and columns.
- Task runs (``'kind': 'task'``): accuracy against length, one plot per
  task (``accuracy_<task>.png``), drawn the same way.
- Passkey runs: accuracy over lengths x depths, one heatmap per group
  (``passkey_<label>.png``), averaged over seeds.
- Effective length (``lmx.evaluation.effective``): per group and
  length-dependent score (perplexity, sliding perplexity, LongPPL, task
  accuracy), the longest length whose mean-over-seeds score keeps the
  evaluation's ``config.eval.effective_fraction`` (default 0.85, NoLiMa's)
  of the in-distribution score, with each seed's own in the last column.
- LongPPL, when evaluated (``longppl`` evaluator): a table beside the loss.
- Task runs of two or more encodings: each encoding's mean reciprocal rank
  across tasks and lengths beyond training (:func:`mean_reciprocal_rank`,
  ``mrr.png``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
import textwrap

from absl import app, flags

from lmx.positions import sampling
from lmx import cli
from lmx.config import defaults
from lmx import fs
from lmx.evaluation import effective as effective_lib
from lmx.evaluation import plots
from lmx.evaluation import task_accuracy as task_eval

# Config fields that do not make two runs different experiments.
IGNORED_FIELDS = ('seed', 'name', 'data.cache_dir')


PLAIN_EVAL = 'eval'


def eval_dirs(workdir: str) -> list[str]:
  """The names of ``workdir``'s evaluation folders holding a results.json:
  ``eval`` first, then each ``eval_<overrides>`` in name order."""
  try:
    names = os.listdir(workdir)
  except OSError:
    return []
  found = [n for n in names if n == PLAIN_EVAL or n.startswith('eval_')]
  found = [n for n in found
           if os.path.isfile(os.path.join(workdir, n, 'results.json'))]
  return sorted(found, key=lambda n: (n != PLAIN_EVAL, n))


def load(workdirs):
  """The results.json of every evaluation folder of each run
  (:func:`eval_dirs`), with its name (the run's folder, plus
  ``/<evaluation folder>`` for all but ``eval``), kind, seed and
  ``overrides``."""
  runs = []
  for w in workdirs:
    for folder in eval_dirs(w):
      try:
        runs.append(_load_one(w, folder))
      except ReportError as e:  # one damaged file does not stop the report
        print(f'note: left out of the report: {e}', file=sys.stderr)
  return runs


class ReportError(ValueError):
  """A saved results.json the report cannot read; names the file."""


# What every evaluation's results.json holds (lmx.evaluation.runner, task_eval).
_RESULT_KEYS = ('results', 'train_length', 'position', 'train_sampling')


def _load_one(w: str, folder: str) -> dict:
  path = os.path.join(w, folder, 'results.json')
  fix = 'evaluate the run again (eval.py) to rewrite it.'
  r = fs.read_json(path, error=ReportError, fix=fix)
  missing = [k for k in _RESULT_KEYS if k not in r]
  if missing or not isinstance(r['results'], list) or not all(
      isinstance(x, dict) for x in r['results']):
    raise ReportError(f'{path} is damaged (it lacks '
                      f'{", ".join(missing) or "a list of results"}): {fix}')
  name = os.path.basename(os.path.normpath(w))
  r['name'] = name if folder == PLAIN_EVAL else f'{name}/{folder}'
  r['eval_dir'] = folder
  r['overrides'] = dict(r.get('overrides') or {})
  r.setdefault('kind', 'lm')
  r.setdefault('eval_sampling', r.get('train_sampling', sampling.DEFAULT))
  config = {}
  config_path = os.path.join(w, 'config.json')
  if os.path.isfile(config_path):
    try:
      config = defaults.flatten(fs.read_json(config_path, error=ReportError))
    except ReportError as e:  # the run is reported without its settings
      print(f'note: {e}', file=sys.stderr)
      config = {}
  r['seed'] = config.get('seed')
  r['config'] = {k: v for k, v in config.items() if k not in IGNORED_FIELDS}
  if r['config'].get('init_from'):
    r['config']['init_from'] = source_name(r['config']['init_from'])
  return r


def source_name(init_from: str) -> str:
  """The run a fine-tune started from, by its folder's name without a
  seed suffix (``runs/sweep/lm-rope-s2`` -> ``lm-rope``): runs of several
  seeds that each start from the same seed of another run form one group,
  as runs that differ only in their seed do."""
  name = os.path.basename(os.path.normpath(init_from))
  return re.sub(r'-s\d+$', '', name)


def _mult(length: int, train_length: int) -> str:
  return f'{length / train_length:g}x'


def table(runs) -> str:
  """One row per run: loss at each multiple of the training length."""
  mults = sorted({r['length'] / run['train_length']
                  for run in runs for r in run['results'] if 'loss' in r})
  head = ['run', 'encoding', 'positions'] + [f'{m:g}x' for m in mults] + [
      '8x / 1x']
  lines = ['| ' + ' | '.join(head) + ' |',
           '|' + '|'.join(['---'] * 3 + ['---:'] * (len(mults) + 1)) + '|']
  for run in runs:
    by_mult = {r['length'] / run['train_length']: r['loss']
               for r in run['results'] if 'loss' in r}
    cells = [f'{by_mult[m]:.3f}' if m in by_mult else 'n/a' for m in mults]
    ratio = (f'{by_mult[8] / by_mult[1]:.2f}' if 8 in by_mult and 1 in by_mult
             else 'n/a')
    sampling = run['train_sampling']
    if run['eval_sampling'] != sampling:
      sampling += f' / eval {run["eval_sampling"]}'
    lines.append('| ' + ' | '.join([run['name'], run['position'], sampling]
                                   + cells + [ratio]) + ' |')
  return '\n'.join(lines)


def label(run) -> str:
  name = run['position']
  if run['train_sampling'] != sampling.DEFAULT:
    name += f' ({run["train_sampling"]})'
  if run.get('overrides'):
    name += f' ({plots.overrides_note(run["overrides"])})'
  return name


def plot(runs, path: str) -> None:
  """Every run on one loss-against-length plot (no grouping)."""
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  lengths = []
  for i, run in enumerate(runs):
    xs = [r['length'] for r in run['results']]
    lengths += xs
    ax.plot(xs, [r['loss'] for r in run['results']], marker='o',
            linestyle=('-', '--', ':')[i // 10 % 3], color=f'C{i % 10}',
            label=label(run))
  train_lengths = sorted({run['train_length'] for run in runs})
  for t in train_lengths:
    ax.axvline(t, color='gray', linestyle='--')
  plots.length_axis(ax, lengths)
  ax.set_xlabel('evaluation length (tokens); dashed: training length')
  ax.set_ylabel('loss (nats / byte)')
  ax.set_title('loss against length')
  ax.grid(True, alpha=0.3)
  plots.legend_outside(ax)
  fig.tight_layout()
  plots.save(fig, path)


# ------------------------------------------------------------- grouping


def _group_key(run) -> tuple:
  return (run['kind'], run.get('task'), run['position'],
          run['train_sampling'], run['eval_sampling'], run['train_length'],
          json.dumps(run['config'], sort_keys=True, default=repr),
          json.dumps(run.get('overrides') or {}, sort_keys=True, default=repr))


def group(runs) -> list[dict]:
  """Runs that differ only in their seed, in first-seen order."""
  groups: dict[tuple, dict] = {}
  for run in runs:
    key = _group_key(run)
    if key not in groups:
      groups[key] = {k: run.get(k) for k in (
          'kind', 'task', 'position', 'train_sampling', 'eval_sampling',
          'train_length')}
      groups[key]['config'] = run['config']
      groups[key]['overrides'] = run.get('overrides') or {}
      groups[key]['runs'] = []
    groups[key]['runs'].append(run)
  out = list(groups.values())
  for g in out:
    g['seeds'] = sorted(r['seed'] for r in g['runs'] if r['seed'] is not None)
  return out


def label_groups(groups) -> list[str]:
  """Legend labels: the encoding, plus whatever else tells groups apart."""
  labels = [g['position'] for g in groups]
  if len({g['train_sampling'] for g in groups}) > 1:
    labels = [f'{l} ({g["train_sampling"]})' for l, g in zip(labels, groups)]
  if len({g['eval_sampling'] for g in groups}) > 1:
    labels = [f'{l}, eval {g["eval_sampling"]}'
              if g['eval_sampling'] != g['train_sampling'] else l
              for l, g in zip(labels, groups)]
  if len({g['train_length'] for g in groups}) > 1:
    labels = [f'{l}, T={g["train_length"]}' for l, g in zip(labels, groups)]
  labels = [f'{l} ({plots.overrides_note(g.get("overrides"))})'
            if g.get('overrides') else l for l, g in zip(labels, groups)]
  if len(set(labels)) < len(labels):  # other config fields differ
    keys = sorted({k for g in groups for k in g['config']})
    varying = [k for k in keys
               if len({repr(g['config'].get(k)) for g in groups}) > 1
               and k not in ('model.position', 'positions.train')]
    dup = [labels.count(l) > 1 for l in labels]
    for i, g in enumerate(groups):
      if dup[i] and varying:
        extra = ', '.join(f'{k.rsplit(".", 1)[-1]}={g["config"].get(k)}'
                          for k in varying)
        labels[i] = f'{labels[i]}, {extra}'
  counts: dict[str, int] = {}
  for i, l in enumerate(list(labels)):  # last resort: number them
    if labels.count(l) > 1:
      counts[l] = counts.get(l, 0) + 1
      labels[i] = f'{l} #{counts[l]}'
  return labels


def _stats(values: list[float]) -> dict:
  n = len(values)
  mean = sum(values) / n
  var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
  return {'n': n, 'mean': mean, 'std': math.sqrt(var), 'min': min(values),
          'max': max(values)}


def aggregate(g: dict, metric: str, rows: str = 'results') -> list[dict]:
  """Per length: n, mean, sample std, min and max of ``metric`` over the
  group's runs (``rows`` is 'results' or 'sliding')."""
  by_length: dict[int, list[float]] = {}
  for run in g['runs']:
    for r in run.get(rows) or []:
      if r.get(metric) is not None:
        by_length.setdefault(r['length'], []).append(float(r[metric]))
  return [{'length': length, **_stats(vs)}
          for length, vs in sorted(by_length.items())]


def passkey_mean(g: dict):
  """(lengths, depths, mean accuracy [depth][length]) over the group's runs
  that share the first run's grid, or None."""
  grids = [r['passkey'] for r in g['runs'] if r.get('passkey')]
  if not grids:
    return None
  lengths, depths = grids[0]['lengths'], grids[0]['depths']
  same = [p['accuracy'] for p in grids
          if p['lengths'] == lengths and p['depths'] == depths]
  mean = [[sum(m[i][j] for m in same) / len(same)
           for j in range(len(lengths))] for i in range(len(depths))]
  return lengths, depths, mean


# ---------------------------------------------------------------- writing


def _cell(s: dict | None, digits: int = 3) -> str:
  if s is None:
    return 'n/a'
  if s['n'] > 1:
    return f'{s["mean"]:.{digits}f} ± {s["std"]:.{digits}f}'
  return f'{s["mean"]:.{digits}f}'


def _seeds(g) -> str:
  return ','.join(map(str, g['seeds'])) if g['seeds'] else '-'


def _columns(lengths: list[int], train_length: int, limit: int = 12
             ) -> list[int]:
  """All lengths when there are few; otherwise the first, the last and
  those nearest 0.5, 1, 1.25, 1.5, 2, 3, 4, 5, 8 and 16 x the training
  length (the CSV keeps every length)."""
  if len(lengths) <= limit:
    return lengths
  picks = {lengths[0], lengths[-1]}
  for m in (0.5, 1, 1.25, 1.5, 2, 3, 4, 5, 8, 16):
    target = m * train_length
    if lengths[0] <= target <= lengths[-1]:
      picks.add(min(lengths, key=lambda n, t=target: abs(n - t)))
  return sorted(picks)


def _md_table(groups, labels, metric, rows='results', ratio=False,
              split=False) -> str:
  """Mean ± std per group and length. ``ratio``: the 8x / 1x column;
  ``split``: mean over lengths up to the training length and beyond it."""
  stats = [{s['length']: s for s in aggregate(g, metric, rows)}
           for g in groups]
  lengths = sorted({length for s in stats for length in s})
  one_t = len({g['train_length'] for g in groups}) == 1
  if one_t:
    lengths = _columns(lengths, groups[0]['train_length'])
  head = ['group', 'train length', 'seeds'] + [
      f'{n} ({_mult(n, groups[0]["train_length"])})' if one_t else str(n)
      for n in lengths]
  if split:
    head += ['mean <= train', 'mean > train']
  if ratio:
    head.append('8x / 1x')
  lines = ['| ' + ' | '.join(head) + ' |',
           '|' + '|'.join(['---'] * 3 + ['---:'] * (len(head) - 3)) + '|']
  for g, l, s in zip(groups, labels, stats):
    cells = [l, str(g['train_length']), _seeds(g)]
    cells += [_cell(s.get(n)) for n in lengths]
    if split:
      t = g['train_length']
      for inside in (True, False):
        means = [v['mean'] for n, v in s.items() if (n <= t) == inside]
        cells.append(f'{sum(means) / len(means):.3f}' if means else 'n/a')
    if ratio:
      t = g['train_length']
      cells.append(f'{s[8 * t]["mean"] / s[t]["mean"]:.2f}'
                   if t in s and 8 * t in s else 'n/a')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def _slug(text: str) -> str:
  return re.sub(r'[^A-Za-z0-9]+', '-', text).strip('-').lower() or 'run'


def _curve(ax, g, metric, rows='results', **style):
  """The group's mean of ``metric`` against length, with the min-max band
  over seeds when there are several; returns (lengths, line) or ([], None)."""
  stats = aggregate(g, metric, rows)
  if not stats:
    return [], None
  xs = [s['length'] for s in stats]
  (line,) = ax.plot(xs, [s['mean'] for s in stats], **style)
  if style.get('color') != GREY and any(s['n'] > 1 for s in stats):
    ax.fill_between(xs, [s['min'] for s in stats],
                    [s['max'] for s in stats], color=line.get_color(),
                    alpha=0.2, linewidth=0)
  return xs, line


GREY = '0.75'
# More groups than this: one panel per group (small multiples).
OVERLAY_MAX = 3


def _has_sliding(groups) -> bool:
  return any(r.get('sliding') for g in groups for r in g['runs'])


def _length_panels(groups, labels, metric, ylabel, title, path,
                   unit='tokens', ylim=None) -> int:
  """``metric`` against length, one curve per group: on one axes for up to
  ``OVERLAY_MAX`` groups, else one panel per group on shared axes with
  every other group's mean in grey behind it (small multiples). The
  sliding-window loss, when there is one, is dotted. Legends sit outside
  the data. Returns the number of panels."""
  plt = plots.pyplot()
  sliding = metric == 'loss' and _has_sliding(groups)
  band = _band_note(groups)
  overlay = len(groups) <= OVERLAY_MAX
  if overlay:
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    axes, owners = [ax], [list(range(len(groups)))]
  else:
    cols = min(4, len(groups))
    nrows = -(-len(groups) // cols)
    fig, grid = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows),
                             sharex=True, sharey=True, squeeze=False)
    axes = list(grid.flat)
    owners = [[i] for i in range(len(groups))]
    for ax in axes[len(groups):]:
      ax.set_visible(False)
  lengths = []
  for ax, own in zip(axes, owners):
    if not overlay:  # the other groups, for reference
      for j, g in enumerate(groups):
        if j not in own:
          _curve(ax, g, metric, color=GREY, linewidth=0.9, zorder=1)
    for i in own:
      color = f'C{i % 10}'
      xs, _ = _curve(ax, groups[i], metric, color=color, marker='o',
                     markersize=3, zorder=3,
                     label=labels[i] if overlay else None)
      lengths += xs
      if sliding:
        xs, _ = _curve(ax, groups[i], metric, rows='sliding', color=color,
                       linestyle=':', marker='s', markersize=2.5, zorder=2)
        lengths += xs
    for t in sorted({groups[i]['train_length'] for i in own}):
      ax.axvline(t, color='0.35', linestyle='--', linewidth=1)
    ax.grid(True, alpha=0.3)
    if ylim:
      ax.set_ylim(*ylim)
    if not overlay:
      ax.set_title(textwrap.fill(labels[own[0]], 44), fontsize=8)
      ax.tick_params(labelsize=7)
  for ax in axes[:len(owners)]:
    plots.length_axis(ax, lengths, max_ticks=6 if not overlay else 12)
  xlabel = f'evaluation length ({unit}, log scale)'
  # What the line styles mean, once, outside the data.
  key = []
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top
  if not overlay:
    key.append(Line2D([], [], color='C0', marker='o', markersize=3,
                      label=f'coloured: the panel\'s group ({band})'))
    key.append(Line2D([], [], color=GREY, label='the other groups (mean)'))
  if sliding:
    key.append(Line2D([], [], color='0.2', linestyle=':', marker='s',
                      markersize=2.5, label='sliding-window loss'))
  key.append(Line2D([], [], color='0.35', linestyle='--',
                    label='training length'))
  if overlay:
    ax = axes[0]
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f'{title} ({band})', fontsize=10)
    handles, names = ax.get_legend_handles_labels()
    ax.legend(handles + key, names + [k.get_label() for k in key],
              loc='upper left', bbox_to_anchor=(1.02, 1.0), borderaxespad=0,
              fontsize=8)
    fig.tight_layout()
  else:
    fig.supxlabel(xlabel, fontsize=9)
    fig.supylabel(ylabel, fontsize=9)
    fig.suptitle(f'{title}: one panel per group', fontsize=10)
    fig.tight_layout()
    fig.legend(handles=key, loc='upper center', bbox_to_anchor=(0.5, 0.0),
               ncol=len(key), fontsize=8, frameon=False)
  plots.save(fig, path)
  return len(axes) if overlay else len(groups)


def _band_note(groups) -> str:
  if any(len(g['runs']) > 1 for g in groups):
    return 'mean over seeds, band: min-max'
  return 'one seed per curve'


def plot_lm(groups, labels, path: str) -> int:
  """Loss against length of the LM groups (:func:`_length_panels`)."""
  return _length_panels(groups, labels, 'loss', 'loss (nats / byte)',
                        'loss against length', path)


def plot_task(groups, labels, task: str, path: str) -> int:
  """Accuracy against length of one task's groups."""
  return _length_panels(groups, labels, 'accuracy',
                        'accuracy (whole answer)',
                        f'{task}: accuracy against length', path,
                        unit='task length n', ylim=(-0.02, 1.02))


def plot_passkey(g: dict, title: str, path: str) -> None:
  """The group's passkey accuracy, averaged over seeds, as a heatmap."""
  lengths, depths, mean = passkey_mean(g)
  task_eval.draw_passkey_heatmap(lengths, depths, mean, title, path,
                                 train_length=g['train_length'])


CSV_FIELDS = ['kind', 'task', 'group', 'position', 'train_sampling',
              'eval_sampling', 'train_length', 'metric', 'length', 'depth',
              'n', 'mean', 'std', 'min', 'max', 'seeds', 'runs',
              'eval_overrides']


def csv_rows(groups, labels) -> list[dict]:
  """One row per group, metric and length (and depth for passkey)."""
  out = []
  for g, l in zip(groups, labels):
    base = {k: g[k] for k in ('kind', 'task', 'position', 'train_sampling',
                              'eval_sampling', 'train_length')}
    base.update(group=l, seeds=_seeds(g),
                runs=' '.join(r['name'] for r in g['runs']),
                eval_overrides=' '.join(
                    f'{k}={v}' for k, v in (g.get('overrides') or {}).items()))
    metrics = ([('loss', 'results', 'loss'),
                ('bits_per_byte', 'results', 'bits_per_byte'),
                ('sliding_loss', 'sliding', 'loss'),
                ('longppl', 'longppl', 'longppl'),
                ('longppl_key_fraction', 'longppl', 'key_fraction')]
               if g['kind'] == 'lm' else
               [('accuracy', 'results', 'accuracy'),
                ('token_accuracy', 'results', 'token_accuracy'),
                ('loss', 'results', 'loss')])
    for name, rows, metric in metrics:
      for s in aggregate(g, metric, rows):
        out.append({**base, 'metric': name, **s})
    if g['kind'] == 'task' and passkey_mean(g):
      grids = [r['passkey'] for r in g['runs'] if r.get('passkey')]
      lengths, depths = grids[0]['lengths'], grids[0]['depths']
      same = [p['accuracy'] for p in grids
              if p['lengths'] == lengths and p['depths'] == depths]
      for i, d in enumerate(depths):
        for j, n in enumerate(lengths):
          out.append({**base, 'metric': 'passkey_accuracy', 'length': n,
                      'depth': d, **_stats([m[i][j] for m in same])})
  return out


# ------------------------------------------------------ effective length


def _fraction(g: dict) -> float:
  """The fraction the group's evaluations used (their results.json
  ``effective_length``), NoLiMa's 0.85 for those written before it."""
  for run in g['runs']:
    for e in (run.get('effective_length') or {}).values():
      return float(e['fraction'])
  return effective_lib.NOLIMA_FRACTION


def group_effective(g: dict) -> dict:
  """``{score: (effective_length of the mean-over-seeds curve (of the
  mean loss, for a perplexity), [each run's effective_length])}`` for
  each score of ``effective.CURVES`` the group's runs hold."""
  fraction = _fraction(g)
  out = {}
  for name, kind, rows, metric, higher, exp in effective_lib.CURVES:
    stats = aggregate(g, metric, rows) if kind == g['kind'] else None
    if not stats:
      continue
    # A loss's mean over seeds, then exp: the geometric mean perplexity.
    mean = effective_lib.effective_length(
        [s['length'] for s in stats],
        effective_lib.curve_scores([s['mean'] for s in stats], exp),
        g['train_length'], fraction, higher)
    per_run = [effective_lib.of_results(r, fraction).get(name)
               for r in g['runs']]
    out[name] = (mean, per_run)
  return out


def effective_md(groups, labels) -> str:
  """Markdown: per group and score, the reference, the threshold, the
  effective length of the mean curve and of each run."""
  lines = ['| group | seeds | score | reference (length) | threshold | '
           'effective length | per seed |', '|---|---|---|---:|---:|---:|---|']
  for g, l in zip(groups, labels):
    for name, (e, per_run) in group_effective(g).items():
      if e['reference'] is None:
        ref = thr = 'n/a'
      else:
        ref = f'{e["reference"]:.4g} ({e["reference_length"]})'
        thr = (f'{">=" if e["higher_is_better"] else "<="} '
               f'{e["threshold"]:.4g}')
      lines.append(f'| {l} | {_seeds(g)} | {name} | {ref} | {thr} | '
                   f'{effective_lib.describe(e)} | '
                   f'{", ".join(effective_lib.describe(x) for x in per_run)} |')
  return '\n'.join(lines)


def _effective_section(groups, labels) -> list[str]:
  if not any(group_effective(g) for g in groups):
    return []
  fraction = sorted({_fraction(g) for g in groups})
  return [('Effective length: the longest length up to which every length '
           'from the training length on keeps '
           f'{" / ".join(f"{f:g}" for f in fraction)} of the best '
           'in-distribution score (NoLiMa; a perplexity may rise at most '
           '1/fraction times); `<n`: even the first such length n fails; '
           'n/a: no in-distribution score.'), '',
          effective_md(groups, labels), '']


def effective_csv_rows(groups, labels) -> list[dict]:
  """One row per group and score: ``metric`` = ``effective_length
  <score>``, ``mean`` = the effective length of the mean curve (empty when
  none), ``n`` = the runs."""
  out = []
  for g, l in zip(groups, labels):
    for name, (e, _) in group_effective(g).items():
      out.append({k: g[k] for k in ('kind', 'task', 'position',
                                    'train_sampling', 'eval_sampling',
                                    'train_length')}
                 | {'group': l, 'seeds': _seeds(g), 'n': len(g['runs']),
                    'metric': f'effective_length {name}',
                    'mean': '' if e['effective_length'] is None
                    else e['effective_length'],
                    'runs': ' '.join(r['name'] for r in g['runs'])})
  return out


# ------------------------------------------------ mean reciprocal rank


def _mrr_label(g: dict, vary_sampling: bool) -> str:
  """The encoding, plus the position sampling when it varies."""
  name = g['position']
  if vary_sampling:
    name += f' ({g["train_sampling"]})'
    if g['eval_sampling'] != g['train_sampling']:
      name += f', eval {g["eval_sampling"]}'
  return name


def _mrr_runs(groups) -> tuple[dict, dict, list[str], dict]:
  """From task groups: ({task: {label: [runs]}} in first-seen label order,
  {task: training length}, notes, {label: (position, train_sampling,
  eval_sampling)}); see :func:`mrr_table`."""
  tg = [g for g in groups if g['kind'] == 'task']
  vary = len({(g['train_sampling'], g['eval_sampling']) for g in tg}) > 1
  runs: dict[str, dict[str, list]] = {}
  counts: dict[tuple, int] = {}
  train_lengths: dict[str, int] = {}
  sampling: dict[str, tuple] = {}
  for g in tg:
    task, l = g['task'] or 'task', _mrr_label(g, vary)
    sampling[l] = (g['position'], g['train_sampling'], g['eval_sampling'])
    runs.setdefault(task, {}).setdefault(l, []).extend(g['runs'])
    counts[task, l] = counts.get((task, l), 0) + 1
    train_lengths[task] = max(train_lengths.get(task, 0), g['train_length'])
  notes = [f'task {t}: {n} groups share the label {l} (other config fields '
           'differ); their runs are pooled' for (t, l), n in counts.items()
           if n > 1]
  return runs, train_lengths, notes, sampling


def mrr_table(groups) -> tuple[dict, dict, list[str], dict]:
  """From task groups: ({task: {label: {length: mean accuracy over
  seeds}}}, {task: training length}, notes, {label: (position,
  train_sampling, eval_sampling)}).

  A label is the encoding, plus the sampling where that varies among the
  task groups. Groups of one task that share a label (they differ in
  another config field) are pooled, with a note. A task's training length
  is the largest among its groups, so that every cell beyond it is beyond
  training for every label."""
  runs, train_lengths, notes, sampling = _mrr_runs(groups)
  table = {task: {l: {s['length']: s['mean']
                      for s in aggregate({'runs': rs}, 'accuracy')}
                  for l, rs in by_label.items()}
           for task, by_label in runs.items()}
  return table, train_lengths, notes, sampling


def _pooled_beyond(run: dict, t: int):
  """Exact match pooled over the run's evaluation lengths beyond ``t``
  (weighted by each length's examples), or None without such a length."""
  rows = [r for r in run['results'] if r['length'] > t]
  if not rows:
    return None
  weights = [r.get('examples') or 1 for r in rows]
  return sum(r['accuracy'] * w for r, w in zip(rows, weights)) / sum(weights)


def _two_labels(labels) -> list[str]:
  """``labels`` as a list; ValueError for fewer than two (a rank among one
  is always 1)."""
  labels = list(labels)
  if len(labels) < 2:
    raise ValueError(
        'mean reciprocal rank needs task runs of at least two encodings; '
        f'all are {labels[0] if labels else "absent"}')
  return labels


def _tasks_of_every_label(table: dict, labels: list[str], train_lengths,
                          notes: list[str]):
  """``(task, training length, {label: runs})`` for each task of ``table``
  that has runs of every label, in task order; a note for each other."""
  for task in sorted(table):
    t = (train_lengths if isinstance(train_lengths, int)
         else train_lengths[task])
    by_label = table[task]
    missing = [l for l in labels if l not in by_label]
    if missing:
      notes.append(f'task {task}: skipped, no runs of {", ".join(missing)}')
      continue
    yield task, t, by_label


def _mrr_result(labels, cells, ranks, notes, form: str) -> dict:
  """Each label's MRR and mean rank over ``cells`` (the result dict)."""
  mrr = {l: sum(1 / ranks[c][l] for c in cells) / len(cells) for l in labels}
  mean_rank = {l: sum(ranks[c][l] for c in cells) / len(cells)
               for l in labels}
  return {'labels': labels, 'mrr': mrr, 'mean_rank': mean_rank,
          'cells': cells, 'ranks': ranks, 'notes': notes, 'form': form}


def mean_reciprocal_rank_authors(runs: dict, train_lengths) -> dict:
  """Each label's mean reciprocal rank over (task, seed) cells, as
  Kazemnejad et al.'s released notebook computes it
  (github.com/McGill-NLP/length-generalization,
  notebooks/plot_aggregate_final.ipynb, ``compute_mean_reciprocal_rank``
  with ``get_mrr_df``): per task and seed, each label's accuracy pooled over
  the whole beyond-training test split, ranked best first with ties broken
  by row order (pandas ``rank(method="first")``: here the order in which
  the labels first appear, i.e. the sweep's member order).

  ``runs`` is {task: {label: [run results dicts with 'seed' and
  'results']}} (:func:`_mrr_runs`); ``train_lengths`` {task: length} or one
  int. A (task, seed) cell counts only when every label has a run of that
  seed with a length beyond training (their ``dropna``); others are left
  out with a note. Returns the dict of :func:`mean_reciprocal_rank`, with
  cells ``(task, seed)`` and ``'form': 'authors'``. Raises ValueError for
  fewer than two labels or no cell."""
  labels = _two_labels(dict.fromkeys(l for by_label in runs.values()
                                     for l in by_label))
  cells, ranks, notes = [], {}, []
  for task, t, by_label in _tasks_of_every_label(runs, labels, train_lengths,
                                                 notes):
    pooled = {l: {r['seed']: _pooled_beyond(r, t) for r in by_label[l]}
              for l in labels}
    seeds = sorted({s for p in pooled.values() for s in p},
                   key=lambda s: (s is None, s))
    for seed in seeds:
      values = {l: pooled[l].get(seed) for l in labels}
      if any(v is None for v in values.values()):
        lacking = [l for l, v in values.items() if v is None]
        notes.append(f'task {task} seed {seed}: left out, no accuracy '
                     f'beyond the training length {t} for '
                     f'{", ".join(lacking)}')
        continue
      order = sorted(labels, key=lambda l: -values[l])   # stable: row order
      ranks[task, seed] = {l: order.index(l) + 1 for l in labels}
      cells.append((task, seed))
  if not cells:
    raise ValueError('mean reciprocal rank (authors\' form): no (task, seed) '
                     'with accuracy beyond training for every label'
                     + (f' ({"; ".join(notes)})' if notes else ''))
  return _mrr_result(labels, cells, ranks, notes, 'authors')


MRR_FORMS = ('length', 'authors')


def _ranks(values: dict[str, float]) -> dict[str, float]:
  """Rank 1 = highest; tied values (equal to 1e-9) share the average of
  the ranks they span (fractional ranking)."""
  order = sorted(values, key=lambda l: -values[l])
  ranks, i = {}, 0
  while i < len(order):
    j = i
    while (j + 1 < len(order) and
           abs(values[order[j + 1]] - values[order[i]]) <= 1e-9):
      j += 1
    for l in order[i:j + 1]:
      ranks[l] = (i + j) / 2 + 1
    i = j + 1
  return ranks


def mean_reciprocal_rank(table: dict, train_lengths) -> dict:
  """Each label's mean reciprocal rank over (task, length) cells.

  ``table`` is {task: {label: {length: accuracy}}} (accuracy already the
  mean over seeds, as :func:`mrr_table` builds it); ``train_lengths`` is
  {task: training length} or one int for all tasks.

  After Kazemnejad et al. 2023 ("The Impact of Positional Encoding on
  Length Generalization in Transformers", NeurIPS 2023, arXiv:2305.19466),
  who rank the encodings by exact-match accuracy beyond the training
  lengths and summarise each by its mean reciprocal rank over the tasks.
  Here a cell is a task and one evaluation length beyond the task's
  training length; in each cell the labels are ranked by accuracy, rank 1
  the best, and MRR = mean over cells of 1 / rank. Where this differs from
  the authors' released code (github.com/McGill-NLP/length-generalization,
  notebooks/plot_aggregate_final.ipynb, ``compute_mean_reciprocal_rank``
  and ``get_mrr_df``; :func:`mean_reciprocal_rank_authors` is that form,
  ``--mrr=authors``). This form is the default because its ranks do not
  depend on the order of the encodings, averaging seeds first damps the
  noise of single runs, and a cell per length shows where an encoding wins:

  - ties share the average of the ranks they span (two best: 1.5 each).
    The authors' code uses pandas ``rank(method="first")``, which breaks
    ties by row order, so a tie's ranks depend on the order of the
    encodings; the average rule does not.
  - a cell is one evaluation length, and accuracy is first averaged over
    seeds; the authors rank per (task, seed) on the accuracy pooled over
    the whole beyond-training test split.
  - as there, a cell counts only when every compared label has a value
    (their ``dropna(axis=1)``): lengths or tasks that some label lacks are
    left out, with a note.

  Returns {'labels', 'mrr': {label: MRR}, 'mean_rank': {label: ...},
  'cells': [(task, length)], 'ranks': {(task, length): {label: rank}},
  'notes': [why a task or length did not count]}. Raises ValueError for
  fewer than two labels (a rank among one is always 1) or no cell."""
  labels = _two_labels(sorted({l for by_label in table.values()
                               for l in by_label}))
  cells, ranks, notes = [], {}, []
  for task, t, by_label in _tasks_of_every_label(table, labels, train_lengths,
                                                 notes):
    beyond = sorted({n for acc in by_label.values() for n in acc if n > t})
    if not beyond:
      notes.append(f'task {task}: skipped, no evaluation length beyond the '
                   f'training length {t}')
      continue
    common = [n for n in beyond if all(n in by_label[l] for l in labels)]
    dropped = [n for n in beyond if n not in common]
    if dropped:
      notes.append(f'task {task}: lengths {", ".join(map(str, dropped))} '
                   'left out, not evaluated for every label')
    for n in common:
      ranks[task, n] = _ranks({l: by_label[l][n] for l in labels})
      cells.append((task, n))
  if not cells:
    raise ValueError('mean reciprocal rank: no task has a length beyond '
                     'training evaluated for every label'
                     + (f' ({"; ".join(notes)})' if notes else ''))
  return _mrr_result(labels, cells, ranks, notes, 'length')


def _mrr_order(result: dict) -> list[str]:
  return sorted(result['labels'], key=lambda l: (-result['mrr'][l], l))


def _cells_text(cells) -> str:
  by_task: dict[str, list[int]] = {}
  for task, n in cells:
    by_task.setdefault(task, []).append(n)
  return '; '.join(f'{task} at {", ".join(map(str, ns))}'
                   for task, ns in by_task.items())


def mrr_markdown(result: dict, train_lengths: dict) -> list[str]:
  """The report's section: a table sorted by MRR, what counted, notes."""
  cells = result['cells']
  if result.get('form') == 'authors':
    how = (f'Per task and seed ({len(cells)} cells), the labels are ranked '
           'by exact match pooled over every evaluation length beyond '
           'training, rank 1 the best, ties broken by row order (member '
           'order), as Kazemnejad et al. 2023\'s released notebook does; MRR '
           'is the mean of 1 / rank over the cells. Cells (task at seeds): '
           f'{_cells_text(cells)}.')
  else:
    how = (f'Per task and per evaluation length beyond training '
           f'({len(cells)} cells), the labels are ranked by accuracy (mean '
           'over seeds), rank 1 the best, ties sharing the average rank; '
           'MRR is the mean of 1 / rank over the cells (after Kazemnejad et '
           'al. 2023; `--mrr=authors` ranks per task and seed as their '
           f'code does). Cells: {_cells_text(cells)}.')
  md = ['## Mean reciprocal rank across tasks', '', how, '',
        '| label | MRR | mean rank | first places | cells |',
        '|---|---:|---:|---:|---:|']
  for l in _mrr_order(result):
    firsts = sum(result['ranks'][c][l] == 1 for c in cells)
    md.append(f'| {l} | {result["mrr"][l]:.3f} | '
              f'{result["mean_rank"][l]:.2f} | {firsts} | {len(cells)} |')
  md.append('')
  tasks = sorted({task for task, _ in cells})
  md += ['Training lengths: ' + ', '.join(
      f'{task} {train_lengths[task]}' for task in tasks) + '.', '']
  if result['notes']:
    md += ['Not counted: ' + '; '.join(result['notes']) + '.', '']
  md += ['![mean reciprocal rank](mrr.png)', '']
  return md


def mrr_csv_rows(result: dict, sampling: dict) -> list[dict]:
  """One 'mrr' row per label (n: cells) and one 'reciprocal_rank' row per
  label and cell; ``sampling`` maps labels to (position, train_sampling,
  eval_sampling)."""
  out = []
  for l in _mrr_order(result):
    position, train_s, eval_s = sampling[l]
    base = {'kind': 'task', 'group': l, 'position': position,
            'train_sampling': train_s, 'eval_sampling': eval_s}
    out.append({**base, 'task': 'all', 'metric': 'mrr',
                'n': len(result['cells']), 'mean': result['mrr'][l]})
    for task, n in result['cells']:
      rr = 1 / result['ranks'][task, n][l]
      where = ({'seeds': n} if result.get('form') == 'authors'
               else {'length': n})
      out.append({**base, 'task': task, 'metric': 'reciprocal_rank',
                  **where, 'n': 1, 'mean': rr, 'std': 0.0, 'min': rr,
                  'max': rr})
  return out


def plot_mrr(result: dict, path: str) -> None:
  """Bars of each label's MRR, best first."""
  plt = plots.pyplot()
  order = _mrr_order(result)
  fig, ax = plt.subplots(figsize=(7.5, 4.8))
  values = [result['mrr'][l] for l in order]
  bars = ax.bar(range(len(order)), values,
                color=[f'C{i % 10}' for i in range(len(order))])
  for bar, v in zip(bars, values):
    ax.text(bar.get_x() + bar.get_width() / 2, v + 0.01, f'{v:.2f}',
            ha='center', va='bottom', fontsize=8)
  ax.set_xticks(range(len(order)))
  ax.set_xticklabels(order, rotation=20, ha='right', fontsize=8)
  ax.set_ylim(0, 1.05)
  ax.set_ylabel('mean reciprocal rank (higher is better)')
  tasks = sorted({task for task, _ in result['cells']})
  names = ', '.join(tasks) if len(tasks) <= 4 else f'{len(tasks)} tasks'
  cell = ('task, seed' if result.get('form') == 'authors'
          else 'task, length > training')
  ax.set_title(f'mean reciprocal rank over {len(result["cells"])} ({cell}) '
               f'cells: {names}', fontsize=10)
  ax.grid(True, axis='y', alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def mrr_of_groups(groups, form: str = 'length'):
  """(result, train_lengths, sampling) of the task groups' mean
  reciprocal rank in ``form``: 'length' (default; per task and length
  beyond training, seed-mean accuracy, average ties:
  :func:`mean_reciprocal_rank`) or 'authors' (per task and seed, pooled
  accuracy, ties by row order: :func:`mean_reciprocal_rank_authors`).
  Raises ValueError when it cannot be computed (one encoding, no cell)."""
  if form not in MRR_FORMS:
    raise ValueError(f'Unknown mean reciprocal rank form {form!r}; valid: '
                     f'{", ".join(MRR_FORMS)}')
  if form == 'authors':
    runs, train_lengths, notes, sampling = _mrr_runs(groups)
    result = mean_reciprocal_rank_authors(runs, train_lengths)
  else:
    accuracy, train_lengths, notes, sampling = mrr_table(groups)
    result = mean_reciprocal_rank(accuracy, train_lengths)
  result['notes'] = notes + result['notes']
  return result, train_lengths, sampling


def write(workdirs, out_dir: str, title: str = 'sweep',
          mrr: str = 'length') -> list[str]:
  """Writes report.md, report.csv and the plots; returns the file names
  (none when no run has results). ``mrr``: the form of the mean reciprocal
  rank (:func:`mrr_of_groups`)."""
  if mrr not in MRR_FORMS:
    raise ValueError(f'Unknown mean reciprocal rank form {mrr!r}; valid: '
                     f'{", ".join(MRR_FORMS)}')
  runs = load(workdirs)
  if not runs:
    return []
  os.makedirs(out_dir, exist_ok=True)
  missing = [os.path.basename(os.path.normpath(w)) for w in workdirs
             if not eval_dirs(w)]
  groups = group(runs)
  written = []
  md = [f'# Report: {title}', '',
        (f'{len(runs)} evaluated runs in {len(groups)} groups. Runs that '
         'differ only in their seed form one group: cells are the mean over '
         'seeds ± the sample standard deviation; plot bands span min to '
         'max.'),
        '']
  if missing:
    md += [f'Not evaluated (no eval/results.json): {", ".join(missing)}.', '']
  all_rows = []

  lm = [g for g in groups if g['kind'] == 'lm']
  if lm:
    labels = label_groups(lm)
    plot_lm(lm, labels, os.path.join(out_dir, 'loss_vs_length.png'))
    written.append('loss_vs_length.png')
    md += ['## Language modelling: loss (nats/byte) against length', '',
           _md_table(lm, labels, 'loss', ratio=True), '']
    if any(r.get('sliding') for g in lm for r in g['runs']):
      strides = sorted({s.get('stride') for g in lm for r in g['runs']
                        for s in r.get('sliding') or [] if s.get('stride')})
      md += [('Sliding-window loss (stride '
              f'{", ".join(map(str, strides)) or "n/a"}):'), '',
             _md_table(lm, labels, 'loss', rows='sliding'), '']
    if any(r.get('longppl') for g in lm for r in g['runs']):
      md += ['LongPPL (Fang et al. 2025, self-contrast): perplexity on the '
             'key tokens (n/a: no key token at that length):', '',
             _md_table(lm, labels, 'longppl', rows='longppl'), '',
             'Fraction of the scored tokens that are key tokens:', '',
             _md_table(lm, labels, 'key_fraction', rows='longppl'), '']
    md += ['![loss against length](loss_vs_length.png)', '']
    md += _effective_section(lm, labels)
    all_rows += csv_rows(lm, labels) + effective_csv_rows(lm, labels)

  tasks = sorted({g['task'] or 'task' for g in groups if g['kind'] == 'task'})
  for task in tasks:
    tg = [g for g in groups if g['kind'] == 'task' and
          (g['task'] or 'task') == task]
    labels = label_groups(tg)
    png = f'accuracy_{_slug(task)}.png'
    plot_task(tg, labels, task, os.path.join(out_dir, png))
    written.append(png)
    md += [f'## Task {task}: accuracy against length', '',
           'Teacher-forced exact match; the columns are a selection of '
           'lengths (report.csv has all of them).', '',
           _md_table(tg, labels, 'accuracy', split=True), '',
           f'![{task}]({png})', '']
    md += _effective_section(tg, labels)
    for g, l in zip(tg, labels):
      if passkey_mean(g):
        png = f'passkey_{_slug(task)}_{_slug(l)}.png'
        seeds = (f'mean over seeds {_seeds(g)}' if len(g['runs']) > 1
                 else f'run {g["runs"][0]["name"]}')
        plot_passkey(g, f'{task}, {l}\naccuracy ({seeds})',
                     os.path.join(out_dir, png))
        written.append(png)
        md += [f'![{task} {l}]({png})', '']
    all_rows += csv_rows(tg, labels) + effective_csv_rows(tg, labels)

  if tasks:
    try:
      result, train_lengths, sampling = mrr_of_groups(groups, mrr)
    except ValueError as e:
      md += [f'Mean reciprocal rank across tasks: not computed: {e}.', '']
    else:
      plot_mrr(result, os.path.join(out_dir, 'mrr.png'))
      written.append('mrr.png')
      md += mrr_markdown(result, train_lengths)
      all_rows += mrr_csv_rows(result, sampling)

  lm_runs = [r for r in runs if r['kind'] == 'lm']
  md += ['## Runs', '']
  if lm_runs:
    md += [table(lm_runs), '']
  for r in runs:
    if r['kind'] == 'task':
      t = r['train_length']
      parts = []
      for inside, what in ((True, f'<= {t}'), (False, f'> {t}')):
        acc = [x['accuracy'] for x in r['results']
               if (x['length'] <= t) == inside]
        if acc:
          parts.append(f'mean accuracy at lengths {what}: '
                       f'{sum(acc) / len(acc):.3f}')
      md.append(f'- {r["name"]}: {r.get("task")} {label(r)}, seed '
                f'{r["seed"]}; {"; ".join(parts)}')
  md.append('')

  # Each file whole or not at all: a crash leaves the previous report.
  fs.write_atomic(os.path.join(out_dir, 'report.md'), '\n'.join(md))
  table_csv = io.StringIO()
  w = csv.DictWriter(table_csv, CSV_FIELDS)
  w.writeheader()
  for row in all_rows:
    w.writerow({k: row.get(k, '') for k in CSV_FIELDS})
  fs.write_atomic(os.path.join(out_dir, 'report.csv'), table_csv.getvalue())
  return ['report.md', 'report.csv'] + written


def _define_flags() -> dict:
  """The command's flags; defined only when it runs as ``python -m``, so
  importing this module defines none."""
  return {
      'plot': flags.DEFINE_string(
          'plot', None, 'Also draw every LM run on one loss-against-length '
          'plot, written to this PNG path.'),
      'out': flags.DEFINE_string(
          'out', None, 'Write the full report (report.md, report.csv, '
          'plots; seeds grouped) into this directory.'),
      'mrr': flags.DEFINE_enum(
          'mrr', 'length', list(MRR_FORMS), 'Mean reciprocal rank across '
          'tasks: per task and length beyond training with average ties '
          '(length, the default), or per task and seed on pooled accuracy '
          'with ties by row order, as the authors\' code (authors).'),
  }


def main(argv, fl: dict) -> None:
  """``argv[1:]`` are run directories (their evaluation folders:
  :func:`eval_dirs`)."""
  workdirs = list(argv[1:])
  if not workdirs:
    raise app.UsageError('Name at least one run directory, e.g. '
                         'python -m lmx.evaluation.report runs/*', exitcode=2)
  try:
    if fl['out'].value:
      cli.output_dir(fl['out'].value, '--out')
    if fl['plot'].value:
      cli.output_dir(os.path.dirname(os.path.abspath(fl['plot'].value)),
                     f'The folder of --plot={fl["plot"].value}')
  except cli.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  runs = load(workdirs)
  if not runs:
    print('error: no evaluation (<workdir>/eval/results.json or '
          f'<workdir>/eval_*/results.json) found in {", ".join(workdirs)}: '
          'run eval.py on them first.',
          file=sys.stderr)
    sys.exit(2)
  lm_runs = [r for r in runs if r['kind'] == 'lm']
  if lm_runs:
    print(table(lm_runs))
  if fl['plot'].value and lm_runs:
    plot(lm_runs, fl['plot'].value)
    print(f'Wrote {fl["plot"].value}')
  if fl['out'].value:
    written = write(workdirs, fl['out'].value, mrr=fl['mrr'].value)
    print(f'Wrote {", ".join(written)} to {fl["out"].value}')


if __name__ == '__main__':
  _FLAGS = _define_flags()
  app.run(lambda argv: main(argv, _FLAGS), flags_parser=cli.parse_flags)
