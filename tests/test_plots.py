"""What the plots share: titles that name an evaluation's overrides."""

from lmx.evaluation import plots


def test_titles_name_the_overrides_and_wrap_long_ones():
  assert plots.titled('rope: loss', {}) == 'rope: loss'
  assert plots.titled('rope: loss', {'model.rope.scaling': 'yarn'}) == (
      'rope: loss — eval overrides: model.rope.scaling=yarn')
  many = {f'eval.field_{i}': str(i) for i in range(8)}
  title = plots.titled('rope: loss against length', many, width=50)
  first, *rest = title.split('\n')
  assert first == 'rope: loss against length' and len(rest) >= 2
  assert all(len(line) <= 50 for line in rest)
  assert ' '.join(rest) == plots.overrides_note(many)
  assert '\n' not in plots.titled('rope', many, width=None)
