"""Effective length: the longest evaluated length whose score holds up.

NoLiMa (Modarressi et al. 2025, sec. 4 and the results table of
adobe-research/NoLiMa) defines a model's *effective length* as the longest
context at which it keeps at least 85% of its *base score*, the base being
its accuracy at short contexts (250, 500 and 1K tokens). RULER (Hsieh et al.
2024, sec. 4; NVIDIA/RULER) reports the same kind of number with a fixed,
absolute threshold instead of a fraction of the model's own base: the
longest length whose score exceeds 85.6%, Llama-2-7B's score at 4K. lmx
follows NoLiMa's relative form, with the fraction a config field
(``config.eval.effective_fraction``, default 0.85 as NoLiMa).

The rule, precisely (``effective_length``):

* The *in-distribution lengths* are the evaluated lengths up to the
  training length (``in_distribution``). The *reference* (NoLiMa's base
  score) is the best score among them: the highest for a score where
  higher is better (accuracy), the lowest where lower is better
  (perplexity). No in-distribution length evaluated: no reference, no
  effective length.
* A length *passes* when its score is at least ``fraction`` times the
  reference (ties pass: NoLiMa's "at least"); for a lower-is-better score
  (perplexity) when ``score * fraction <= reference``, i.e. the perplexity
  rose by at most a factor ``1 / fraction`` (1.18 at 0.85: a loss at most
  ``-ln 0.85 = 0.163`` nats above the reference's).
* The lengths *gated* are the longest in-distribution length and every
  longer one. The effective length is the longest gated length such that
  every gated length up to it passes: a dip ends it even when a longer
  length recovers (NoLiMa's "maintains"; in NoLiMa's and RULER's tables
  the scores fall with length, where this and "the longest passing length"
  agree). When the first gated length fails there is none (reported as
  ``<first``, as NoLiMa writes "<1K"). The longest passing length is
  reported beside it (``longest_passing``) for curves that recover.
  Shorter in-distribution lengths are not gated: with less context a loss
  is higher there for want of context, not for want of length
  generalisation.

A length whose score is missing (None or NaN: LongPPL where no token has
more context than the short context) is left out, as if not evaluated.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

# NoLiMa's fraction of the base score.
NOLIMA_FRACTION = 0.85


def _present(score) -> bool:
  return score is not None and not (isinstance(score, float)
                                    and math.isnan(score))


def passes(score: float, reference: float, fraction: float,
           higher_is_better: bool = True) -> bool:
  """``score`` keeps ``fraction`` of ``reference`` (ties pass)."""
  if higher_is_better:
    return score >= fraction * reference
  return score * fraction <= reference


def effective_length(lengths: Sequence[int], scores: Sequence[Optional[float]],
                     in_distribution: int,
                     fraction: float = NOLIMA_FRACTION,
                     higher_is_better: bool = True) -> dict:
  """The effective length of one score curve (the rule of the module
  docstring). ``lengths`` and ``scores`` pair up (any order); lengths up to
  ``in_distribution`` (the training length) give the reference.

  Returns ``{'effective_length': int or None, 'longest_passing': int or
  None, 'reference': float or None, 'reference_length', 'threshold'
  (the score a length must reach: at least it, or for lower-is-better at
  most it), 'first_gated': the shortest gated length, 'fraction',
  'higher_is_better'}``."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f'The effective-length fraction must be in (0, 1], got '
                     f'{fraction}.')
  if len(lengths) != len(scores):
    raise ValueError(f'{len(lengths)} lengths but {len(scores)} scores.')
  curve = sorted((int(n), float(s)) for n, s in zip(lengths, scores)
                 if _present(s))
  out = {'effective_length': None, 'longest_passing': None,
         'reference': None, 'reference_length': None, 'threshold': None,
         'first_gated': None, 'fraction': fraction,
         'higher_is_better': higher_is_better}
  inside = [(n, s) for n, s in curve if n <= in_distribution]
  if not inside:
    return out
  best = (max if higher_is_better else min)(inside, key=lambda x: x[1])
  reference = best[1]
  first_gated = inside[-1][0]
  out.update(reference=reference, reference_length=best[0],
             first_gated=first_gated,
             threshold=(fraction * reference if higher_is_better
                        else reference / fraction))
  for n, s in curve:
    if n < first_gated:
      continue
    if not passes(s, reference, fraction, higher_is_better):
      break
    out['effective_length'] = n
  passing = [n for n, s in curve if n >= first_gated
             and passes(s, reference, fraction, higher_is_better)]
  out['longest_passing'] = passing[-1] if passing else None
  return out


def describe(e: Optional[dict]) -> str:
  """A table cell: the length, ``<first`` when even the first gated length
  fails, ``n/a`` without a reference."""
  if not e or e.get('reference') is None:
    return 'n/a'
  if e['effective_length'] is None:
    return f'<{e["first_gated"]}'
  return str(e['effective_length'])


# The length-dependent scores of results.json: (name, kind of run, rows
# key, metric, higher is better, the score is exp(metric)). Perplexity (exp
# of the loss), not loss: the fraction is of a ratio of probabilities.
CURVES = (
    ('perplexity', 'lm', 'results', 'loss', False, True),
    ('sliding perplexity', 'lm', 'sliding', 'loss', False, True),
    ('LongPPL', 'lm', 'longppl', 'longppl', False, False),
    ('accuracy', 'task', 'results', 'accuracy', True, False),
)


def curve_scores(values, exp: bool) -> list:
  """The scores of metric ``values`` (None kept): ``exp`` of each for a
  loss."""
  return [None if v is None else (math.exp(v) if exp else float(v))
          for v in values]


def of_results(results: dict, fraction: float = NOLIMA_FRACTION) -> dict:
  """``{name: effective_length(...)}`` for every length-dependent score an
  evaluation's results.json holds (``CURVES``; for passkey also each key
  depth, ``accuracy depth <d>``), with the training length as the
  in-distribution bound."""
  t = int(results['train_length'])
  out = {}
  kind = results.get('kind', 'lm')
  for name, of_kind, rows, metric, higher, exp in CURVES:
    if of_kind != kind:
      continue
    got = [r for r in results.get(rows) or () if metric in r]
    if got:
      out[name] = effective_length(
          [r['length'] for r in got],
          curve_scores([r[metric] for r in got], exp), t, fraction, higher)
  pk = results.get('passkey')
  if pk:
    for depth, accs in zip(pk['depths'], pk['accuracy']):
      out[f'accuracy depth {depth:g}'] = effective_length(
          pk['lengths'], accs, t, fraction, True)
  return out


def format_table(effective: dict) -> str:
  """Markdown: one row per score with its reference and effective
  length."""
  lines = ['| score | reference (length) | threshold | effective length | '
           'longest passing |', '|---|---:|---:|---:|---:|']
  for name, e in effective.items():
    if e['reference'] is None:
      lines.append(f'| {name} | n/a | n/a | n/a | n/a |')
      continue
    sign = '>=' if e['higher_is_better'] else '<='
    lines.append(
        f'| {name} | {e["reference"]:.4g} ({e["reference_length"]}) | '
        f'{sign} {e["threshold"]:.4g} | {describe(e)} | '
        f'{e["longest_passing"] if e["longest_passing"] is not None else "-"}'
        ' |')
  return '\n'.join(lines)
