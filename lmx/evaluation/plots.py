"""What every plot of lmx shares: matplotlib without a display, and length
axes. The plots themselves sit beside the results they draw
(``lmx.evaluation.runner``, ``lmx.evaluation.task_accuracy``,
``lmx.evaluation.extensions``, ``lmx.evaluation.report``).
"""


def pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def length_axis(ax, lengths, max_ticks: int = 12) -> None:
  """A log2 length axis labelled with the plain lengths (powers of two and
  the ends when there are more than ``max_ticks``)."""
  ax.set_xscale('log', base=2)
  ticks = sorted(set(lengths))
  if len(ticks) > max_ticks:
    ends = {ticks[0], ticks[-1]}
    powers = {t for t in ticks if t & (t - 1) == 0}
    ticks = sorted(ends | powers)
  ax.set_xticks(ticks)
  ax.set_xticklabels([str(t) for t in ticks])
  ax.minorticks_off()


def legend_outside(ax, where: str = 'right', **kwargs):
  """A legend beside the axes (``where='right'``) or below them
  (``'below'``), never over the data; save with ``save`` so it is kept."""
  kwargs.setdefault('fontsize', 8)
  if where == 'below':  # under the tick labels and the axis label
    from matplotlib import transforms  # pylint: disable=g-import-not-at-top
    under = transforms.offset_copy(ax.transAxes, fig=ax.figure, y=-40,
                                   units='points')
    return ax.legend(loc='upper left', bbox_to_anchor=(0.0, 0.0),
                     bbox_transform=under, borderaxespad=0.0, **kwargs)
  return ax.legend(loc='upper left', bbox_to_anchor=(1.02, 1.0),
                   borderaxespad=0.0, **kwargs)


def save(fig, path: str, dpi: int = 120) -> None:
  """Writes the figure with everything drawn outside the axes (legends,
  long titles) inside the image, then closes it."""
  fig.savefig(path, dpi=dpi, bbox_inches='tight')
  pyplot().close(fig)


def overrides_note(overrides) -> str:
  """``'eval overrides: a=1, b=2'`` for an evaluation's ``--config``
  overrides, or '' without any."""
  if not overrides:
    return ''
  return 'eval overrides: ' + ', '.join(f'{k}={v}'
                                        for k, v in overrides.items())


def titled(name: str, overrides, width: int | None = 80) -> str:
  """``name``, with the evaluation overrides after a dash when any. With a
  ``width`` (characters; None for one line), a title longer than that puts
  the overrides on lines of their own, wrapped, so a plot with many
  overrides keeps its width."""
  note = overrides_note(overrides)
  if not note:
    return name
  if width is None or len(name) + len(note) + 3 <= width:
    return f'{name} — {note}'
  import textwrap  # pylint: disable=g-import-not-at-top
  return name + '\n' + textwrap.fill(note, width, break_long_words=True)


def plain_numbers():
  """A tick formatter writing 1, 10, 100 rather than powers of ten."""
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  return ticker.FuncFormatter(lambda v, _: f'{v:g}')
