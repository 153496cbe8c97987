"""What eval.py and generate.py share: both read a finished run, named by
``--workdir``, at ``--step`` (default: the latest), with ``--config.<field>``
overriding the config saved in it."""

import sys
from typing import NamedTuple

from absl import app, flags, logging
from ml_collections import config_flags

from lmx import checkpoint


class RunFlags(NamedTuple):
  workdir: flags.FlagHolder
  step: flags.FlagHolder
  config: flags.FlagHolder


def define_run_flags() -> RunFlags:
  """Defines --workdir, --step and --config (the run's saved config, read
  from the --workdir on the command line, as the defaults)."""
  return RunFlags(
      flags.DEFINE_string('workdir', None, 'Run directory from train.py.'),
      flags.DEFINE_integer('step', None,
                           'Checkpoint step; default: the latest.'),
      config_flags.DEFINE_config_dict(
          'config', checkpoint.saved_config_from_argv(sys.argv)))


def run_workdir(argv, run_flags: RunFlags) -> str:
  """The --workdir, after the usage checks: no stray arguments, a workdir
  given. Also quiets absl logging to warnings."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  workdir = run_flags.workdir.value
  if not workdir:
    raise app.UsageError('--workdir is required.')
  return workdir
