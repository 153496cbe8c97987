"""Running the repo's command-line scripts from tests: in a subprocess
(``run``), or in this process (``run_here``) where only a refusal's message
and exit status are checked."""

import contextlib
import io
import os
import runpy
import signal
import subprocess
import sys
import traceback
import warnings

from absl import app, flags
from absl import logging as absl_logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, check=True):
  """``python *args`` in the repo root on the CPU; with ``check``, a nonzero
  exit is an AssertionError that shows the script's output."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f'{args} failed ({proc.returncode}):\n'
                         f'{proc.stdout}\n{proc.stderr}')
  return proc


@contextlib.contextmanager
def _own_flags():
  """absl's global flags as they were before: each script defines its flags
  as it runs (train.py and eval.py both define --config), so they are taken
  away again afterwards, and the values parsed are reset."""
  app.define_help_flags()   # once per process, as app.run would
  state = flags.FLAGS.__dict__
  saved = {k: (dict(v) if isinstance(v, dict) else
               set(v) if isinstance(v, set) else v) for k, v in state.items()}
  saved['__flags_by_module'] = {k: list(v) for k, v in
                                state['__flags_by_module'].items()}
  saved['__flags_by_module_id'] = {k: list(v) for k, v in
                                   state['__flags_by_module_id'].items()}
  saved['__key_flags_by_module'] = {k: list(v) for k, v in
                                    state['__key_flags_by_module'].items()}
  try:
    yield
  finally:
    flags.FLAGS.unparse_flags()
    state.update(saved)


def run_here(*args):
  """``run(*args, check=False)`` without a new process: the script (or the
  module of ``-m``) runs as ``__main__`` in the repo root, with its output
  captured, and its exit status is what it passes to ``sys.exit``; an
  exception that escapes it is a traceback on stderr and status 1, as
  Python's own. For refusals that end before any work; each entry point's
  real exit status is checked in a subprocess too (test_entrypoints.py)."""
  if args[0] == '-m':
    module, argv = args[1], list(args[2:])
    execute = lambda: runpy.run_module(module, run_name='__main__',
                                       alter_sys=True)
  else:
    path, argv = os.path.join(ROOT, args[0]), list(args[1:])
    execute = lambda: runpy.run_path(path, run_name='__main__')
  out, err = io.StringIO(), io.StringIO()
  handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  verbosity, old_argv = absl_logging.get_verbosity(), sys.argv
  sys.argv = [args[0] if args[0] != '-m' else args[1], *argv]
  code = 0
  try:
    with (_own_flags(), contextlib.chdir(ROOT), warnings.catch_warnings(),
          contextlib.redirect_stdout(out), contextlib.redirect_stderr(err)):
      # runpy's note that a -m module was imported already (by a test).
      warnings.simplefilter('ignore', RuntimeWarning)
      try:
        execute()
      except SystemExit as e:
        if isinstance(e.code, str):
          print(e.code, file=sys.stderr)
          code = 1
        else:
          code = e.code or 0
      except Exception:  # pylint: disable=broad-except
        traceback.print_exc()
        code = 1
  finally:
    sys.argv = old_argv
    absl_logging.set_verbosity(verbosity)
    for s, h in handlers.items():
      signal.signal(s, h)
  return subprocess.CompletedProcess(args, code, out.getvalue(),
                                     err.getvalue())
