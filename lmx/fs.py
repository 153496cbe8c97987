"""File-system checks shared by training, evaluation and the data cache:
each problem is one message that names the path in the way."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from typing import Any, Optional

from lmx.errors import CheckpointError


def check_writable_dir(path: str, what: str,
                       error: type = CheckpointError) -> str:
  """The output-path check of every command (``--workdir``, ``--out``,
  ``sweep.py --dir``), run before any work: ``path`` is, or can be created
  as, a folder this process can write. Creates nothing; raises ``error``
  naming the path in the way (a file where the folder should be, a file
  among its parents, a folder that is not writable). Returns the absolute
  path."""
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
  return path


def make_writable_dir(path: str, what: str,
                      error: type = CheckpointError) -> str:
  """``check_writable_dir``, then creates ``path`` (and its parents)."""
  path = check_writable_dir(path, what, error)
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


def write_atomic(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` whole or not at all: a crash or a kill
  while writing leaves the previous file (a reader never sees half a
  file)."""
  tmp = f'{path}.tmp{os.getpid()}'
  try:
    with open(tmp, 'w', newline='') as f:
      f.write(text)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def read_json(path: str, expect: type = dict,
              error: type = CheckpointError,
              fix: Optional[str] = None) -> Any:
  """The one check of a saved JSON record (config.json, results.json,
  sweep.json): its content as ``expect`` (a dict unless told), or ``error``
  with one message naming the file and what is wrong with it: unreadable,
  not UTF-8, not JSON (cut short by a kill, say), or JSON of another kind
  (a list where a dict is saved). ``fix`` ends the message."""
  fix = fix or ('it was written by lmx and should not be edited by hand: '
                'restore it from a copy, or write it again with the command '
                'that made it.')
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise error(f'{path} cannot be read ({e.strerror}): {fix}') from None
  try:
    value = json.loads(data.decode('utf-8'))
  except UnicodeDecodeError:
    raise error(f'{path} is damaged (not UTF-8 text): {fix}') from None
  except ValueError as e:
    raise error(f'{path} is damaged (not valid JSON: {e}): {fix}') from None
  if not isinstance(value, expect):
    raise error(f'{path} holds a JSON {type(value).__name__}, not the '
                f'{expect.__name__} lmx writes there: {fix}')
  return value


def sha256_file(path: str) -> str:
  """The sha256 of a file's bytes, read in blocks (checkpoints' seals, the
  token store's shards)."""
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 22), b''):
      h.update(block)
  return h.hexdigest()
