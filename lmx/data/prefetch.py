"""Training batches built ahead of the step, in a background thread.

``Prefetch(fn, start, stop, depth)`` calls ``fn(step)`` for the steps
``start, start + 1, ...`` in a thread of its own and keeps up to ``depth``
results ready, so the host builds (and puts on the devices) the next batches
while the devices compute. ``fn`` is the pure function of the step that
the loop would call itself, so the batches are the same with or without
prefetching; ``depth=0`` calls it in the caller's thread.

An exception raised by ``fn`` is raised again by ``get`` for that step, in
the caller's thread.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable


class Prefetch:
  """``get(step)`` for consecutive steps from ``start``; ``close()`` stops
  the thread (also as a context manager)."""

  def __init__(self, fn: Callable[[int], Any], start: int, stop: int,
               depth: int):
    self.fn, self.depth = fn, int(depth)
    self.next = start
    self._stop = threading.Event()
    self._thread = None
    if self.depth > 0 and start < stop:
      self._queue = queue.Queue(maxsize=self.depth)
      self._thread = threading.Thread(
          target=self._work, args=(start, stop), name='lmx-prefetch',
          daemon=True)
      self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _work(self, start: int, stop: int) -> None:
    for step in range(start, stop):
      if self._stop.is_set():
        return
      try:
        item = (step, self.fn(step), None)
      except BaseException as e:  # pylint: disable=broad-except
        self._put((step, None, e))
        return
      if not self._put(item):
        return

  def get(self, step: int):
    if step != self.next:
      raise ValueError(f'Prefetch gives consecutive steps: expected '
                       f'{self.next}, asked for {step}.')
    self.next += 1
    if self._thread is None:
      return self.fn(step)
    got, value, error = self._queue.get()
    assert got == step, (got, step)
    if error is not None:
      raise error
    return value

  def close(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
