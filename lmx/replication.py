"""The replication report: eight published findings beside what lmx measured.

``configs/sweeps/replicate.py`` names this module as its ``report``, so
``python sweep.py --sweep=configs/sweeps/replicate.py...`` ends with
:func:`write`: ``report.md`` opens with a table of the findings (the paper,
the published direction, the numbers lmx measured, and whether the direction
holds), then each finding's parts, then the standard sweep report of
``lmx.report`` (tables and plots of every member). ``findings.json`` holds
the same verdicts, ``extensions.png`` the RoPE extensions of finding 5-7.

Every verdict is computed from the runs' results, never written by hand. A
finding has one or more *parts*, each a comparison with a stated threshold;
the finding **holds** when every measured part holds, **partly** when some
do, **does not hold** when none does, and is **not measured** when the runs
it needs are absent. With several seeds every number is the mean over seeds
(the text gives the standard deviation and the seeds). The thresholds are
judgment calls about what "explodes" or "stays flat" means, named here so
that a reader can disagree with them:
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Optional, Sequence

from lmx import plots
from lmx import report

EXPLODES = 1.5     # loss at the longest length / at L: "explodes"
DEGRADES = 1.1     # ... "degrades"
FLAT = 1.05        # ... "stays flat"
HOLDS_2L = 1.1     # T5: loss at 2L / at L still "near" the training loss
RISE_TOL = 0.005   # ReRoPE: nats a longer length may exceed the shorter
FAILS = 0.5        # induction heads: accuracy beyond 2L / within L: "fails"
LEARNED = 0.5      # ... within-L accuracy needed to call it learned at all

__doc__ += f"""
- ``EXPLODES`` = {EXPLODES}, ``DEGRADES`` = {DEGRADES}, ``FLAT`` =
  {FLAT}: ratios of the loss at the longest evaluated length to the loss at
  the training length L;
- ``HOLDS_2L`` = {HOLDS_2L}: T5's ratio at 2L;
- ``RISE_TOL`` = {RISE_TOL} nats: how much ReRoPE's loss may rise from one
  length to the next and still count as "keeps falling";
- ``FAILS`` = {FAILS}: induction heads "fail" beyond 2L when the accuracy
  there is below this fraction of the accuracy within L, which must be at
  least ``LEARNED`` = {LEARNED} for the comparison to mean anything.
"""

PUBLISHED_MRR_ORDER = ('none', 't5', 'alibi', 'rope', 'sinusoidal')
MRR_TASKS_DEFAULT = None   # every task with contiguous runs of the order
RUOSS_TASKS = ('reverse', 'duplicate_string')
MAMBA_ENCODINGS = ('sinusoidal', 'rope', 'xpos')
EXTENSION_FILE = os.path.join('extensions', 'results.json')


# ------------------------------------------------------------ loading


def load(workdirs: Sequence[str]) -> list[dict]:
  """``lmx.report.load`` of the runs, each with its ``extensions`` results
  (``python -m lmx.extensions``) when the workdir has them."""
  runs = report.load(workdirs)
  by_name = {os.path.basename(os.path.normpath(w)): w for w in workdirs}
  for r in runs:
    path = os.path.join(by_name.get(r['name'], ''), EXTENSION_FILE)
    if os.path.isfile(path):
      with open(path) as f:
        r['extensions'] = json.load(f)
  return runs


def _lm(runs, position: str) -> list[dict]:
  return [r for r in runs if r['kind'] == 'lm' and r['position'] == position
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


def _longest(runs) -> Optional[int]:
  lengths = [max(_by_length(r['results'])) for r in runs if r['results']]
  return max(lengths) if lengths else None


# ----------------------------------------------------------- findings


def press(runs) -> list[dict]:
  """Press et al. 2022 (ALiBi), fig. 1: sinusoidal explodes past L,
  rotary degrades, T5 holds near 2L and then rises, ALiBi stays flat."""
  parts = []
  s = _ratio(_lm(runs, 'sinusoidal'), 'longest', 1)
  parts.append(_part(f'sinusoidal explodes: longest / L >= {EXPLODES}',
                     _fmt(s, 2), None if s is None else s['mean'] >= EXPLODES))
  s = _ratio(_lm(runs, 'rope'), 'longest', 1)
  parts.append(_part(f'rotary degrades: longest / L > {DEGRADES}',
                     _fmt(s, 2), None if s is None else s['mean'] > DEGRADES))
  t5 = _lm(runs, 't5')
  near, rise = _ratio(t5, 2, 1), _ratio(t5, 'longest', 2)
  parts.append(_part(
      f'T5 holds near 2L (2L / L <= {HOLDS_2L}), then rises (longest / 2L '
      f'> {DEGRADES})', f'2L / L {_fmt(near, 2)}; longest / 2L '
      f'{_fmt(rise, 2)}', None if near is None or rise is None else
      near['mean'] <= HOLDS_2L and rise['mean'] > DEGRADES))
  s = _ratio(_lm(runs, 'alibi'), 'longest', 1)
  parts.append(_part(f'ALiBi stays flat: longest / L <= {FLAT}', _fmt(s, 2),
                     None if s is None else s['mean'] <= FLAT))
  return parts


def _gap(runs, rows: str) -> Optional[dict]:
  """Per seed: the mean over the other encodings and the lengths beyond L
  of (their loss - ALiBi's loss), in nats."""
  alibi = {r['seed']: r for r in _lm(runs, 'alibi')}
  gaps = []
  for seed, a in alibi.items():
    ab = _by_length(a.get(rows))
    diffs = []
    for other in ('sinusoidal', 'rope', 't5'):
      for r in _lm(runs, other):
        if r['seed'] != seed:
          continue
        ob = _by_length(r.get(rows))
        diffs += [ob[n] - ab[n] for n in ob
                  if n > r['train_length'] and n in ab]
    if diffs:
      gaps.append(sum(diffs) / len(diffs))
  return _stat(gaps)


def press_sliding(runs) -> list[dict]:
  """Press et al. 2022, sec. 4 / app. B: with sliding-window evaluation
  ALiBi's gain over the others shrinks; sinusoidal still explodes."""
  plain, sliding = _gap(runs, 'results'), _gap(runs, 'sliding')
  s = _ratio(_lm(runs, 'sinusoidal'), 'longest', 1, rows='sliding')
  return [
      _part('ALiBi\'s gain (others\' loss - ALiBi\'s, mean beyond L) is '
            'smaller with sliding windows',
            f'non-overlapping {_fmt(plain)}; sliding {_fmt(sliding)} nats',
            None if plain is None or sliding is None
            else sliding['mean'] < plain['mean']),
      _part(f'sinusoidal still explodes (sliding): longest / L >= '
            f'{EXPLODES}', _fmt(s, 2),
            None if s is None else s['mean'] >= EXPLODES)]


def kazemnejad(runs, mrr: str = 'length') -> list[dict]:
  """Kazemnejad et al. 2023, fig. 3: MRR across tasks orders NoPE, T5,
  ALiBi, RoPE, absolute (sinusoidal here); one part per pair."""
  groups = [g for g in report.group(runs) if g['kind'] == 'task'
            and g['position'] in PUBLISHED_MRR_ORDER
            and g['train_sampling'] == 'contiguous'
            and g['eval_sampling'] == 'contiguous'
            and g['task'] != 'induction_heads']
  try:
    result, _, _ = report.mrr_of_groups(groups, mrr)
  except ValueError as e:
    return [_part('MRR order NoPE > T5 > ALiBi > RoPE > absolute',
                  f'not computed: {e}', None)]
  got = result['mrr']
  present = [p for p in PUBLISHED_MRR_ORDER if p in got]
  cells = len(result['cells'])
  parts = []
  for i, a in enumerate(present):
    for b in present[i + 1:]:
      parts.append(_part(f'{a} above {b}',
                         f'MRR {got[a]:.3f} vs {got[b]:.3f} ({cells} cells)',
                         got[a] > got[b]))
  missing = [p for p in PUBLISHED_MRR_ORDER if p not in got]
  if missing:
    parts.append(_part(f'runs of {", ".join(missing)}', 'absent', None))
  return parts


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


def ruoss(runs) -> list[dict]:
  """Ruoss et al. 2023: randomized positions remove the cliff past the
  training length on reverse and duplicate: RoPE's accuracy just beyond L
  (lengths in (L, 2L]) is higher trained with randomized positions."""
  parts = []
  for task in RUOSS_TASKS:
    c = _task_acc(runs, task, 'rope', 'contiguous', 1, 2)
    r = _task_acc(runs, task, 'rope', 'randomized', 1, 2)
    parts.append(_part(
        f'{task}: RoPE accuracy in (L, 2L], randomized > contiguous',
        f'randomized {_fmt(r)}; contiguous {_fmt(c)}',
        None if c is None or r is None else r['mean'] > c['mean']))
  return parts


def _extension_losses(runs) -> dict[str, dict[int, dict]]:
  """{method: {length: loss over the rope runs' seeds}} from their
  ``lmx.extensions`` results."""
  values: dict[str, dict[int, list]] = {}
  for r in _lm(runs, 'rope'):
    for row in (r.get('extensions') or {}).get('results', ()):
      values.setdefault(row['method'], {}).setdefault(
          row['length'], []).append(row['loss'])
  return {m: {n: _stat(v) for n, v in by.items()} for m, by in values.items()}


def _at_longest(ext, method) -> Optional[dict]:
  by = ext.get(method)
  return by[max(by)] if by else None


def peng(runs) -> list[dict]:
  """Peng et al. 2023 (YaRN), without fine-tuning: NTK-aware beats PI,
  YaRN beats PI, dynamic scaling avoids the blow-up of plain RoPE; compared
  at the longest length."""
  ext = _extension_losses(runs)
  pi, ntk, yarn = (_at_longest(ext, m) for m in ('linear', 'ntk', 'yarn'))
  none, dyn = _at_longest(ext, 'none'), _at_longest(ext, 'dynamic')

  def lower(a, b, text, an, bn):
    return _part(text, f'{an} {_fmt(a)}; {bn} {_fmt(b)}',
                 None if a is None or b is None else a['mean'] < b['mean'])

  return [lower(ntk, pi, 'NTK-aware has lower loss than PI (longest)',
                'ntk', 'PI'),
          lower(yarn, pi, 'YaRN has lower loss than PI (longest)', 'yarn',
                'PI'),
          lower(dyn, none, 'dynamic NTK has lower loss than plain RoPE '
                '(longest)', 'dynamic', 'plain')]


def _curve_text(by: dict[int, dict]) -> str:
  return ', '.join(f'{n}: {by[n]["mean"]:.3f}' for n in sorted(by))


def rerope(runs) -> list[dict]:
  """ReRoPE (Su 2023): the loss keeps falling as the context grows past
  the training length."""
  ext = _extension_losses(runs)
  by = ext.get('rerope')
  if not by:
    return [_part('loss falls with length past L', 'no rerope results',
                  None)]
  t = _lm(runs, 'rope')[0]['train_length']
  lengths = sorted(n for n in by if n >= t)
  means = [by[n]['mean'] for n in lengths]
  below = all(m <= means[0] + RISE_TOL for m in means[1:])
  falling = all(b <= a + RISE_TOL for a, b in zip(means, means[1:]))
  text = _curve_text({n: by[n] for n in lengths})
  return [_part(f'every length past L at most the loss at L (+{RISE_TOL})',
                text, below if len(means) > 1 else None),
          _part(f'loss non-increasing from each length to the next '
                f'(+{RISE_TOL})', text, falling if len(means) > 1 else None)]


def han(runs) -> list[dict]:
  """Han et al. 2023 (LM-Infinite): the loss stays flat far past L with no
  training (rope with the Lambda mask and the distance limit)."""
  ext = _extension_losses(runs)
  by = ext.get('lm_infinite')
  rope_runs = _lm(runs, 'rope')
  if not by or not rope_runs:
    return [_part(f'longest / L <= {FLAT}', 'no lm_infinite results', None)]
  t = rope_runs[0]['train_length']
  if t not in by:
    return [_part(f'longest / L <= {FLAT}', 'no loss at L', None)]
  ratio = by[max(by)]['mean'] / by[t]['mean']
  return [_part(f'LM-Infinite: loss at the longest length / at L <= {FLAT}',
                f'{ratio:.2f} ({_curve_text(by)})', ratio <= FLAT)]


def gu_dao(runs) -> list[dict]:
  """Gu and Dao 2023 (Mamba), table 2: attention with absolute (sinusoidal
  here), RoPE or xPos positions fails induction heads beyond about 2x."""
  parts = []
  for p in MAMBA_ENCODINGS:
    inside = _task_acc(runs, 'induction_heads', p, 'contiguous', 0, 1)
    beyond = _task_acc(runs, 'induction_heads', p, 'contiguous', 2, math.inf)
    measured = f'within L {_fmt(inside)}; beyond 2L {_fmt(beyond)}'
    if inside is None or beyond is None:
      holds = None
    elif inside['mean'] < LEARNED:
      holds, measured = None, measured + ' (not learned within L)'
    else:
      holds = beyond['mean'] < FAILS * inside['mean']
    parts.append(_part(f'{p}: accuracy beyond 2L < {FAILS} x within L',
                       measured, holds))
  return parts


FINDINGS = (
    ('Press et al. 2022', 'sinusoidal explodes past L, rotary degrades, T5 '
     'holds near 2L then rises, ALiBi stays flat', press),
    ('Press et al. 2022 (sliding windows)', 'with sliding-window evaluation '
     'ALiBi\'s gain over the others shrinks; sinusoidal still explodes',
     press_sliding),
    ('Kazemnejad et al. 2023', 'MRR across tasks orders NoPE, T5, ALiBi, '
     'RoPE, absolute', kazemnejad),
    ('Ruoss et al. 2023', 'randomized positions remove the cliff past the '
     'training length on reverse and duplicate', ruoss),
    ('Peng et al. 2023 (YaRN)', 'without fine-tuning NTK-aware beats PI; '
     'YaRN beats PI; dynamic scaling avoids the blow-up', peng),
    ('ReRoPE (Su 2023)', 'loss keeps falling as the context grows past the '
     'training length', rerope),
    ('Han et al. 2023 (LM-Infinite)', 'loss stays flat far past L with no '
     'training', han),
    ('Gu and Dao 2023 (Mamba)', 'attention with absolute, RoPE or xPos '
     'positions fails induction heads beyond about 2x', gu_dao),
)


def verdict(parts: Sequence[dict]) -> str:
  measured = [p['holds'] for p in parts if p['holds'] is not None]
  if not measured:
    return 'not measured'
  if all(measured):
    return ('holds' if len(measured) == len(parts)
            else 'holds where measured')
  if not any(measured):
    return 'does not hold'
  return 'partly'


def findings(runs, mrr: str = 'length') -> list[dict]:
  """Every finding: ``{'number', 'paper', 'claim', 'parts', 'verdict'}``."""
  out = []
  for i, (paper, claim, fn) in enumerate(FINDINGS, 1):
    parts = fn(runs, mrr) if fn is kazemnejad else fn(runs)
    out.append({'number': i, 'paper': paper, 'claim': claim,
                'parts': parts, 'verdict': verdict(parts)})
  return out


def _seeds_note(runs) -> str:
  seeds = sorted({r['seed'] for r in runs if r['seed'] is not None})
  return ', '.join(map(str, seeds)) or 'unknown'


def markdown(found: Sequence[dict], runs) -> list[str]:
  md = ['# Replication: published findings beside lmx', '',
        f'{len(runs)} evaluated runs (seeds {_seeds_note(runs)}). Each '
        'verdict is computed from the results below (lmx/replication.py '
        'states every threshold); numbers are means over seeds, ± the '
        'sample standard deviation where there are several.', '',
        '| # | paper | published finding | lmx measured | direction |',
        '|---:|---|---|---|---|']
  for f in found:
    summary = '; '.join(p['measured'] for p in f['parts'][:2])
    if len(f['parts']) > 2:
      summary += f'; ... ({len(f["parts"])} parts)'
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


def plot_extensions(runs, path: str) -> bool:
  """Loss against length of each RoPE extension (mean over the rope runs'
  seeds); False when there are none."""
  ext = _extension_losses(runs)
  if not ext:
    return False
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(8.5, 4.8))
  lengths = []
  for method, by in ext.items():
    xs = sorted(by)
    lengths += xs
    ax.plot(xs, [by[n]['mean'] for n in xs], marker='o', label=method)
  t = _lm(runs, 'rope')[0]['train_length']
  ax.axvline(t, color='gray', linestyle='--', label=f'training length ({t})')
  plots.length_axis(ax, lengths)
  ax.set_xlabel('evaluation length (tokens, log scale)')
  ax.set_ylabel('loss (nats / byte), mean over seeds')
  ax.set_title('RoPE extensions without training (findings 5-7)')
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def write(workdirs: Sequence[str], out_dir: str, title: str = 'replicate',
          mrr: str = 'length', **unused: Any) -> list[str]:
  """The standard report of ``lmx.report.write``, with the findings first
  in ``report.md``; also ``findings.json`` and ``extensions.png``."""
  del unused
  written = report.write(workdirs, out_dir, title, mrr=mrr)
  if not written:
    return written
  runs = load(workdirs)
  found = findings(runs, mrr)
  if plot_extensions(runs, os.path.join(out_dir, 'extensions.png')):
    written.append('extensions.png')
  md = markdown(found, runs)
  if 'extensions.png' in written:
    md += ['![RoPE extensions](extensions.png)', '']
  path = os.path.join(out_dir, 'report.md')
  with open(path) as f:
    standard = f.read()
  with open(path, 'w') as f:
    f.write('\n'.join(md) + '\n' + standard)
  with open(os.path.join(out_dir, 'findings.json'), 'w') as f:
    json.dump(found, f, indent=2)
  return written + ['findings.json']
