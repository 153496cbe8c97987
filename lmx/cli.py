"""What the entry points share (train.py, eval.py, generate.py, sweep.py,
``python -m lmx.extensions``, ``python -m lmx.report``): one command-line
style (absl), one way to report bad input, and the run flags of the
commands that read a finished run.

* ``parse_flags``: the ``flags_parser`` of every ``app.run``. A ConfigError
  raised while a ``--config`` file is read (an unknown key after the colon,
  say) is one line on stderr and exit status 2, not a traceback.
* ``define_run_flags``: ``--workdir``, ``--step`` and ``--config`` (the
  run's saved config, read from the ``--workdir`` on the command line, as
  the defaults), listed by the command's own ``--help``.
"""

import sys
from typing import NamedTuple, Optional, Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from lmx import checkpoint
from lmx.errors import ConfigError


def _config_error(e: BaseException) -> Optional[ConfigError]:
  """The ConfigError at the root of a flag-parsing error, if any: the first
  one raised (config_flags re-raises it with a traceback in its text)."""
  found, seen = None, set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, ConfigError):
      found = e
    e = e.__cause__ or e.__context__
  return found


_HELP = ('--help', '-h', '-?', '--helpshort', '--helpfull', '--helpxml')


def parse_flags(argv: Sequence[str]):
  """absl's flag parsing, with a bad config argument as one message, and
  help (which absl ends with status 1) as a success."""
  try:
    return flags.FLAGS(argv)
  except SystemExit as e:
    if e.code == 1 and any(a in _HELP for a in argv[1:]):
      sys.exit(0)
    raise
  except flags.Error as e:
    root = _config_error(e)
    if root is None:
      return app.parse_flags_with_usage(argv)  # absl's message, exit 1
    print(f'error: {root}', file=sys.stderr)
    sys.exit(2)


def int_list(values: Optional[Sequence[str]], flag: str) -> Optional[list]:
  """``--flag=a,b,c`` (absl's list flag) as integers; ConfigError otherwise."""
  if not values:
    return None
  try:
    return [int(x) for x in values]
  except ValueError:
    raise ConfigError(
        f'{flag} must be integers, got {",".join(values)}.') from None


class RunFlags(NamedTuple):
  workdir: flags.FlagHolder
  step: flags.FlagHolder
  config: flags.FlagHolder


def define_run_flags() -> RunFlags:
  """Defines --workdir, --step and --config. The calling module lists them
  in its --help with ``flags.adopt_module_key_flags(cli)``."""
  return RunFlags(
      flags.DEFINE_string('workdir', None, 'Run directory from train.py.'),
      flags.DEFINE_integer('step', None,
                           'Checkpoint step; default: the latest.'),
      config_flags.DEFINE_config_dict(
          'config', checkpoint.saved_config_from_argv(sys.argv),
          'The run\'s saved config; override a field with '
          '--config.<field>=<value>.'))


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
