"""The one module that talks to orbax.

A checkpoint ``<workdir>/checkpoints/<step>/`` holds the train state
(``step``, ``params``, ``opt_state``) as an orbax StandardSave item and a
small JSON item ``meta`` (run counters). The run's config is written beside
the checkpoints as ``<workdir>/config.json``.

Safety, on top of what orbax gives:

- Atomic saves. Orbax writes a step into a temporary directory and renames
  it when complete, so a kill during a save leaves no step directory; the
  temporary one is ignored and cleaned up by the next run.
- Checksums. Orbax does not detect flipped bits: a damaged data file can
  restore silently wrong values. Once a save has finished, ``seal`` writes
  ``lmx_checksums.json`` (sha256 of every file of the step) into it, and
  ``verify`` checks a step against it before it is restored.
- Recovery. ``restore_latest_good`` restores the newest checkpoint that
  verifies and restores; newer ones that do not are moved (never deleted) to
  ``<workdir>/checkpoints_corrupt/``, or the run refuses, as configured.
- Pruning. ``Saver`` keeps the newest ``keep`` checkpoints that are sealed
  and unchanged since, and deletes only older ones, so it never deletes the
  only good checkpoint. Each step is hashed once, when it is sealed, on a
  thread of its own: the training loop neither hashes nor re-hashes (see
  ``Saver``).
- One writer. ``WorkdirLock`` makes a second training run on the same
  workdir refuse instead of interleaving checkpoints with the first.
- Several processes (multi-host). Every process takes part in each orbax
  save and restore (each writes and reads its own shards); process 0 alone
  seals (after a barrier that waits for every process's writes), decides
  what is pruned and sets corrupt steps aside; the others wait for its
  decision (a broadcast) and for the restore's barrier before going on.
  A restore target whose leaves carry shardings (``jax.ShapeDtypeStruct``
  with ``sharding``) restores onto that mesh, whatever mesh saved it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import json
import os
import shutil
import socket
import sys
import threading
import time
from concurrent import futures
from typing import Any, Optional

import jax
import ml_collections
import orbax.checkpoint as ocp

from lmx.config import defaults
from lmx import sharding
from lmx import fs
from lmx.fs import is_disk_full, make_writable_dir  # noqa: F401 (re-exported)
from lmx.errors import CheckpointError

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
CORRUPT_DIR = 'checkpoints_corrupt'
CHECKSUM_FILE = 'lmx_checksums.json'
LOCK_FILE = 'lmx.lock'
UNSEALED = 'unsealed'
def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def step_dir(workdir: str, step: int) -> str:
  return os.path.join(checkpoint_dir(workdir), str(step))


def _is_primary() -> bool:
  return jax.process_index() == 0


# ----------------------------------------------------------------- checksums


def _files(directory: str) -> dict[str, str]:
  out = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, directory)
      if rel not in (CHECKSUM_FILE, CHECKSUM_FILE + '.tmp'):
        out[rel] = path
  return out


def _sha256(path: str) -> str:
  # One name in this module, so that tests can see where hashing happens.
  return fs.sha256_file(path)


# What this process last found good, by step directory: the stat of each
# data file (``_stats``) when it was sealed or verified (None when those
# stats could not be trusted: a file changed within the file system's clock
# tick), and the bytes of its ``lmx_checksums.json``. ``Saver`` compares a
# kept step with these instead of hashing it again: a data file written
# since has another mtime/ctime, size or inode, and the small checksum file
# is read and compared whole. Silent damage of the medium itself changes no
# stat; ``verify`` finds it at the next restore.
_known_good: dict[str, tuple[Optional[dict], bytes]] = {}
_known_lock = threading.Lock()

# For ``verify``, which may not write: a file whose ctime is within this
# much of the wall clock may still change within its clock tick (the kernel
# stamps files with a clock of 1-10 ms resolution).
_TICK_NS = 50_000_000


def _stats(files: dict[str, str]) -> dict[str, tuple[int, int, int, int]]:
  """(size, mtime, ctime, inode) of each file: what any write changes."""
  out = {}
  for rel, path in files.items():
    st = os.stat(path)
    out[rel] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
  return out


def _settled_stats(files: dict[str, str], now,
                   wait_s: float) -> Optional[dict]:
  """The files' stats, taken once ``now()`` (a time on the files' clock,
  read before the stats) is later than every file's ctime, so any change
  after this call gets a later ctime than the one recorded; None if that
  does not happen within ``wait_s`` (a clock that went back)."""
  deadline = time.monotonic() + wait_s
  while True:
    t = now()
    stats = _stats(files)
    if all(st[2] < t for st in stats.values()):
      return stats
    if time.monotonic() > deadline:
      return None
    time.sleep(0.002)


def _remember(directory: str, stats: Optional[dict], sums: bytes) -> None:
  with _known_lock:
    _known_good[directory] = (stats, sums)


def _forget(directory: str) -> None:
  with _known_lock:
    _known_good.pop(directory, None)


def seal(workdir: str, step: int) -> None:
  """Records the sha256 of every file of a finished checkpoint (and, in this
  process, the files' stats, for ``unchanged_since_good``)."""
  directory = step_dir(workdir, step)
  files = _files(directory)
  path = os.path.join(directory, CHECKSUM_FILE)
  with open(path + '.tmp', 'w') as f:
    def fs_now():  # the file system's own clock: touch the file, read it
      os.utime(f.fileno())
      return os.fstat(f.fileno()).st_ctime_ns
    stats = _settled_stats(files, fs_now, wait_s=1.0)
    sums = {rel: _sha256(p) for rel, p in sorted(files.items())}
    text = json.dumps({'step': step, 'sha256': sums}, indent=0)
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(path + '.tmp', path)
  _remember(directory, stats, text.encode())


def is_sealed(workdir: str, step: int) -> bool:
  return os.path.isfile(os.path.join(step_dir(workdir, step), CHECKSUM_FILE))


def verify(workdir: str, step: int) -> Optional[str]:
  """None if the step matches its checksums, ``UNSEALED`` if it has none,
  else what is wrong with it. A step that matches is remembered as good
  (``unchanged_since_good``)."""
  directory = step_dir(workdir, step)
  path = os.path.join(directory, CHECKSUM_FILE)
  if not os.path.isfile(path):
    return UNSEALED
  try:
    with open(path, 'rb') as f:
      text = f.read()
    record = json.loads(text)
    expected = record['sha256']
    sealed_step = record.get('step')
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    return f'its {CHECKSUM_FILE} is unreadable ({e})'
  # The seal names the step it was written for: a folder renamed or
  # swapped on disk holds another step's state (its own files match).
  if sealed_step != step:
    return (f'its {CHECKSUM_FILE} was sealed for step {sealed_step!r}, not '
            f'{step}: the folder holds another step\'s state (renamed or '
            'swapped on disk)')
  present = _files(directory)
  try:
    stats = _settled_stats(present, lambda: time.time_ns() - _TICK_NS,
                           wait_s=0.1)
  except OSError:
    stats = None  # a file vanished: the check below says which
  _forget(directory)
  for rel, digest in expected.items():
    if rel not in present:
      return f'file {rel} is missing'
    if _sha256(present[rel]) != digest:
      return f'file {rel} does not match its checksum'
  _remember(directory, stats, text)
  return None


def unchanged_since_good(workdir: str, step: int) -> bool:
  """Whether this process sealed or verified ``step`` and none of its files
  changed since, judged by their stats alone (no hashing). Steps it never
  checked are not known to be good: False. Where the stats could not be
  trusted, the step is verified (hashed) instead."""
  directory = step_dir(workdir, step)
  with _known_lock:
    if directory not in _known_good:
      return False
    stats, sums = _known_good[directory]
  if stats is None:
    return verify(workdir, step) is None
  try:
    with open(os.path.join(directory, CHECKSUM_FILE), 'rb') as f:
      if f.read() != sums:
        return False
    return _stats(_files(directory)) == stats
  except OSError:
    return False


# ------------------------------------------------------------------- restore


@contextlib.contextmanager
def _quiet_failed_reads():
  """A failed orbax read leaves coroutines that print tracebacks when they
  are collected; the failure is reported by the caller instead."""
  hook = sys.unraisablehook
  sys.unraisablehook = lambda *_: None
  try:
    yield
  finally:
    gc.collect()
    sys.unraisablehook = hook


def _on_this_host(abstract_state: Any) -> Any:
  """The target with leaves that name no sharding placed on the first local
  device, so a checkpoint saved on a mesh of other devices (another run's
  topology) still restores, e.g. for evaluation on one device."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  def one(leaf):
    if isinstance(leaf, jax.ShapeDtypeStruct) and leaf.sharding is None:
      return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device)
    return leaf
  return jax.tree.map(one, abstract_state)


def restore_step(workdir: str, step: int, abstract_state: Any
                 ) -> tuple[Any, dict]:
  """(state, meta) of one step, restored into the abstract target: onto the
  shardings its leaves carry, else onto the first local device."""
  items = {'state': ocp.args.StandardRestore(_on_this_host(abstract_state))}
  has_meta = os.path.isdir(os.path.join(step_dir(workdir, step), 'meta'))
  if has_meta:
    items['meta'] = ocp.args.JsonRestore()
  with ocp.CheckpointManager(checkpoint_dir(workdir)) as mngr:
    restored = mngr.restore(step, args=ocp.args.Composite(**items))
  return restored['state'], (dict(restored['meta']) if has_meta else {})


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0][:200] if text else ""}'


def try_restore(workdir: str, step: int, abstract_state: Any
                ) -> tuple[Optional[tuple[Any, dict]], Optional[str]]:
  """((state, meta), None), or (None, why the step cannot be used)."""
  problem = verify(workdir, step)
  if problem not in (None, UNSEALED):
    return None, problem
  try:
    with _quiet_failed_reads():
      restored = restore_step(workdir, step, abstract_state)
  except Exception as e:  # pylint: disable=broad-except
    return None, f'it does not restore ({_first_line(e)})'
  if (problem == UNSEALED and _is_primary()
      and os.access(step_dir(workdir, step), os.W_OK)):
    seal(workdir, step)  # restored fine: record it as good from now on
  return restored, None


def quarantine(workdir: str, step: int) -> str:
  """Moves a step out of the checkpoint directory; returns where to."""
  target_root = os.path.join(os.path.abspath(workdir), CORRUPT_DIR)
  os.makedirs(target_root, exist_ok=True)
  target = os.path.join(target_root, str(step))
  n = 1
  while os.path.exists(target):
    n += 1
    target = os.path.join(target_root, f'{step}.{n}')
  shutil.move(step_dir(workdir, step), target)
  return target


def restore_latest_good(workdir: str, abstract_state: Any,
                        on_corrupt: str = 'previous'
                        ) -> Optional[tuple[int, Any, dict]]:
  """(step, state, meta) of the newest usable checkpoint, or None if there
  are no checkpoints.

  Newer steps that fail verification or restoration are, with
  ``on_corrupt='previous'``, moved to ``checkpoints_corrupt/`` (with a
  message on stderr) once an older good one has restored; with ``'refuse'``
  the first such step raises CheckpointError and nothing is moved. If no
  step restores, CheckpointError, and nothing is moved either.
  """
  steps = all_steps(workdir)
  bad = []
  for step in reversed(steps):
    restored, problem = try_restore(workdir, step, abstract_state)
    if restored is not None:
      break
    bad.append((step, problem))
    if on_corrupt == 'refuse':
      older = [s for s in steps if s < step]
      hint = (f'move {step_dir(workdir, step)} away to resume from step '
              f'{older[-1]}, or ' if older else '')
      raise CheckpointError(
          f'The latest checkpoint, step {step} in {checkpoint_dir(workdir)}, '
          f'is unusable: {problem}. Nothing was changed. To go on, {hint}'
          'set --config.train.on_corrupt_checkpoint=previous to have lmx '
          'set unusable checkpoints aside and use the newest good one.')
  else:
    if not bad:
      return None
    listing = '; '.join(f'step {s}: {p}' for s, p in bad)
    raise CheckpointError(
        f'No checkpoint in {checkpoint_dir(workdir)} can be used ({listing}). '
        'Nothing was moved or deleted. If the code changed since they were '
        'written, restore the old version; otherwise start a new --workdir.')
  for s, problem in bad:
    if _is_primary():
      where = quarantine(workdir, s)
      print(f'warning: checkpoint step {s} is unusable ({problem}); moved to '
            f'{where}. Resuming from step {step}.', file=sys.stderr)
  # The others wait until process 0 has sealed and moved what it had to.
  sharding.barrier('lmx_checkpoint_restored')
  return step, restored[0], restored[1]


# ---------------------------------------------------------------------- save


class Saver:
  """Asynchronous saves for a training run, sealed and pruned.

  A save runs in the background while training goes on: orbax writes the
  step, then (process 0) a sealing thread hashes its files and writes
  ``lmx_checksums.json``. The training loop's own thread does neither: at
  the next save it waits only for orbax's write (usually long done), hands
  the step to the sealing thread and prunes. ``finish`` and ``close`` wait
  for everything, seals included.

  Pruning keeps the newest ``keep`` steps that this process sealed (or
  verified when it restored them) and whose files are unchanged since
  (``unchanged_since_good``: their stats, no hashing), and deletes only
  older ones. A step whose seal is still running, that is unsealed or whose
  files changed never counts towards ``keep``; so the disk may hold a step
  being written and one being sealed beside the ``keep`` good ones, and
  after a resume the older steps stay until ``keep`` newer ones are good.
  """

  def __init__(self, workdir: str, keep: int):
    self.workdir = workdir
    self.keep = keep
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None, create=True, cleanup_tmp_directories=True,
        enable_async_checkpointing=True)
    self._mngr = ocp.CheckpointManager(checkpoint_dir(workdir),
                                       options=options)
    self._in_flight: list[int] = []  # being written by orbax
    self._sealing: dict[int, futures.Future] = {}  # being hashed
    self._sealer = futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix='lmx-seal')

  def save(self, step: int, state: Any, meta: dict) -> None:
    self._settle(wait_for_seals=False)
    if step in self._mngr.all_steps():
      return  # e.g. a stop request right after a periodic save
    self._in_flight.append(step)
    try:
      self._mngr.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                      force=True)
    except Exception as e:  # pylint: disable=broad-except
      self._failed(e)
      raise

  def finish(self) -> None:
    """Waits for saves in flight and their seals, prunes old checkpoints.

    With several processes, all call this: process 0 seals only once every
    process has finished writing, and decides what is pruned; all of them
    then delete those steps through orbax (whose delete is collective).

    A full disk (ENOSPC) while a step is written or sealed is a
    CheckpointError that names the newest good checkpoint, which is kept;
    what was written of the failed step is removed.
    """
    self._settle(wait_for_seals=True)

  def _settle(self, wait_for_seals: bool) -> None:
    """Waits for orbax's writes, hands the written steps to the sealing
    thread (process 0), collects the seals that are done (all of them if
    ``wait_for_seals``) and prunes.

    The collectives (the barrier, the broadcast of what is pruned) run here,
    on the caller's thread, in the same order on every process; only the
    hashing runs on the sealing thread.
    """
    try:
      self._mngr.wait_until_finished()
      if self._in_flight:
        sharding.barrier('lmx_checkpoint_written')
      if _is_primary():
        for step in self._in_flight:
          # ``seal`` is looked up now, so a replaced one (tests) is used.
          self._sealing[step] = self._sealer.submit(seal, self.workdir, step)
      self._in_flight = []
      for step in sorted(self._sealing):
        future = self._sealing[step]
        if not (wait_for_seals or future.done()):
          break  # one sealing thread, oldest first: the rest are not done
        future.result()  # a failed seal raises here, on this thread
        del self._sealing[step]
    except Exception as e:  # pylint: disable=broad-except
      self._failed(e)
      raise
    steps = sorted(self._mngr.all_steps())
    doomed = self._to_prune(steps) if _is_primary() else []
    if len(steps) > self.keep:
      doomed = sharding.broadcast_ints(doomed, len(steps))
    for s in doomed:
      self._mngr.delete(s)
      _forget(step_dir(self.workdir, s))

  def _failed(self, e: BaseException) -> None:
    """Turns a full disk during a save (the write or the seal) into a
    CheckpointError (other errors are left to propagate as they are).

    Waits for the seals still running; the steps not written or not sealed
    are then removed, and the message names the newest of them."""
    failed = list(self._in_flight)
    self._in_flight = []
    for s, future in sorted(self._sealing.items()):
      if future.exception() is not None:  # waits for it
        failed.append(s)
    self._sealing = {}
    if not is_disk_full(e):
      return
    failed.sort()
    step = failed[-1] if failed else None
    if _is_primary():
      for s in failed:  # never sealed: not a checkpoint; frees the space
        shutil.rmtree(step_dir(self.workdir, s), ignore_errors=True)
    self._mngr.reload()
    good = [s for s in sorted(self._mngr.all_steps())
            if verify(self.workdir, s) is None and s not in failed]
    kept = (f'The checkpoint of step {good[-1]} is kept and usable'
            if good else 'No earlier checkpoint was saved')
    raise CheckpointError(
        f'The disk is full (no space left on device) while saving step '
        f'{step} to {checkpoint_dir(self.workdir)}; what was written of '
        f'step {step} is removed. {kept}. Free space (or lower '
        'config.train.keep_checkpoints), then run the same command to '
        'resume.') from None

  def _to_prune(self, steps: list[int]) -> list[int]:
    """The steps older than the newest ``keep`` good ones.

    A step counts as good only if this process sealed or verified it and
    its files are unchanged since (``unchanged_since_good``, which does not
    hash), so neither a save in flight, nor one being sealed, nor a damaged
    newer step can cause the deletion of the last good one.
    """
    if len(steps) <= self.keep:
      return []
    good = []
    for s in reversed(steps):
      if s not in self._sealing and unchanged_since_good(self.workdir, s):
        good.append(s)
        if len(good) == self.keep:
          break
    if len(good) < self.keep:
      return []
    return [s for s in steps if s < good[-1] and s not in self._sealing]

  def close(self) -> None:
    """``finish``, then ends the sealing thread (after the seals it has,
    whatever ``finish`` raised) and orbax's manager."""
    try:
      self.finish()
    finally:
      self._sealer.shutdown(wait=True)
      try:
        self._mngr.close()
      except Exception as e:  # pylint: disable=broad-except
        if not is_disk_full(e):  # a full disk is reported by finish
          raise


# ----------------------------------------------------------------- listing


def all_steps(workdir: str) -> list[int]:
  """The finished checkpoint steps in ``workdir``, oldest first."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    return []
  with ocp.CheckpointManager(checkpoint_dir(workdir)) as mngr:
    return sorted(mngr.all_steps())


def latest_step(workdir: str) -> Optional[int]:
  """The newest finished checkpoint step in ``workdir``, or None."""
  steps = all_steps(workdir)
  return steps[-1] if steps else None


def require_checkpoint(workdir: str, step: Optional[int] = None) -> int:
  """The requested (default: latest) step, or a CheckpointError saying how
  to get one."""
  steps = all_steps(workdir)
  if not steps:
    raise CheckpointError(
        f'No checkpoint in {checkpoint_dir(workdir)}. Train first: '
        f'python train.py --config=<config> --workdir={workdir}')
  if step is None:
    return steps[-1]
  if step not in steps:
    raise CheckpointError(
        f'No checkpoint at step {step} in {checkpoint_dir(workdir)}; '
        f'available steps: {", ".join(map(str, steps))}.')
  return step


def load(workdir: str, step: int, abstract_state: Any) -> Any:
  """The state of one step, for reading: ``load_step``'s state."""
  return load_step(workdir, step, abstract_state)[1]


def load_step(workdir: str, step: int, abstract_state: Any,
              follow_latest: bool = False) -> tuple[int, Any]:
  """(step, state) of one step, for reading (evaluation): verified, never
  moved. An unusable step is a CheckpointError that names the alternatives.

  A training run on the same workdir may prune the step while it is read
  (``keep_checkpoints``): with ``follow_latest`` (the step was the latest,
  not asked for) the newest step is read instead; otherwise the message
  says that it was pruned.
  """
  for _ in range(5):
    restored, problem = try_restore(workdir, step, abstract_state)
    if restored is not None:
      return step, restored[0]
    if os.path.isdir(step_dir(workdir, step)):
      break  # still there: it is the step itself that is unusable
    newer = [s for s in all_steps(workdir) if s > step]
    if not (follow_latest and newer):
      now = ', '.join(map(str, all_steps(workdir)))
      raise CheckpointError(
          f'Checkpoint step {step} in {checkpoint_dir(workdir)} was deleted '
          'while it was read (a training run on this workdir prunes old '
          'checkpoints, config.train.keep_checkpoints). '
          + (f'Steps there now: {now}; evaluate one of them (--step), or '
             'the latest (no --step).' if now else 'No step is left.'))
    print(f'Checkpoint step {step} was pruned by training while it was '
          f'read; reading step {newer[-1]} instead.', file=sys.stderr)
    step = newer[-1]
  older = [s for s in all_steps(workdir) if s < step]
  alt = (f'Evaluate an older one with --step={older[-1]}.' if older else
         'There is no older checkpoint; train again.')
  raise CheckpointError(
      f'Checkpoint step {step} in {checkpoint_dir(workdir)} is unusable: '
      f'{problem}. {alt}')


def abstract(tree: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


# -------------------------------------------------------------------- config


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(config.to_json(indent=2, sort_keys=True))
  os.replace(tmp, path)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config saved by train.py in ``workdir``."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise CheckpointError(
        f'{path} does not exist: --workdir must be a directory written by '
        'train.py (it holds config.json and checkpoints/).')
  saved = fs.read_json(path, fix=(
      'it was written by train.py and should not be edited by hand. Restore '
      'it from a copy, or delete it and run train.py again with the config '
      'of this run (it rewrites the file).'))
  # Fields added since the run was saved take their defaults (lmx.config.defaults),
  # which leave the run as it was (e.g. rope.scaling='none'), and can then
  # be overridden on the command line like any field.
  defaults.complete(saved)
  defaults.as_tuples(saved)
  return ml_collections.ConfigDict(saved)


def require_run(workdir: str) -> ml_collections.ConfigDict:
  """``read_config(workdir)``, with the clearer message for a ``--workdir``
  that does not exist at all (train first)."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise CheckpointError(
        f'--workdir={workdir} is a file, not the folder of a run: give the '
        '--workdir that train.py wrote (it holds config.json and '
        'checkpoints/).')
  if not os.path.isdir(workdir):
    raise CheckpointError(
        f'--workdir={workdir} does not exist. Train first: python train.py '
        f'--config=<config> --workdir={workdir}')
  return read_config(workdir)


def saved_config_from_argv(argv) -> ml_collections.ConfigDict:
  """The saved config of the run that ``--workdir`` in ``argv`` names, so a
  command's ``--config.<field>`` overrides apply to it; empty if there is
  none (the command then reports the problem as one message)."""
  workdir = None
  for i, arg in enumerate(argv):
    if arg.startswith('--workdir='):
      workdir = arg.split('=', 1)[1]
    elif arg == '--workdir' and i + 1 < len(argv):
      workdir = argv[i + 1]
  if workdir:
    try:
      return read_config(workdir)
    except CheckpointError:
      pass
  return ml_collections.ConfigDict()


# ---------------------------------------------------------------------- lock


class WorkdirLock:
  """An exclusive lock on a workdir for one training process.

  ``flock`` is released by the kernel when the process dies, even by
  SIGKILL, so a killed run never leaves a stale lock behind.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    self._fd = None

  def acquire(self) -> 'WorkdirLock':
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        os.close(fd)
        raise
      holder = os.pread(fd, 4096, 0).decode('utf-8', 'replace').strip()
      os.close(fd)
      raise CheckpointError(
          f'Another training run is using {os.path.dirname(self.path)} '
          f'({holder or "holder unknown"}). Two runs on one workdir would '
          'overwrite each other\'s checkpoints: wait for it to finish, stop '
          'it, or use another --workdir.') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, (f'pid {os.getpid()} on {socket.gethostname()}, since '
                   f'{time.strftime("%Y-%m-%d %H:%M:%S")}').encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
