"""Generation quality at length (LM-Infinite, Han et al. 2023, section 5).

After each of several positions ``p`` in validation documents (by default
1, 2, 4, 8 and 16 times the training length), the model continues the
document's first ``p`` tokens greedily for ``N`` tokens
(``config.eval.generation_tokens``, default 100) with the KV cache
(``lmx.model.decoding.generate``, the same model path as every decoding, so eval
overrides such as the Lambda-shaped mask, RoPE scalings and distance clamps
apply), and the continuation is scored against the document's true next
``N`` tokens:

- **BLEU** (sacrebleu, corpus level over the documents, 0-100) and
- **ROUGE-1, ROUGE-2, ROUGE-L** F-measures (rouge-score, mean over the
  documents, 0-1),

both on the *words* of the decoded text: the bytes are decoded as UTF-8 and
split on whitespace, and both libraries get exactly those words (sacrebleu
with ``tokenize='none'``, rouge-score with a whitespace tokenizer), so
punctuation and case count as written, which matters for code. BLEU has
no 4-gram to match in a text of fewer than four words, so a very short
pair scores 0 even when equal; at N = 100 bytes the stdlib corpus gives
about 15 to 25 words per continuation.

The same documents serve every position: the first
``config.eval.generation_documents`` validation documents (in path order)
long enough for the longest position plus N, so positions differ only in
how much context precedes the continuation. Positions are contiguous
(decoding always uses ``arange``), whatever ``config.positions.eval`` says.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lmx.positions import sampling
from lmx.config import validate as config_lib
from lmx.model import decoding
from lmx.evaluation import plots
from lmx.data import tokenizer
from lmx.errors import ConfigError, DataError

ROUGE_TYPES = ('rouge1', 'rouge2', 'rougeL')


class _Whitespace:
  """rouge-score's tokenizer interface: words split on whitespace."""

  def tokenize(self, text: str) -> list[str]:
    return text.split()


def words(text: str) -> list[str]:
  return text.split()


def score(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
  """BLEU and ROUGE of each hypothesis against its reference, on words.

  Returns ``{'bleu': corpus BLEU 0-100, 'rouge1'/'rouge2'/'rougeL': mean
  F-measure 0-1, 'bleu_per_document': sentence BLEU 0-100 of each pair,
  'rouge*_per_document': ...}``. An identical pair of at least four words
  scores 100 and 1.0."""
  if len(hypotheses) != len(references) or not hypotheses:
    raise ValueError('score needs as many hypotheses as references, at '
                     f'least one; got {len(hypotheses)} and '
                     f'{len(references)}.')
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
  from sacrebleu.metrics import BLEU  # pylint: disable=g-import-not-at-top
  hyps = [' '.join(words(h)) for h in hypotheses]
  refs = [' '.join(words(r)) for r in references]
  bleu = BLEU(tokenize='none')
  out = {'bleu': float(bleu.corpus_score(hyps, [refs]).score)}
  sentence = BLEU(tokenize='none', effective_order=True)
  out['bleu_per_document'] = [float(sentence.sentence_score(h, [r]).score)
                              for h, r in zip(hyps, refs)]
  scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=_Whitespace())
  per = [scorer.score(r, h) for h, r in zip(hyps, refs)]
  for kind in ROUGE_TYPES:
    values = [float(s[kind].fmeasure) for s in per]
    out[kind] = float(np.mean(values))
    out[f'{kind}_per_document'] = values
  return out


# ------------------------------------------------------------ the plan


def positions(config) -> tuple[list[int], dict[str, str]]:
  """(positions to generate after, {skipped position: reason}).

  ``config.eval.generation_positions`` when given (each must be runnable,
  else ConfigError), else ``generation_multipliers`` x ``train.seq_len``,
  dropping (and reporting) those whose position plus the new tokens the
  encoding cannot represent (a learned table)."""
  e = config.eval
  n = int(e.generation_tokens)
  explicit = list(e.generation_positions or ())
  asked = explicit or [m * config.train.seq_len
                       for m in e.generation_multipliers]
  keep, skipped = [], {}
  for p in asked:
    problem = config_lib.check_length(config, p + n, sampling.DEFAULT,
                                      f'Generation after position {p}: the')
    if problem is None:
      keep.append(p)
    elif explicit:
      raise ConfigError(problem + ' (config.eval.generation_positions)')
    else:
      skipped[str(p)] = problem
  return sorted(set(keep)), skipped


def choose_documents(config, docs: Sequence[np.ndarray],
                     longest: int) -> list[np.ndarray]:
  """The first ``generation_documents`` documents that hold ``longest``
  tokens plus ``generation_tokens`` more; DataError when none does."""
  e = config.eval
  need = longest + int(e.generation_tokens)
  long_enough = [np.asarray(d) for d in docs if np.size(d) >= need]
  if not long_enough:
    sizes = sorted((np.size(d) for d in docs), reverse=True)
    most = sizes[0] if sizes else 0
    reach = max(most - int(e.generation_tokens), 0)
    raise DataError(
        f'Generation after position {longest} needs a validation document of '
        f'at least {need} tokens ({longest} + config.eval.generation_tokens='
        f'{e.generation_tokens}), but the longest of the {len(docs)} '
        f'validation documents of config.data.source={config.data.source!r} '
        f'has {most}. Ask for positions up to {reach} '
        '(config.eval.generation_multipliers or generation_positions), '
        'fewer generation_tokens, or a corpus with longer documents.')
  return long_enough[:int(e.generation_documents)]


def plan(config, docs: Sequence[np.ndarray]):
  """(positions, skipped, documents): every check, before compiling."""
  pos, skipped = positions(config)
  if not pos:
    return pos, skipped, []
  return pos, skipped, choose_documents(config, docs, pos[-1])


# ------------------------------------------------------------ running


def generation_quality(graphdef, params, config, pos: Sequence[int],
                       skipped: dict, documents: Sequence[np.ndarray],
                       tok=tokenizer.BYTES) -> dict:
  """Greedy continuations after each position, scored (see the module
  docstring). One cache length (the longest position plus N) serves every
  position, so the decoding step compiles once."""
  n = int(config.eval.generation_tokens)
  cache_len = pos[-1] + n
  rows, samples = [], []
  for p in pos:
    prompts = np.stack([d[:p] for d in documents]).astype(np.int32)
    truth = np.stack([d[p:p + n] for d in documents]).astype(np.int32)
    new = decoding.generate((graphdef, params), config, prompts, n,
                            temperature=0, max_len=cache_len)
    hyps = [tok.decode(row) for row in new]
    refs = [tok.decode(row) for row in truth]
    s = score(hyps, refs)
    rows.append({'position': p, 'multiple': p / config.train.seq_len,
                 'exact_tokens': float((new == truth).mean()),
                 'reference_words': float(np.mean([len(words(r))
                                                   for r in refs])),
                 **s})
    samples.append({'position': p, 'generated': hyps[0],
                    'reference': refs[0],
                    'generated_tokens': new[0].tolist()})
  return {'train_length': config.train.seq_len, 'tokens': n,
          'documents': len(documents), 'position': config.model.position,
          'rows': rows, 'samples': samples, 'skipped': skipped}


def format_table(result: dict) -> str:
  """A markdown table of BLEU and ROUGE against position."""
  t = result['train_length']
  lines = ['| position | x train | BLEU | ROUGE-1 | ROUGE-2 | ROUGE-L | '
           'tokens equal |', '|---:|---:|---:|---:|---:|---:|---:|']
  for r in result['rows']:
    lines.append(f"| {r['position']} | {r['position'] / t:g} | "
                 f"{r['bleu']:.2f} | {r['rouge1']:.3f} | {r['rouge2']:.3f} | "
                 f"{r['rougeL']:.3f} | {r['exact_tokens']:.3f} |")
  for p in result.get('skipped', {}):
    lines.append(f'| {p} | {int(p) / t:g} | n/a | n/a | n/a | n/a | n/a |')
  return '\n'.join(lines)


def plot(result: dict, path: str, overrides=None) -> None:
  """BLEU (left) and the ROUGE F-measures (right) against position, the
  training length marked; legends outside the axes; the evaluation's
  ``overrides`` in the title."""
  plt = plots.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
  xs = [r['position'] for r in result['rows']]
  name = result['position']
  axes[0].plot(xs, [r['bleu'] for r in result['rows']], marker='o',
               label=f'{name}: BLEU')
  axes[0].set_ylabel('BLEU (0-100)\naxis fitted to the data')
  for kind, marker in zip(ROUGE_TYPES, 'os^'):
    axes[1].plot(xs, [r[kind] for r in result['rows']], marker=marker,
                 label=f'{name}: {kind.upper().replace("ROUGE", "ROUGE-")}')
  axes[1].set_ylabel('ROUGE F-measure (0-1)\naxis fitted to the data')
  for ax in axes:
    ax.set_ylim(bottom=0)
    ax.axvline(result['train_length'], color='gray', linestyle='--',
               label=f'training length ({result["train_length"]})')
    plots.length_axis(ax, xs)
    ax.set_xlabel('position generated after (tokens of context)')
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  fig.suptitle(plots.titled(
      f'{name}: greedy continuations of {result["tokens"]} tokens vs the '
      f'true ones ({result["documents"]} documents)', overrides))
  fig.tight_layout()
  plots.save(fig, path)
