"""What every plot of lmx shares: matplotlib without a display, and length
axes. The plots themselves sit beside the results they draw
(``lmx.evaluation``, ``lmx.task_eval``, ``lmx.extensions``, ``lmx.report``).
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
