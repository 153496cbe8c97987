"""The Saver's seals run off the training loop's thread, once per step.

Pruning decides from what this process sealed or verified and the files'
stats, so the loop never hashes a checkpoint, and kept ones are never
hashed again. Small states: these run in seconds.
"""

import collections
import os
import threading

import numpy as np

from lmx.training import checkpoint


def _state(value, size=4):
  return {'step': np.int32(value), 'w': np.full((size,), value, np.float32)}


def _record_hashing(monkeypatch):
  """Records (thread, step, path) for every file ``checkpoint._sha256``
  hashes."""
  calls = []
  real = checkpoint._sha256

  def sha256(path):
    step = int(os.path.relpath(path, _step_root(path)).split(os.sep)[0])
    calls.append((threading.current_thread(), step, path))
    return real(path)
  monkeypatch.setattr(checkpoint, '_sha256', sha256)
  return calls


def _step_root(path):
  """The checkpoints/ folder above a file of a step."""
  d = os.path.dirname(path)
  while os.path.basename(d) != checkpoint.CHECKPOINT_DIR:
    d = os.path.dirname(d)
  return d


def test_the_loop_thread_never_hashes_and_each_step_is_hashed_once(
    tmp_path, monkeypatch):
  workdir = str(tmp_path)
  calls = _record_hashing(monkeypatch)
  saver = checkpoint.Saver(workdir, keep=2)
  for s in range(1, 7):
    saver.save(s, _state(s), {})
    # What a save leaves to the sealing thread is all the loop did.
    assert all(t is not threading.main_thread() for t, _, _ in calls)
  saver.close()
  assert calls, 'nothing was hashed'
  assert all(t is not threading.main_thread() for t, _, _ in calls)
  # Every file of every step once: kept steps were never hashed again. (The
  # number of files differs between steps: the store batches its data
  # files by the timing of the writes.)
  assert max(collections.Counter(p for _, _, p in calls).values()) == 1
  assert {step for _, step, _ in calls} == set(range(1, 7))
  for s in (5, 6):
    root = checkpoint.step_dir(workdir, s)
    assert ({os.path.relpath(p, root) for _, step, p in calls if step == s}
            == set(checkpoint._files(root)))
  assert checkpoint.all_steps(workdir) == [5, 6]


def test_seals_are_there_and_valid_after_close(tmp_path):
  workdir = str(tmp_path)
  saver = checkpoint.Saver(workdir, keep=3)
  for s in (2, 4, 6):
    saver.save(s, _state(s, size=1000), {'n': s})
  saver.close()
  assert checkpoint.all_steps(workdir) == [2, 4, 6]
  for s in (2, 4, 6):
    assert checkpoint.is_sealed(workdir, s)
    assert checkpoint.verify(workdir, s) is None
    assert not os.path.exists(os.path.join(checkpoint.step_dir(workdir, s),
                                           checkpoint.CHECKSUM_FILE + '.tmp'))


def test_a_file_changed_after_its_seal_is_noticed_without_hashing(
    tmp_path, monkeypatch):
  """The stats recorded at the seal tell a changed step from a good one,
  even a change right after the seal. (That a changed newer step leaves the
  older good one in place is test_reliability's pruning test.)"""
  workdir = str(tmp_path)
  saver = checkpoint.Saver(workdir, keep=1)
  saver.save(1, _state(1), {})
  saver.save(2, _state(2), {})
  saver.finish()
  assert checkpoint.all_steps(workdir) == [2]
  assert checkpoint.unchanged_since_good(workdir, 2)
  # Rewrite a byte of step 2 at once (within the clock tick of the seal).
  directory = checkpoint.step_dir(workdir, 2)
  path = max(checkpoint._files(directory).values(), key=os.path.getsize)
  with open(path, 'r+b') as f:
    byte = f.read(1)
    f.seek(0)
    f.write(bytes([byte[0] ^ 1]))
  calls = _record_hashing(monkeypatch)
  assert not checkpoint.unchanged_since_good(workdir, 2)
  assert calls == []  # told by the stats alone
  saver.save(3, _state(3), {})
  saver.close()
  assert checkpoint.all_steps(workdir) == [3]  # older than the good 3
  assert checkpoint.verify(workdir, 3) is None
  # A step this process never sealed nor verified is not known to be good.
  checkpoint._known_good.pop(checkpoint.step_dir(workdir, 3))
  assert not checkpoint.unchanged_since_good(workdir, 3)
  assert checkpoint.verify(workdir, 3) is None  # ... until it is verified
  assert checkpoint.unchanged_since_good(workdir, 3)
