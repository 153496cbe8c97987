"""Running the repo's command-line scripts from tests."""

import os
import subprocess
import sys

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
