"""The evaluators (lmx.evaluation.evaluators): every registered one has the
protocol, config.eval.evaluators refuses unknown names, a new evaluator
runs through ``evaluate`` and writes its files, and the default set is
what the config.eval switches asked for before the field existed."""

import json
import os

import pytest

from lmx.config import defaults
from lmx.errors import ConfigError
from lmx.evaluation import evaluators
from lmx.evaluation import runner as evaluation
from lmx.evaluation import sources
from lmx.training import trainer


@pytest.mark.parametrize('name', sorted(evaluators.EVALUATORS))
def test_every_registered_evaluator_has_the_protocol(name):
  cls = evaluators.EVALUATORS[name]
  assert issubclass(cls, evaluators.Evaluator) and cls.name == name
  for method in ('check', 'prepare', 'run', 'summary', 'write'):
    assert callable(getattr(cls(), method))
  # run is each one's own; the base class has none to inherit.
  assert cls.run is not evaluators.Evaluator.run
  assert set(cls.sources) <= {'text', 'task'} and cls.sources


def test_an_unknown_or_repeated_evaluator_is_refused_naming_the_field():
  c = defaults.get_config('size=tiny')
  c.eval.evaluators = ('loss', 'perplexity')
  with pytest.raises(ConfigError) as e:
    evaluators.names(c)
  message = str(e.value)
  assert "'perplexity'" in message and 'config.eval.evaluators' in message
  for name in evaluators.EVALUATORS:
    assert name in message
  c.eval.evaluators = ('loss', 'loss')
  with pytest.raises(ConfigError, match='twice'):
    evaluators.names(c)
  c.eval.evaluators = ('loss', 3)  # not a name
  from lmx.config import validate
  with pytest.raises(ConfigError, match='config.eval.evaluators'):
    validate.validate(c)


def _old_text_default(e) -> tuple:
  """What an evaluation of a text run ran before config.eval.evaluators:
  loss and per-position always, the rest by their switches."""
  return tuple(n for n, on in (
      ('loss', True), ('sliding', e.sliding), ('per_position', True),
      ('attention', e.diagnostics_windows > 0),
      ('generation', e.generation), ('ood', e.ood)) if on)


@pytest.mark.parametrize('sliding', [True, False])
@pytest.mark.parametrize('windows', [0, 2])
@pytest.mark.parametrize('generation', [True, False])
@pytest.mark.parametrize('ood', [True, False])
def test_the_default_set_is_what_the_switches_asked_for(sliding, windows,
                                                        generation, ood):
  c = defaults.get_config('size=tiny')
  assert c.eval.evaluators == ()
  c.eval.sliding, c.eval.diagnostics_windows = sliding, windows
  c.eval.generation, c.eval.ood = generation, ood
  assert evaluators.names(c) == _old_text_default(c.eval)
  # A task run got accuracy against length (generation is kept in the
  # set so that its check refuses it by name, as before).
  from configs.tasks import reverse
  t = reverse.get_config('size=tiny')
  t.eval.sliding, t.eval.diagnostics_windows = sliding, windows
  t.eval.generation, t.eval.ood = generation, ood
  assert isinstance(sources.data_source(t), sources.TaskSource)
  assert evaluators.names(t) == ('tasks',) + (
      ('generation',) if generation else ())
  # An explicit list is taken as it is, whatever the switches say.
  c.eval.evaluators = ('per_position', 'loss')
  assert evaluators.names(c) == ('per_position', 'loss')


def test_a_saved_config_without_the_field_gets_the_default():
  saved = defaults.get_config('size=tiny').to_dict()
  del saved['eval']['evaluators']
  defaults.complete(saved)
  assert tuple(saved['eval']['evaluators']) == ()


class _Lengths(evaluators.Evaluator):
  """A toy evaluator: the lengths it saw and the mean loss of each, one
  file."""

  name = 'toy_lengths'
  key = 'toy_lengths'
  checked = []

  def check(self, ctx):
    super().check(ctx)
    _Lengths.checked.append(list(ctx.lengths))

  def run(self, ctx):
    return {'lengths': list(ctx.lengths),
            'losses': [ctx.loss_at(n)['loss'] for n in ctx.lengths]}

  def summary(self, result):
    return {'toy_lengths': result['lengths']}

  def write(self, result, ctx):
    with open(os.path.join(ctx.out_dir, 'toy.json'), 'w') as f:
      json.dump(result, f)
    return ['toy.json']


@pytest.fixture
def toy_registered():
  evaluators.EVALUATORS[_Lengths.name] = _Lengths
  try:
    yield _Lengths
  finally:
    del evaluators.EVALUATORS[_Lengths.name]


def test_a_registered_evaluator_runs_through_evaluate(tiny_config, tmp_path,
                                                      toy_registered):
  c = tiny_config('alibi', **{'train.steps': 1, 'train.warmup_steps': 0})
  workdir = str(tmp_path / 'run')
  trainer.train(c, workdir, progress=False)
  c.eval.evaluators = (toy_registered.name, 'loss')
  out = str(tmp_path / 'ev')
  results = evaluation.evaluate(c, workdir, lengths=[16, 32], out_dir=out,
                                progress=False)
  assert toy_registered.checked == [[16, 32]]
  assert results['files'] == ['results.json', 'toy.json',
                              'loss_vs_length.png']
  assert sorted(os.listdir(out)) == sorted(results['files'])
  with open(os.path.join(out, 'toy.json')) as f:
    toy = json.load(f)
  assert toy['lengths'] == [16, 32]
  # The toy and the loss evaluator share one pass per length.
  assert toy['losses'] == [r['loss'] for r in results['results']]
  assert results['toy_lengths'] == toy
  with open(os.path.join(out, 'results.json')) as f:
    saved = json.load(f)
  assert saved['toy_lengths'] == [16, 32]
  assert saved['sliding'] == [] and results['per_position'] is None
  # An evaluator that cannot score the run's data is refused by name,
  # before anything is read.
  c.eval.evaluators = ('tasks',)
  with pytest.raises(ConfigError, match="'tasks'"):
    evaluation.evaluate(c, workdir, out_dir=str(tmp_path / 'no'))
  assert not os.path.exists(tmp_path / 'no')


def test_longppl_runs_through_evaluate_with_effective_lengths(tiny_config,
                                                              tmp_path):
  c = tiny_config('alibi', **{'train.steps': 1, 'train.warmup_steps': 0})
  workdir = str(tmp_path / 'run')
  trainer.train(c, workdir, progress=False)
  c.eval.evaluators = ('loss', 'longppl')
  c.eval.tokens = 128
  # A short context longer than every length is refused by name, before
  # anything is read.
  c.eval.longppl_short = 64
  with pytest.raises(ConfigError, match='longppl_short'):
    evaluation.evaluate(c, workdir, lengths=[16, 32],
                        out_dir=str(tmp_path / 'no'), progress=False)
  assert not os.path.exists(tmp_path / 'no')
  c.eval.longppl_short = 16
  out = str(tmp_path / 'ev')
  results = evaluation.evaluate(c, workdir, lengths=[8, 16, 32],
                                out_dir=out, plots=False, progress=False)
  with open(os.path.join(out, 'results.json')) as f:
    saved = json.load(f)
  rows = saved['longppl']
  assert [r['length'] for r in rows] == [8, 16, 32]
  for r, loss in zip(rows, saved['results']):
    # The same scored tokens as the loss evaluator's, and its perplexity.
    assert r['tokens'] == loss['tokens']
    assert r['perplexity'] == pytest.approx(loss['perplexity'], rel=1e-12)
    assert 0 <= r['key_tokens'] <= r['candidates'] <= r['tokens']
  # 8 < K: no candidate; 16 = K: the last token of each window only.
  assert rows[0]['candidates'] == 0 and rows[0]['longppl'] is None
  assert rows[1]['candidates'] == saved['results'][1]['windows']
  assert rows[2]['candidates'] == (32 - 16 + 1) * saved['results'][2][
      'windows']
  eff = saved['effective_length']
  assert set(eff) == {'perplexity', 'LongPPL'}
  assert eff['perplexity']['fraction'] == 0.85
  assert eff['perplexity']['reference_length'] in (8, 16)
  text = evaluation.format_longppl_table(results)
  assert text.count('\n') == 4 and '| 32 | 16 |' in text
  assert 'LongPPL' in evaluation.format_effective(results)
  tags = evaluation.tensorboard_scalars(saved)
  assert tags['eval/longppl_key_fraction_len32'] == rows[2]['key_fraction']
  assert 'eval/longppl_len8' not in tags  # no key token there
