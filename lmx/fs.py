"""File-system checks shared by training, evaluation and the data cache:
each problem is one message that names the path in the way."""

from __future__ import annotations

import errno
import os

from lmx.errors import CheckpointError


def make_writable_dir(path: str, what: str,
                      error: type = CheckpointError) -> str:
  """Creates ``path`` (and its parents) as a folder this process can write,
  or raises CheckpointError naming the path in the way: a file where the
  folder should be, a file among its parents, or a folder that is not
  writable. ``what`` names the path for the message (``--workdir``);
  ``error`` is the exception raised."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.exists(path) and not os.path.isdir(path):
    raise error(
        f'{what} {path} is a file, not a folder: move it away or give '
        'another path.')
  parent = path
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise error(
        f'{what} {path} lies under {parent}, which is a file, not a folder: '
        'give a path outside it.')
  if not os.access(parent, os.W_OK | os.X_OK):
    where = '' if parent == path else f' (its parent {parent} exists)'
    raise error(
        f'{what} {path} is not writable by this user{where}: fix its '
        'permissions or give another path.')
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise error(
        f'{what} {path} cannot be created ({e.strerror}): give another '
        'path.') from None
  return path


def is_disk_full(e: BaseException) -> bool:
  """Whether ``e`` (or an exception it was raised from) is ENOSPC/EDQUOT."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if 'No space left on device' in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False
