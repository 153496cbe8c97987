"""The replication report: published findings beside what lmx measured.

``configs/sweeps/replicate.py`` names this module as its ``report``, so
``python sweep.py --sweep=configs/sweeps/replicate.py...`` ends with
:func:`write`: ``report.md`` opens with a table of the findings (the paper,
the published direction, the numbers lmx measured, and whether the direction
holds), then each finding's parts, then the standard sweep report of
``lmx.evaluation.report`` (tables and plots of every member). ``findings.json`` holds
the same verdicts, ``extensions.png`` the RoPE extensions of finding 5-7.

Every verdict is computed from the runs' results, never written by hand. A
finding has one or more *parts*, each a comparison with a stated threshold;
the finding **holds** when every measured part holds, **partly** when some
do, **does not hold** when none does, and is **not measured** when the runs
it needs are absent. With several seeds every number is the mean over seeds
(the text gives the standard deviation and the seeds).

This module holds the machinery and the generic checks (a loss ratio
against a threshold, a gain past L or its absence, an MRR order, one accuracy above
another, RoPE extensions compared); the findings themselves, with the
encodings, tasks and thresholds they name, are declared beside their sweep
in ``configs/sweeps/replicate.py`` (``FINDINGS``), whose ``write`` calls
:func:`write` with them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import os
import re
from typing import Optional, Sequence

from lmx.evaluation import plots
from lmx.evaluation import report

EXTENSION_FILE = os.path.join('extensions', 'results.json')
# Runs trained inside a member's workdir by one of its 'after' commands,
# reported under their own label: {folder: label}. DroPE's recalibration of
# a RoPE member (experiments.drope) is one.
NESTED = {'drope': 'drope'}

# ------------------------------------------------------------ loading


def load(workdirs: Sequence[str]) -> list[dict]:
  """``lmx.evaluation.report.load`` of the runs' plain evaluations (``eval/``, which
  the sweep writes: the findings compare those, and an evaluation with
  other overrides in an ``eval_<...>/`` folder is no extra seed), each with
  its ``extensions`` results (``python -m lmx.evaluation.extensions``) when the
  workdir has them."""
  runs = [r for r in report.load(workdirs)
          if r['eval_dir'] == report.PLAIN_EVAL]
  by_name = {os.path.basename(os.path.normpath(w)): w for w in workdirs}
  for r in runs:
    path = os.path.join(by_name.get(r['name'], ''), EXTENSION_FILE)
    if os.path.isfile(path):
      with open(path) as f:
        r['extensions'] = json.load(f)
  for w in workdirs:
    for folder, label in NESTED.items():
      for r in report.load(nested_dirs([w], folder)):
        if r['eval_dir'] == report.PLAIN_EVAL:
          r['name'] = f'{os.path.basename(os.path.normpath(w))}/{folder}'
          r['label'] = label
          runs.append(r)
  return runs


def nested_dirs(workdirs: Sequence[str], folder: str) -> list[str]:
  """``<workdir>/<folder>`` of each workdir that has an evaluation there."""
  return [os.path.join(w, folder) for w in workdirs
          if os.path.isfile(os.path.join(w, folder, report.PLAIN_EVAL,
                                         'results.json'))]


def label(run: dict) -> str:
  """What a language-model run is called in the findings: its ``label``
  (a nested run's), else ``<label>`` of a member named
  ``lm-<label>-s<seed>`` (``lm-dape-s0``: DAPE on its base encoding, whose
  ``position`` is the base's), else its position encoding."""
  if run.get('label'):
    return run['label']
  m = re.fullmatch(r'lm-(.+)-s\d+', run.get('name', ''))
  return m.group(1) if m else run['position']


def _lm(runs, name: str) -> list[dict]:
  """The contiguous language-model runs called ``name`` (:func:`label`)."""
  return [r for r in runs if r['kind'] == 'lm' and label(r) == name
          and r['train_sampling'] == 'contiguous'
          and r['eval_sampling'] == 'contiguous']


def _by_length(rows) -> dict[int, float]:
  return {r['length']: r['loss'] for r in rows or () if 'loss' in r}


def _stat(values: list[float]) -> Optional[dict]:
  values = [v for v in values if v is not None and math.isfinite(v)]
  if not values:
    return None
  n = len(values)
  mean = sum(values) / n
  std = (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
         if n > 1 else 0.0)
  return {'mean': mean, 'std': std, 'n': n}


def _fmt(s: Optional[dict], digits: int = 3) -> str:
  if s is None:
    return 'n/a'
  if s['n'] > 1:
    return f'{s["mean"]:.{digits}f} ± {s["std"]:.{digits}f} (n={s["n"]})'
  return f'{s["mean"]:.{digits}f}'


def _part(text: str, measured: str, holds: Optional[bool]) -> dict:
  return {'text': text, 'measured': measured, 'holds': holds}


def _ratio(runs, num, den, rows: str = 'results') -> Optional[dict]:
  """Per run ``loss(num) / loss(den)`` (``num`` may be 'longest'), over
  seeds."""
  out = []
  for r in runs:
    by = _by_length(r.get(rows))
    t = r['train_length']
    n = max(by) if num == 'longest' and by else num * t
    d = den * t
    if n in by and d in by and by[d] > 0:
      out.append(by[n] / by[d])
  return _stat(out)


def _task_acc(runs, task, position, sampling, lo, hi) -> Optional[dict]:
  """Mean accuracy over lengths in ``(lo * L, hi * L]``, over seeds."""
  vals = []
  for r in runs:
    if (r['kind'] == 'task' and r.get('task') == task
        and r['position'] == position and r['train_sampling'] == sampling):
      t = r['train_length']
      acc = [x['accuracy'] for x in r['results']
             if lo * t < x['length'] <= hi * t]
      if acc:
        vals.append(sum(acc) / len(acc))
  return _stat(vals)


def _extension_losses(runs, position: str) -> dict[str, dict[int, dict]]:
  """{method: {length: loss over seeds}} from the ``lmx.evaluation.extensions``
  results of the contiguous LM runs of ``position``."""
  values: dict[str, dict[int, list]] = {}
  for r in _lm(runs, position):
    for row in (r.get('extensions') or {}).get('results', ()):
      values.setdefault(row['method'], {}).setdefault(
          row['length'], []).append(row['loss'])
  return {m: {n: _stat(v) for n, v in by.items()} for m, by in values.items()}


def _at_longest(ext, method) -> Optional[dict]:
  by = ext.get(method)
  return by[max(by)] if by else None


def _curve_text(by: dict[int, dict]) -> str:
  """``length: mean`` per length, ``± std`` with the seed count when
  there are several seeds."""
  seeds = max(s['n'] for s in by.values())
  text = ', '.join(f'{n}: {by[n]["mean"]:.3f}' + (
      f' ± {by[n]["std"]:.3f}' if by[n]['n'] > 1 else '') for n in sorted(by))
  return text + (f' (n={seeds})' if seeds > 1 else '')


# ------------------------------------------------------------- checks
#
# Each check below returns a function ``(runs, options) -> [part]``, where
# ``options`` holds the report's settings ({'mrr': form}); a finding is a
# list of checks. Encodings, tasks and methods are arguments: the findings
# themselves are declared beside their sweep (configs/sweeps/replicate.py).

OPS = {'>=': operator.ge, '>': operator.gt, '<=': operator.le,
       '<': operator.lt}


def loss_ratio(position: str, num, den, op: str, threshold: float,
               what: str, rows: str = 'results'):
  """``loss(num x L) / loss(den x L) <op> threshold`` of the contiguous LM
  runs of ``position`` (``num='longest'``: the longest length evaluated),
  mean over seeds; ``rows``: 'results' or 'sliding'."""
  top = 'longest' if num == 'longest' else f'{num}L'
  below = 'L' if den == 1 else f'{den}L'

  def check(runs, options):
    del options
    s = _ratio(_lm(runs, position), num, den, rows)
    return [_part(f'{what}: loss at {top} / at {below} {op} {threshold}',
                  _fmt(s, 2),
                  None if s is None else OPS[op](s['mean'], threshold))]
  return check


def _best_ratio(runs, rows: str) -> Optional[dict]:
  """Per run the lowest loss at a length beyond L over the loss at L; over
  seeds."""
  out = []
  for r in runs:
    by = _by_length(r.get(rows))
    t = r['train_length']
    beyond = [by[n] for n in by if n > t]
    if beyond and by.get(t, 0) > 0:
      out.append(min(beyond) / by[t])
  return _stat(out)


def no_gain_beyond(position: str, slack: float, what: str,
                   rows: str = 'sliding'):
  """No length beyond L has a loss lower than at L by more than ``slack``
  (a fraction): the lowest ``loss(n) / loss(L)`` over ``n > L``, mean over
  seeds, is at least ``1 - slack``."""

  def check(runs, options):
    del options
    s = _best_ratio(_lm(runs, position), rows)
    return [_part(f'{what}: lowest loss beyond L / loss at L >= '
                  f'{1 - slack:g}', _fmt(s, 3),
                  None if s is None else s['mean'] >= 1 - slack)]
  return check


def gain_only_without_overlap(position: str, what: str):
  """The gain past L that non-overlapping windows show is absent with
  sliding windows: the lowest ``loss(n) / loss(L)`` beyond L is lower
  non-overlapping than sliding (means over seeds)."""

  def check(runs, options):
    del options
    lm = _lm(runs, position)
    plain, sliding = _best_ratio(lm, 'results'), _best_ratio(lm, 'sliding')
    return [_part(what, f'lowest loss beyond L / at L: non-overlapping '
                  f'{_fmt(plain)}; sliding {_fmt(sliding)}',
                  None if plain is None or sliding is None
                  else plain['mean'] < sliding['mean'])]
  return check


def _loss_at(runs, at) -> Optional[dict]:
  """Each run's loss at ``at`` x L (``'longest'``: the longest length
  evaluated); over seeds."""
  out = []
  for r in runs:
    by = _by_length(r.get('results'))
    n = (max(by) if by else None) if at == 'longest' else at * r[
        'train_length']
    if n in by:
      out.append(by[n])
  return _stat(out)


def loss_below(a: str, b: str, at, what: str, factor: float = 1.0):
  """Run ``a``'s loss at ``at`` x L (or the longest length) is below
  ``factor`` x run ``b``'s (non-overlapping windows; means over seeds)."""
  where = 'the longest length' if at == 'longest' else (
      'L' if at == 1 else f'{at}L')

  def check(runs, options):
    del options
    sa, sb = _loss_at(_lm(runs, a), at), _loss_at(_lm(runs, b), at)
    bound = '' if factor == 1 else f' x {factor:g}'
    return [_part(f'{what}: loss at {where}, {a} < {b}{bound}',
                  f'{a} {_fmt(sa)}; {b} {_fmt(sb)}',
                  None if sa is None or sb is None
                  else sa['mean'] < factor * sb['mean'])]
  return check


def mrr_order(order: Sequence[str], names: dict[str, str],
              exclude_tasks: Sequence[str] = ()):
  """One part per pair of ``order`` (best first): the first has the higher
  mean reciprocal rank (``lmx.evaluation.report``, form ``options['mrr']``) among the
  contiguous task runs of these encodings; ``names`` are their names in
  the text."""

  def check(runs, options):
    groups = [g for g in report.group(runs) if g['kind'] == 'task'
              and g['position'] in order
              and g['train_sampling'] == 'contiguous'
              and g['eval_sampling'] == 'contiguous'
              and g['task'] not in exclude_tasks]
    try:
      result, _, _ = report.mrr_of_groups(groups, options.get('mrr',
                                                               'length'))
    except ValueError as e:
      return [_part(' > '.join(names.get(p, p) for p in order),
                    f'not computed: {e}', None)]
    got = result['mrr']
    cells = len(result['cells'])
    parts = []
    for i, a in enumerate(order):
      for b in order[i + 1:]:
        if a in got and b in got:
          parts.append(_part(
              f'{names.get(a, a)} above {names.get(b, b)}',
              f'MRR {got[a]:.3f} vs {got[b]:.3f} ({cells} cells)',
              got[a] > got[b]))
    missing = [names.get(p, p) for p in order if p not in got]
    if missing:
      parts.append(_part(f'task runs of {", ".join(missing)}', 'absent',
                         None))
    return parts
  return check


def accuracy_higher(task: str, position: str, better: str, worse: str,
                    lo: float, hi: float, what: str):
  """Mean accuracy over lengths in ``(lo L, hi L]`` of ``position`` on
  ``task``, trained with sampling ``better``, exceeds that with ``worse``
  (means over seeds)."""

  def check(runs, options):
    del options
    b = _task_acc(runs, task, position, better, lo, hi)
    w = _task_acc(runs, task, position, worse, lo, hi)
    return [_part(what, f'{better} {_fmt(b)}; {worse} {_fmt(w)}',
                  None if b is None or w is None else b['mean'] > w['mean'])]
  return check


def extension_lower(position: str, a: str, b: str, what: str):
  """At the longest length, method ``a`` of ``python -m lmx.evaluation.extensions``
  (on the ``position`` runs) has a lower loss than ``b``."""

  def check(runs, options):
    del options
    ext = _extension_losses(runs, position)
    x, y = _at_longest(ext, a), _at_longest(ext, b)
    return [_part(what, f'{a} {_fmt(x)}; {b} {_fmt(y)}',
                  None if x is None or y is None else x['mean'] < y['mean'])]
  return check


def extension_falls(position: str, method: str, tol: float):
  """Two parts on ``method``'s loss over the lengths from L on: every
  longer length at most the loss at L, and non-increasing from each length
  to the next (each with ``tol`` nats of slack)."""

  def check(runs, options):
    del options
    by = _extension_losses(runs, position).get(method)
    lm = _lm(runs, position)
    if not by or not lm:
      return [_part(f'{method}: loss falls past L', 'no results', None)]
    t = lm[0]['train_length']
    lengths = sorted(n for n in by if n >= t)
    means = [by[n]['mean'] for n in lengths]
    text = _curve_text({n: by[n] for n in lengths})
    enough = len(means) > 1 and lengths[0] == t
    return [
        _part(f'{method}: every length past L at most the loss at L '
              f'(+{tol})', text, all(m <= means[0] + tol for m in means[1:])
              if enough else None),
        _part(f'{method}: loss non-increasing from each length to the next '
              f'(+{tol})', text, all(y <= x + tol for x, y in
                                     zip(means, means[1:]))
              if enough else None)]
  return check


def extension_flat(position: str, method: str, threshold: float):
  """``method``'s loss at the longest length / at L <= ``threshold``."""

  def check(runs, options):
    del options
    by = _extension_losses(runs, position).get(method)
    lm = _lm(runs, position)
    what = f'{method}: loss at the longest length / at L <= {threshold}'
    if not by or not lm or lm[0]['train_length'] not in by:
      return [_part(what, 'no results', None)]
    ratio = by[max(by)]['mean'] / by[lm[0]['train_length']]['mean']
    return [_part(what, f'{ratio:.2f} ({_curve_text(by)})',
                  ratio <= threshold)]
  return check


def fails_beyond(task: str, position: str, name: str, beyond: float,
                 factor: float, learned: float):
  """``position``'s accuracy on ``task`` over lengths beyond ``beyond`` x L
  is below ``factor`` x its accuracy within L; not measured when that is
  below ``learned`` (the task was not learned at all)."""

  def check(runs, options):
    del options
    inside = _task_acc(runs, task, position, 'contiguous', 0, 1)
    out = _task_acc(runs, task, position, 'contiguous', beyond, math.inf)
    measured = f'within L {_fmt(inside)}; beyond {beyond:g}L {_fmt(out)}'
    if inside is None or out is None:
      holds = None
    elif inside['mean'] < learned:
      holds, measured = None, measured + ' (not learned within L)'
    else:
      holds = out['mean'] < factor * inside['mean']
    return [_part(f'{name}: accuracy beyond {beyond:g}L < {factor} x '
                  'within L', measured, holds)]
  return check


@dataclasses.dataclass(frozen=True)
class Finding:
  """A published finding: who, the direction they report, and the checks
  that measure it."""
  paper: str
  claim: str
  checks: tuple


def verdict(parts: Sequence[dict]) -> str:
  """'holds' (every part), 'holds where measured' (every measured part,
  some not measured), 'partly', 'does not hold' (no part), 'does not hold
  where measured' or 'not measured'."""
  measured = [p['holds'] for p in parts if p['holds'] is not None]
  if not measured:
    return 'not measured'
  if all(measured):
    return ('holds' if len(measured) == len(parts)
            else 'holds where measured')
  if not any(measured):
    return ('does not hold' if len(measured) == len(parts)
            else 'does not hold where measured')
  return 'partly'


def evaluate(findings: Sequence[Finding], runs,
             mrr: str = 'length') -> list[dict]:
  """Every finding: ``{'number', 'paper', 'claim', 'parts', 'verdict'}``."""
  out = []
  for i, f in enumerate(findings, 1):
    parts = [p for check in f.checks for p in check(runs, {'mrr': mrr})]
    out.append({'number': i, 'paper': f.paper, 'claim': f.claim,
                'parts': parts, 'verdict': verdict(parts)})
  return out

def _seeds_note(runs) -> str:
  seeds = sorted({r['seed'] for r in runs if r['seed'] is not None})
  return ', '.join(map(str, seeds)) or 'unknown'


def markdown(found: Sequence[dict], runs) -> list[str]:
  md = ['# Replication: published findings beside lmx', '',
        f'{len(runs)} evaluated runs (seeds {_seeds_note(runs)}). Each '
        'verdict is computed from the results below (the sweep declaration '
        'states every threshold); numbers are means over seeds, ± the '
        'sample standard deviation where there are several.', '',
        '| # | paper | published finding | lmx measured | direction |',
        '|---:|---|---|---|---|']
  for f in found:
    parts = f['parts']
    if len(parts) <= 4:
      summary = '; '.join(dict.fromkeys(  # parts may share their numbers
          f'{p["text"].split(":")[0]}: {p["measured"]}' for p in parts))
    else:
      held = sum(p['holds'] is True for p in parts)
      done = sum(p['holds'] is not None for p in parts)
      summary = f'{held} of {done} measured parts hold ({len(parts)} parts)'
    md.append(f'| {f["number"]} | {f["paper"]} | {f["claim"]} | {summary} '
              f'| **{f["verdict"]}** |')
  md.append('')
  for f in found:
    md += [f'### {f["number"]}. {f["paper"]}: {f["verdict"]}', '',
           f'Published: {f["claim"]}.', '']
    for p in f['parts']:
      mark = {True: 'holds', False: 'does not hold', None: 'not measured'}[
          p['holds']]
      md.append(f'- {p["text"]}: {p["measured"]} -> {mark}')
    md.append('')
  return md


def plot_extensions(runs, position: str, path: str) -> bool:
  """Loss against length of each ``lmx.evaluation.extensions`` method (mean over the
  ``position`` runs' seeds); False when there are none."""
  ext = _extension_losses(runs, position)
  if not ext:
    return False
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(8.5, 4.8))
  lengths = []
  for i, (method, by) in enumerate(ext.items()):
    xs = sorted(by)
    lengths += xs
    # Methods can coincide (NTK and dynamic NTK on whole windows): a
    # marker and dash of their own keep each visible.
    ax.plot(xs, [by[n]['mean'] for n in xs], marker='os^vDPX*'[i % 8],
            linestyle=('-', '--', ':', '-.')[i % 4], label=method)
  t = _lm(runs, position)[0]['train_length']
  ax.axvline(t, color='gray', linestyle='--', label=f'training length ({t})')
  plots.length_axis(ax, lengths)
  ax.set_xlabel('evaluation length (tokens, log scale)')
  ax.set_ylabel('loss (nats / byte), mean over seeds')
  ax.set_title(f'{position}: inference-time extensions without training')
  ax.grid(True, alpha=0.3)
  plots.legend_outside(ax)
  fig.tight_layout()
  plots.save(fig, path)  # the legend right of the axes stays in the image
  return True


def write(workdirs: Sequence[str], out_dir: str, title: str = 'replicate',
          findings: Sequence[Finding] = (), mrr: str = 'length',
          extensions_of: Optional[str] = None) -> list[str]:
  """The standard report of ``lmx.evaluation.report.write``, with ``findings`` first
  in ``report.md``; also ``findings.json`` and, with ``extensions_of`` (an
  encoding whose runs ran ``lmx.evaluation.extensions``), ``extensions.png``."""
  nested = [d for folder in NESTED for d in nested_dirs(workdirs, folder)]
  written = report.write(list(workdirs) + nested, out_dir, title, mrr=mrr)
  if not written:
    return written
  runs = load(workdirs)
  found = evaluate(findings, runs, mrr)
  md = markdown(found, runs)
  if extensions_of and plot_extensions(
      runs, extensions_of, os.path.join(out_dir, 'extensions.png')):
    written.append('extensions.png')
    md += ['![inference-time extensions](extensions.png)', '']
  path = os.path.join(out_dir, 'report.md')
  with open(path) as f:
    standard = f.read()
  with open(path, 'w') as f:
    f.write('\n'.join(md) + '\n' + standard)
  with open(os.path.join(out_dir, 'findings.json'), 'w') as f:
    json.dump(found, f, indent=2)
  return written + ['findings.json']
