"""What the entry points share (train.py, eval.py, generate.py, sweep.py,
``python -m lmx.evaluation.extensions``, ``python -m lmx.evaluation.report``): one command-line
style (absl), one way to report bad input, and the run flags of the
commands that read a finished run.

* ``parse_flags``: the ``flags_parser`` of every ``app.run``. A bad flag is
  one line on stderr and exit status 2, not a traceback: a ``--config`` file
  that is missing, does not parse, has no ``get_config`` or returns no
  ConfigDict; an override of an unknown field (with "did you mean"), of a
  whole section, of the wrong type, or without a ``--config``; a ConfigError
  raised while the file is read (an unknown key after the colon, say).
* ``define_run_flags``: ``--workdir``, ``--step`` and ``--config`` (the
  run's saved config, read from the ``--workdir`` on the command line, as
  the defaults), listed by the command's own ``--help``.
* ``define_train_flags``, ``define_eval_flags``: the other flags of
  train.py and eval.py, defined once for the commands and for the sweep's
  check of its members' arguments (``sweep_flags``).
"""

import difflib
import errno
import importlib.util
import json
import os
import re
import sys
import time
from typing import Callable, NamedTuple, Optional, Sequence

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags
from ml_collections.config_flags import config_flags as _config_flags_impl

from lmx.training import checkpoint
from lmx import fs
from lmx.errors import CheckpointError, ConfigError

INT32_MAX = 2**31 - 1  # positions and steps are int32 on the device


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
  """absl's flag parsing, with every bad flag, config file or override as
  one message on stderr and exit status 2 (never a traceback), and help
  (which absl ends with status 1) as a success."""
  if not any(a in _HELP for a in argv[1:]):
    try:
      check_config_args(argv)
    except (ConfigError, CheckpointError) as e:
      _fail(e)
  try:
    return flags.FLAGS(argv)
  except SystemExit as e:
    if e.code == 1 and any(a in _HELP for a in argv[1:]):
      sys.exit(0)
    raise
  except Exception as e:  # pylint: disable=broad-except
    # flags.Error for a bad value; ml_collections raises others (KeyError,
    # AttributeError, TypeError) for what the checks above did not foresee.
    root = _config_error(e)
    _fail(root if root is not None else _flag_message(e))


def _fail(msg) -> None:
  print(f'error: {msg}', file=sys.stderr)
  sys.exit(2)


_VALUE_ERROR = re.compile(r'flag --(config\.[\w.]+)=(.*?): (.*)', re.S)


def _flag_message(e: BaseException) -> str:
  """One line for a flag that absl or ml_collections refused."""
  text = ' '.join(str(e).split())
  m = _VALUE_ERROR.match(text)
  if m:
    name, value, why = m.groups()
    return (f'--{name}={value} is not a valid value: {why}. Give a value of '
            f'the type of {name} (see its default with --helpfull, or in '
            'configs/base.py and lmx/config/defaults.py).')
  return text + ' (see --help for the flags this command takes)'


# ----------------------------------------------------- config and overrides


def _arg_value(argv: Sequence[str], name: str) -> tuple[bool, Optional[str]]:
  """(given, value) of ``--name=value`` or ``--name value`` in argv."""
  given, value = False, None
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{name}=') or arg.startswith(f'-{name}='):
      given, value = True, arg.split('=', 1)[1]
    elif arg in (f'--{name}', f'-{name}'):
      given = True
      value = argv[i + 1] if i + 1 < len(argv) else None
  return given, value


_OVERRIDE = re.compile(r'^--?(?:no)?config\.([^=]+)(?:=(.*))?$', re.S)


def parse_override(current, text: str):
  """``text``, the value of a ``--config.<field>=text`` item, as
  ml_collections' config flag parses it for a field that holds ``current``
  (the parser of the field's type, a literal where the type has none);
  ValueError or TypeError where that parser refuses it."""
  parsers = _config_flags_impl._FIELD_TYPE_TO_PARSER  # pylint: disable=protected-access
  return parsers.get(type(current), parsers[object]).parse(text)


def overrides_in(argv: Sequence[str]) -> dict[str, Optional[str]]:
  """``{'model.d_model': '64', ...}`` of the ``--config.<field>`` items."""
  out = {}
  for arg in argv[1:]:
    m = _OVERRIDE.match(arg)
    if m:
      out[m.group(1)] = m.group(2)
  return out


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """``get_config(arg)`` of ``'path.py[:arg]'``, as ml_collections would
  call it, with a ConfigError for a file that is missing, does not parse,
  has no ``get_config``, fails in it, or returns something else."""
  path, colon, arg = spec.partition(':')
  fix = ('e.g. --config=configs/alibi.py:size=tiny (the files in configs/ '
         'define get_config(arg)).')
  if not path:
    raise ConfigError(f'--config={spec!r} names no file: give a config file, '
                      f'{fix}')
  if not os.path.isfile(path):
    what = ('is a folder' if os.path.isdir(path) else 'does not exist'
            f' (from {os.getcwd()})')
    raise ConfigError(f'The config file {path} {what}: give a config file, '
                      f'{fix}')
  try:
    with open(path, 'rb') as f:
      source = f.read()
  except OSError as e:
    raise ConfigError(f'The config file {path} cannot be read '
                      f'({e.strerror}): check its permissions.') from None
  try:
    code = compile(source, path, 'exec')
  except (SyntaxError, ValueError) as e:
    where = f' at line {e.lineno}' if getattr(e, 'lineno', None) else ''
    raise ConfigError(f'The config file {path} does not parse{where}: '
                      f'{getattr(e, "msg", e)}. Fix the file.') from None
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if root not in sys.path:  # config files import configs.base
    sys.path.append(root)
  name = 'lmx_config_' + re.sub(r'\W', '_', os.path.abspath(path))
  module = importlib.util.module_from_spec(
      importlib.util.spec_from_loader(name, loader=None))
  module.__file__ = path
  try:
    exec(code, module.__dict__)  # pylint: disable=exec-used
  except ConfigError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f'The config file {path} fails when it is loaded '
                      f'({type(e).__name__}: {e}). Fix the file.') from None
  get_config = getattr(module, 'get_config', None)
  if not callable(get_config):
    raise ConfigError(f'The config file {path} has no get_config(arg) '
                      f'function: define one that returns an '
                      f'ml_collections.ConfigDict, {fix}')
  try:
    config = get_config(arg) if colon else get_config()
  except ConfigError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f'get_config({arg!r}) of {path} fails '
                      f'({type(e).__name__}: {" ".join(str(e).split())}). '
                      'Fix the file or the argument after the colon.'
                      ) from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f'get_config() of {path} returned a '
                      f'{type(config).__name__}, not an ml_collections.'
                      'ConfigDict: return the config (start from configs/'
                      'base.py\'s get_config).')
  check_no_aliases(config, path)
  return config


def _references(node, prefix: str = 'config'):
  """(path, FieldReference) of every field of ``node`` held by reference."""
  # pylint: disable=protected-access
  for key, value in node._fields.items():
    path = f'{prefix}.{key}'
    if isinstance(value, ml_collections.ConfigDict):
      yield from _references(value, path)
    elif isinstance(value, ml_collections.FieldReference):
      yield path, value


def check_no_aliases(config: ml_collections.ConfigDict, path: str) -> None:
  """A field set to another's ``get_ref`` is the same reference as that
  field: an override of either sets both (with configs/learned.py's
  ``learned.max_len = train.get_ref('seq_len')``, ``--config.model.learned.
  max_len=64`` also moved train.seq_len to 64). A field that follows
  another must follow it one way, ``get_ref(...).identity()`` (or any
  expression of it): then an override of the follower changes it alone."""
  seen = {}
  for name, ref in _references(config):
    if id(ref) in seen:
      raise ConfigError(
          f'The config file {path} makes {name} the same field as '
          f'{seen[id(ref)]} (one get_ref in both): an override of either '
          'would silently set the other. Write '
          f"`{name.split('.', 1)[1]} = <section>.get_ref(...).identity()` "
          'so that it follows the other field one way.')
    seen[id(ref)] = name


def check_overrides(config: ml_collections.ConfigDict,
                    overrides: dict, what: str) -> None:
  """Every ``--config.<field>`` names a field of ``config`` (not a whole
  section); else a ConfigError with ml_collections' "did you mean"."""
  for path, value in overrides.items():
    node, parts = config, path.split('.')
    for i, part in enumerate(parts):
      here = 'config' + ''.join(f'.{p}' for p in parts[:i])
      if not isinstance(node, ml_collections.ConfigDict):
        raise ConfigError(f'--config.{path}: {here} is a value, not a '
                          'section, so it has no fields.')
      if part not in node:
        close = difflib.get_close_matches(part, list(node.keys()), 1, 0.6)
        hint = (f' Did you mean "{".".join(parts[:i] + [close[0]])}"?'
                if close else
                f' Its fields: {", ".join(sorted(node.keys()))}.')
        raise ConfigError(f'--config.{path}: {here} has no field {part!r} '
                          f'in {what}.{hint}')
      node = node[part]
    if isinstance(node, ml_collections.ConfigDict) and value is not None:
      fields = ', '.join(sorted(node.keys()))
      raise ConfigError(f'--config.{path}={value} sets a whole section; set '
                        f'its fields one by one instead '
                        f'(--config.{path}.<field>=...; fields: {fields}).')


def check_config_args(argv: Sequence[str]) -> None:
  """The --config flag and its overrides, checked before absl parses them.

  With a config-file flag (train.py): the file is loaded here
  (``load_config_file``) and overrides without a --config are refused. With
  a config-dict flag (eval.py, generate.py: the run's saved config), an
  override needs a --workdir that holds a run.
  """
  overrides = overrides_in(argv)
  if 'config' not in flags.FLAGS:
    return
  file_flag = isinstance(flags.FLAGS['config'].parser,
                         _config_flags_impl.ConfigFileFlagParser)
  if file_flag:
    given, spec = _arg_value(argv, 'config')
    if not given:
      if overrides:
        first = next(iter(overrides))
        raise ConfigError(f'--config.{first} overrides a field of the '
                          'config, but no --config file is given: add one '
                          'before the overrides, e.g. '
                          f'--config=configs/alibi.py --config.{first}=...')
      return
    config = load_config_file(spec or '')
    check_overrides(config, overrides, spec)
    return
  _check_run_overrides(argv)


def _check_run_overrides(argv: Sequence[str]) -> None:
  """The overrides of a run's saved config (eval.py, generate.py)."""
  overrides = overrides_in(argv)
  if not overrides:
    return
  _, workdir = _arg_value(argv, 'workdir')
  if not workdir:
    raise ConfigError('--config.<field> overrides change the saved config of '
                      'a run: give the run with --workdir=<dir of train.py>.')
  saved = checkpoint.require_run(workdir)  # CheckpointError if there is none
  check_overrides(saved, overrides, f'the config saved in {workdir}')


def int_list(values: Optional[Sequence[str]], flag: str,
             lo: Optional[int] = 1) -> Optional[list]:
  """``--flag=a,b,c`` (absl's list flag) as integers of at least ``lo``
  (lengths: 1, a window holds a token), at most int32's largest (positions
  are int32 on the device); ConfigError otherwise."""
  if not values:
    return None
  try:
    out = [int(x) for x in values]
  except ValueError:
    raise ConfigError(
        f'{flag} must be integers, got {",".join(values)}.') from None
  for x in out:
    if (lo is not None and x < lo) or x > INT32_MAX:
      raise ConfigError(f'{flag} must be integers in [{lo}, {INT32_MAX}], '
                        f'got {x}.')
  return out


def output_dir(path: str, what: str) -> str:
  """The output-path check of every command, before any work: ``path`` is
  or can become a writable folder (``lmx.fs.check_writable_dir``); a
  ConfigError naming ``what`` (``--out``) otherwise. Creates nothing."""
  return fs.check_writable_dir(path, what, ConfigError)


def os_error(e: OSError) -> str:
  """One line for a file-system error no check foresaw."""
  where = f' ({e.filename})' if getattr(e, 'filename', None) else ''
  hint = {errno.ENOSPC: 'free space on that disk, then run the same command',
          errno.EDQUOT: 'free space on that disk, then run the same command',
          errno.EROFS: 'that file system is read-only: use another path',
          errno.EACCES: 'fix its permissions or use another path',
          errno.EPERM: 'fix its permissions or use another path',
          }.get(e.errno, 'check that path')
  return f'{e.strerror or e}{where}: {hint}.'


class RunFlags(NamedTuple):
  workdir: flags.FlagHolder
  step: flags.FlagHolder
  config: flags.FlagHolder


def _define_workdir_and_step(flag_values: flags.FlagValues) -> tuple:
  return (flags.DEFINE_string('workdir', None, 'Run directory from train.py.',
                              flag_values=flag_values),
          flags.DEFINE_integer('step', None,
                               'Checkpoint step; default: the latest.',
                               flag_values=flag_values))


def define_run_flags() -> RunFlags:
  """Defines --workdir, --step and --config. The calling module lists them
  in its --help with ``flags.adopt_module_key_flags(cli)``.

  ml_collections applies the ``--config.<field>`` overrides of ``sys.argv``
  to a config-dict flag as it is defined, so they are checked here first."""
  if not any(a in _HELP for a in sys.argv[1:]):
    try:
      _check_run_overrides(sys.argv)
    except (ConfigError, CheckpointError) as e:
      _fail(e)
  workdir, step = _define_workdir_and_step(flags.FLAGS)
  return RunFlags(
      workdir, step,
      config_flags.DEFINE_config_dict(
          'config', checkpoint.saved_config_from_argv(sys.argv),
          'The run\'s saved config; override a field with '
          '--config.<field>=<value>.'))


class TrainFlags(NamedTuple):
  workdir: flags.FlagHolder
  progress: flags.FlagHolder
  coordinator: flags.FlagHolder
  num_processes: flags.FlagHolder
  process_id: flags.FlagHolder


def define_train_flags(flag_values: flags.FlagValues = flags.FLAGS
                       ) -> TrainFlags:
  """train.py's flags besides ``--config`` (a config file, its own): the
  command defines them here, and ``lmx.sweeps`` checks a sweep's
  ``--train_args`` against the same definitions."""
  fv = flag_values
  return TrainFlags(
      flags.DEFINE_string(
          'workdir', None, 'Run directory. Default: runs/<config.name>.',
          flag_values=fv),
      flags.DEFINE_bool('progress', True, 'Show a progress bar.',
                        flag_values=fv),
      flags.DEFINE_string(
          'coordinator', None, 'Multi-host: host:port of process 0 '
          '(default: $LMX_COORDINATOR).', flag_values=fv),
      flags.DEFINE_integer(
          'num_processes', None, 'Multi-host: number of processes (default: '
          '$LMX_NUM_PROCESSES, else 1).', flag_values=fv),
      flags.DEFINE_integer(
          'process_id', None, 'Multi-host: this process, '
          '0..num_processes-1 (default: $LMX_PROCESS_ID).', flag_values=fv))


class _LengthsParser(flags.ListParser):
  """absl's comma-separated list, refused unless ``int_list`` takes it."""

  def parse(self, argument):
    values = super().parse(argument)
    try:
      int_list(values, '--lengths')
    except ConfigError as e:
      raise ValueError(str(e)) from None
    return values


class EvalFlags(NamedTuple):
  lengths: flags.FlagHolder
  out: flags.FlagHolder


def define_eval_flags(flag_values: flags.FlagValues = flags.FLAGS
                      ) -> EvalFlags:
  """eval.py's own flags (``--lengths``, ``--out``; with
  ``define_run_flags``'s): the command defines them here, and
  ``lmx.sweeps`` checks a sweep's ``--eval_args`` against the same
  definitions (``sweep_flags``)."""
  return EvalFlags(
      flags.DEFINE(_LengthsParser(), 'lengths', None,
                   'Evaluation lengths; default: config.eval.multipliers x '
                   'the training length.', flag_values=flag_values,
                   serializer=flags.CsvListSerializer(',')),
      flags.DEFINE_string('out', None, 'Output directory; default '
                          '<workdir>/eval, or with --config overrides '
                          '<workdir>/eval_<field>=<value>,...',
                          flag_values=flag_values))


def sweep_flags(command: str) -> flags.FlagValues:
  """A fresh set of the flags of ``command`` (``'train.py'`` or
  ``'eval.py'``) besides ``--config``, defined by the functions the command
  itself calls: what ``lmx.sweeps`` parses a member's arguments with."""
  fv = flags.FlagValues()
  if command == 'train.py':
    define_train_flags(fv)
  elif command == 'eval.py':
    _define_workdir_and_step(fv)
    define_eval_flags(fv)
  else:
    raise ValueError(f'no flags of {command!r}')
  return fv


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


def write_results(path: str, data, indent: int = 1) -> None:
  """A benchmark's ``--out``: ``data`` as JSON at ``path``, its folder made
  first."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(data, f, indent=indent)


def timed(main: Callable, fl: dict) -> Callable:
  """``argv -> None`` for ``app.run``: ``main(argv, fl)``, then its wall time
  on a line of its own (the benchmarks' scripts)."""
  def run(argv):
    t0 = time.time()
    main(argv, fl)
    print(f'\n({time.time() - t0:.0f} s)')
  return run
