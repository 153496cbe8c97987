"""Generation quality at length (lmx.evaluation.generation)."""

import numpy as np
import pytest

from lmx.config import validate as config_lib
from lmx.evaluation import generation as generation_eval
from lmx.training import run_state
from lmx.data import tokenizer
from lmx.errors import ConfigError, DataError

TEXT = ('def main(argv): return parse(argv) or None if x else y for z in '
        'range(10)')


def test_a_perfect_continuation_scores_100_bleu_and_1_rouge():
  s = generation_eval.score([TEXT, TEXT.upper()], [TEXT, TEXT.upper()])
  assert s['bleu'] == pytest.approx(100.0)
  assert s['bleu_per_document'] == pytest.approx([100.0, 100.0])
  for kind in generation_eval.ROUGE_TYPES:
    assert s[kind] == pytest.approx(1.0)
  # Whitespace does not count, words do: a changed layout is still perfect.
  assert generation_eval.score(['  a b\n c d e '], ['a b c d e'])[
      'bleu'] == pytest.approx(100.0)


def test_scores_of_partial_and_disjoint_continuations():
  words = TEXT.split()
  half = ' '.join(words[:len(words) // 2] + ['@'] * (len(words) // 2 + 1))
  s = generation_eval.score([half, 'q w e r t'], [TEXT, TEXT])
  assert 0.0 < s['bleu'] < 100.0
  assert s['bleu_per_document'][1] == 0.0
  # ROUGE-1 F of the half copy, counted by hand: m matching words out of
  # h generated and r true ones, F = 2 (m/h)(m/r) / (m/h + m/r) = 2m/(h+r).
  assert len(set(words)) == len(words)   # no word repeats in TEXT
  m, h, r = len(words) // 2, len(half.split()), len(words)
  assert s['rouge1_per_document'][0] == pytest.approx(2 * m / (h + r))
  assert s['rouge1_per_document'][1] == 0.0
  assert s['rouge1'] == pytest.approx(m / (h + r))


def _docs(rng, sizes):
  return [rng.integers(32, 127, n).astype(np.uint8) for n in sizes]


def test_generation_scores_are_in_range_and_aligned(tiny_config):
  """On an untrained model: scores in range; and a document made of the
  model's own greedy continuation scores 1.0 ROUGE and equal tokens, so
  the prompt ends and the reference starts at the same place."""
  c = tiny_config('alibi', **{'eval.generation_tokens': 12,
                              'eval.generation_documents': 2,
                              'eval.generation_multipliers': (1, 2)})
  graphdef, params = run_state.init_model(c)
  rng = np.random.default_rng(0)
  docs = _docs(rng, [10, 60, 80, 90])
  pos, skipped, chosen = generation_eval.plan(c, docs)
  assert pos == [16, 32] and not skipped and len(chosen) == 2
  out = generation_eval.generation_quality(graphdef, params, c, pos, skipped,
                                           chosen)
  for row in out['rows']:
    assert 0.0 <= row['bleu'] <= 100.0
    assert all(0.0 <= row[k] <= 1.0 for k in generation_eval.ROUGE_TYPES)
  # A document whose text after position 16 is the model's own greedy
  # continuation there (twice: the same shapes, so nothing compiles again).
  new = np.asarray(out['samples'][0]['generated_tokens'])
  assert new.size == 12
  doc = np.concatenate([chosen[0][:16], new, chosen[0][28:]]).astype(np.uint8)
  own = generation_eval.generation_quality(graphdef, params, c, pos, {},
                                           [doc, doc])
  row = own['rows'][0]
  assert row['exact_tokens'] == 1.0
  if row['reference_words']:
    assert row['rouge1'] == pytest.approx(1.0)
  assert '| 16 | 1 |' in generation_eval.format_table(out)


def test_positions_the_documents_cannot_reach_are_refused(tiny_config):
  c = tiny_config('alibi', **{'eval.generation_tokens': 100})
  docs = _docs(np.random.default_rng(1), [50, 300])
  with pytest.raises(DataError, match=r'position 256 needs a validation '
                     r'document of at least 356 tokens.*has 300.*up to 200'):
    generation_eval.plan(c, docs)
  # A learned table without rows for position + tokens: the default grid
  # skips it and says why; an explicit position is refused.
  c = tiny_config('learned', **{'eval.generation_tokens': 4,
                                'model.learned.max_len': 16})
  pos, skipped, _ = generation_eval.plan(c, docs)
  assert pos == [] and set(skipped) == {'16', '32', '64', '128', '256'}
  c.eval.generation_positions = (16,)
  with pytest.raises(ConfigError, match='generation_positions'):
    generation_eval.plan(c, docs)


@pytest.mark.parametrize('position, overrides', [
    ('rope', {'model.rope.scaling': 'yarn', 'model.rope.factor': 4.0,
              'model.rope.original_max_len': 16}),
    ('xpos', {'model.rerope.window': 8}),
    ('t5', {'model.lm_infinite.n_global': 2, 'model.lm_infinite.n_local': 6,
            'model.lm_infinite.distance_limit': 16}),
])
def test_inference_time_methods_generate_through_the_same_path(
    tiny_config, position, overrides):
  """An eval override changes the model, and the scored continuation is
  the greedy argmax of the overridden model's full forward pass."""
  c = tiny_config(position, **{'eval.generation_tokens': 6,
                               'eval.generation_multipliers': (2,)})
  graphdef, params = run_state.init_model(c)
  c.update_from_flattened_dict(overrides)
  config_lib.validate(c)
  graphdef2, _ = run_state.abstract_model(c)
  docs = _docs(np.random.default_rng(4), [80])
  out = generation_eval.generation_quality(graphdef2, params, c, [32], {},
                                           docs)
  row = out['rows'][0]
  assert 0 <= row['bleu'] <= 100 and 0 <= row['rouge1'] <= 1
  new = np.asarray(out['samples'][0]['generated_tokens'])
  assert new.size == 6
  assert out['samples'][0]['generated'] == tokenizer.decode(new)
  text = np.concatenate([docs[0][:32], new]).astype(np.int32)[None]
  pos = np.arange(text.shape[1])[None]
  apply = run_state.apply_fn(graphdef2)
  logits = np.asarray(apply(params, text, pos))
  np.testing.assert_array_equal(np.argmax(logits[0, 31:-1], -1), new)
  plain = np.asarray(run_state.apply_fn(graphdef)(params, text, pos))
  assert not np.allclose(plain, logits, atol=1e-5)   # the override acts
