"""Sweeps: one base config, many members; train and evaluate each, then report.

A sweep is declared in ``configs/sweeps/<name>.py`` by ``get_sweep(arg)``,
which returns a small dict::

    def get_sweep(arg=None):
      size = f':{arg}' if arg else ''
      return {
          'config': f'configs/base.py{size}',   # base config of every member
          'members': [{'model.position': 'alibi'},
                      {'config': f'configs/rope_randomized.py{size}'}],
          'product': {'seed': [0, 1, 2]},       # crossed with every member
      }

- ``config``: the base config, as passed to ``train.py --config=...``.
- ``product``: axes, field -> list of values; every combination is a member.
- ``members``: an explicit list of override dicts (field -> value).
  With both, every member is crossed with every point of the product.
  Three keys are not fields: ``'config'`` replaces the base config for that
  member, ``'name'`` gives it an explicit run name, and ``'after'`` lists
  commands run after its eval.py (see ``After``), e.g. ``python -m
  lmx.extensions`` on the member's checkpoint.
- ``report`` (optional): a module (``'configs.sweeps.replicate'``) whose
  ``write(workdirs, out_dir, title)`` writes the sweep's report instead of
  ``lmx.report.write``.

A member's name joins its override values that vary across the sweep, in
declaration order (``alibi-s0``, ``rope-randomized-s1``); its workdir is
``<sweep dir>/<name>``. ``python sweep.py`` runs ``train.py`` and
``eval.py`` for each (see sweep.py).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import importlib.util
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any

from lmx import checkpoint
from lmx import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECIAL_KEYS = ('config', 'name', 'after')
SHORT = {'seed': 's'}          # field leaf -> prefix used in run names
MANIFEST = 'sweep.json'


class SweepError(ValueError):
  """A bad sweep declaration; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class After:
  """A command run after a member's eval.py: ``python *args`` from the
  repo root, ``{workdir}`` in an argument replaced by the member's workdir,
  logged to ``<workdir>/<name>.log``. It is done once ``done`` (a path
  relative to the workdir) is newer than the latest checkpoint."""
  name: str
  args: tuple[str, ...]
  done: str

  def command(self, workdir: str) -> list[str]:
    return [sys.executable,
            *(a.replace('{workdir}', workdir) for a in self.args)]


def _after(value: Any, where: str) -> tuple[After, ...]:
  if not isinstance(value, (list, tuple)):
    raise SweepError(f"{where}: 'after' must be a list of {{'name', 'args', "
                     f"'done'}} dicts, got {value!r}.")
  out = []
  for a in value:
    if (not isinstance(a, dict) or set(a) != {'name', 'args', 'done'}
        or not isinstance(a['args'], (list, tuple))
        or not all(isinstance(x, str) for x in a['args'])
        or not re.fullmatch(r'[A-Za-z0-9_.-]+', str(a['name']))):
      raise SweepError(f"{where}: each 'after' entry needs exactly 'name' "
                       "(letters, digits, ._-), 'args' (strings) and 'done' "
                       f'(a file the command writes), got {a!r}.')
    out.append(After(a['name'], tuple(a['args']), str(a['done'])))
  return tuple(out)


@dataclasses.dataclass(frozen=True)
class Member:
  name: str
  config: str                      # config file[:arg], as given to train.py
  overrides: dict[str, Any]        # field path -> value
  workdir: str
  after: tuple[After, ...] = ()    # commands run after eval.py

  def train_command(self, extra: Sequence[str] = ()) -> list[str]:
    return [sys.executable, os.path.join(ROOT, 'train.py'),
            f'--config={resolve_config_path(self.config)}',
            *config_args(self.overrides), *extra,
            f'--workdir={self.workdir}', '--progress=false']

  def eval_command(self, extra: Sequence[str] = ()) -> list[str]:
    # The sweep's evaluation is its members' plain one (eval/, which the
    # report reads), even with --config overrides in --eval_args.
    out = ([] if any(a.startswith('--out') for a in extra)
           else [f'--out={os.path.join(self.workdir, "eval")}'])
    return [sys.executable, os.path.join(ROOT, 'eval.py'),
            f'--workdir={self.workdir}', *extra, *out]


# ------------------------------------------------------------ declarations


def product(axes: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
  """Every combination of the axes' values, first axis slowest."""
  for key, values in axes.items():
    if isinstance(values, (str, bytes)) or not isinstance(
        values, (list, tuple, range)):
      raise SweepError(f'product axis {key!r} must be a list of values, got '
                       f'{values!r}.')
  keys = list(axes)
  return [dict(zip(keys, combo))
          for combo in itertools.product(*(axes[k] for k in keys))]


def split_arg(spec: str) -> tuple[str, str | None]:
  """``'configs/x.py:size=tiny'`` -> ``('configs/x.py', 'size=tiny')``."""
  path, sep, arg = spec.partition(':')
  return path, (arg if sep else None)


def _resolve(path: str) -> str:
  """A path as given if it exists from here, else relative to the repo."""
  if os.path.isabs(path) or os.path.exists(path):
    return os.path.abspath(path)
  return os.path.join(ROOT, path)


def resolve_config_path(spec: str) -> str:
  path, arg = split_arg(spec)
  return _resolve(path) + (f':{arg}' if arg is not None else '')


def _load_module(path: str, what: str):
  if not os.path.isfile(path):
    raise SweepError(f'{what} file {path} does not exist.')
  if ROOT not in sys.path:  # config files import configs.base
    sys.path.insert(0, ROOT)
  name = 'lmx_sweep_' + re.sub(r'\W', '_', os.path.abspath(path))
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise SweepError(f'{what} file {path} does not parse at line {e.lineno}: '
                     f'{e.msg}. Fix the file.') from None
  except Exception as e:  # pylint: disable=broad-except
    raise SweepError(f'{what} file {path} fails when it is loaded '
                     f'({type(e).__name__}: {e}). Fix the file.') from None
  return module


def _call(fn: Callable, arg: str | None):
  return fn(arg) if arg is not None else fn()


def load_declaration(spec: str) -> dict:
  """Runs ``get_sweep(arg)`` of ``'configs/sweeps/x.py[:arg]'``."""
  path, arg = split_arg(spec)
  module = _load_module(_resolve(path), 'Sweep')
  if not hasattr(module, 'get_sweep'):
    raise SweepError(f'{path} has no get_sweep(arg) function.')
  try:
    decl = _call(module.get_sweep, arg)
  except Exception as e:  # pylint: disable=broad-except
    raise SweepError(f'get_sweep({arg!r}) of {path} fails '
                     f'({type(e).__name__}: {e}). Fix the file or the '
                     'argument after the colon.') from None
  if not isinstance(decl, dict):
    raise SweepError(f'{path}: get_sweep() must return a dict with keys '
                     f"'config', 'members' and/or 'product'; got {decl!r}.")
  return decl


_CONFIGS: dict[str, Any] = {}


def load_config(spec: str):
  """The config of ``'configs/x.py[:arg]'``, loaded as train.py would."""
  if spec not in _CONFIGS:
    from lmx import cli  # pylint: disable=g-import-not-at-top
    if ROOT not in sys.path:  # config files import configs.base
      sys.path.insert(0, ROOT)
    try:
      _CONFIGS[spec] = cli.load_config_file(resolve_config_path(spec))
    except ValueError as e:  # ConfigError: missing, unparsable, wrong type
      raise SweepError(f'config {spec}: {e}') from None
  return _CONFIGS[spec]


# -------------------------------------------------------------- expansion


def _name_part(key: str, value: Any) -> str:
  if key == 'config':
    part = os.path.splitext(os.path.basename(split_arg(value)[0]))[0]
    return part.replace('_', '-')
  leaf = key.rsplit('.', 1)[-1]
  if isinstance(value, bool):
    return (leaf if value else f'no-{leaf}').replace('_', '-')
  if isinstance(value, str):
    return value.replace('_', '-')
  if isinstance(value, (list, tuple)):
    value = '-'.join(str(v) for v in value)
  elif isinstance(value, float):
    value = f'{value:g}'
  return f'{SHORT.get(leaf, leaf)}{value}'.replace('_', '-')


def member_name(overrides: dict, varying: set[str]) -> str:
  named = [k for k in overrides if k not in ('name', 'after')]
  keys = [k for k in named if k in varying]
  if not keys:  # nothing varies (one member, or duplicates): name them all
    keys = named
  name = '-'.join(_name_part(k, overrides[k]) for k in keys) or 'run'
  return re.sub(r'[^A-Za-z0-9._=+-]', '-', name)


def expand(decl: dict, sweep_dir: str) -> list[Member]:
  """The members of a declaration, with names and workdirs; checks names."""
  unknown = set(decl) - {'config', 'members', 'product', 'report'}
  if unknown:
    raise SweepError(f'Unknown sweep keys {sorted(unknown)}: a declaration '
                     "has 'config', 'members' and/or 'product' (and "
                     "optionally 'report').")
  if not decl.get('config'):
    raise SweepError("The sweep declares no base 'config' (e.g. "
                     "'configs/base.py:size=tiny').")
  explicit = decl.get('members')
  if explicit is not None and not isinstance(explicit, (list, tuple)):
    raise SweepError(f"'members' must be a list of override dicts, got "
                     f'{explicit!r}.')
  points = product(decl['product']) if decl.get('product') else None
  if explicit is None and points is None:
    raise SweepError("The sweep has no members: give 'members' (a list of "
                     "override dicts) and/or 'product' (field -> values).")
  rows = []
  for m in (explicit if explicit is not None else [{}]):
    if not isinstance(m, dict):
      raise SweepError(f'A sweep member must be a dict of overrides, got '
                       f'{m!r}.')
    for p in (points if points is not None else [{}]):
      rows.append({**m, **p})
  if not rows:
    raise SweepError('The sweep is empty: its members list or one of its '
                     'product axes has no values.')

  keys = {k for r in rows for k in r}
  missing = object()
  varying = {k for k in keys
             if len({repr(r.get(k, missing)) for r in rows}) > 1}
  members = []
  for r in rows:
    name = r.get('name') or member_name(r, varying)
    overrides = {k: v for k, v in r.items() if k not in SPECIAL_KEYS}
    members.append(Member(name=name, config=r.get('config', decl['config']),
                          overrides=overrides,
                          workdir=os.path.join(os.path.abspath(sweep_dir),
                                               name),
                          after=_after(r.get('after', ()), name)))
  by_name: dict[str, list[Member]] = {}
  for m in members:
    by_name.setdefault(m.name, []).append(m)
  clashes = {n: ms for n, ms in by_name.items() if len(ms) > 1}
  if clashes:
    lines = [f'  {n}: ' + '; '.join(_describe(m) for m in ms)
             for n, ms in clashes.items()]
    raise SweepError(
        'Members collide on one workdir (same run name):\n' + '\n'.join(lines)
        + "\nGive them distinct overrides or an explicit 'name'.")
  return members


def _describe(m: Member) -> str:
  o = ', '.join(f'{k}={v!r}' for k, v in m.overrides.items())
  return f'{m.config} {{{o}}}'


# ------------------------------------------------------------ field check


def parse_config_args(args: Sequence[str]) -> dict[str, str]:
  """``--config.a.b=v`` items of an argument list -> ``{'a.b': 'v'}``."""
  out = {}
  for a in args:
    if a.startswith('--config.') and '=' in a:
      key, _, value = a[len('--config.'):].partition('=')
      out[key] = value
  return out


def _parse_like(current: Any, text: str) -> Any:
  """``text`` (a command-line value) as the type of ``current``, as
  ml_collections' --config.<field> parser reads it; ValueError if not."""
  if isinstance(current, bool):
    low = text.lower()
    if low in ('true', 't', '1', 'yes', 'y'):
      return True
    if low in ('false', 'f', '0', 'no', 'n'):
      return False
    raise ValueError(f'{text!r} is not true or false')
  if isinstance(current, int):
    return int(text)
  if isinstance(current, float):
    return float(text)
  if isinstance(current, (tuple, list)):
    import ast  # pylint: disable=g-import-not-at-top
    value = ast.literal_eval(text if text.strip().startswith(('(', '['))
                             else f'({text},)')
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)
  return text


def check_fields(members: Sequence[Member],
                 extra_fields: Sequence[str] | dict = (),
                 where: str = '--train_args') -> None:
  """Every override names an existing field of its member's config and
  holds a value of that field's type; so does every ``--config.<field>``
  of ``extra_fields`` (``{field: command-line value}``, or field names)."""
  extra = (dict(extra_fields) if isinstance(extra_fields, dict)
           else dict.fromkeys(extra_fields))
  problems = []
  for m in members:
    config = load_config(m.config)
    for key in [*m.overrides, *extra]:
      node, parts = config, key.split('.')
      for i, part in enumerate(parts):
        if not hasattr(node, 'keys') or part not in node:
          where = '.'.join(parts[:i]) or 'the config'
          problems.append(
              f'{m.name}: config.{key} does not exist in {m.config} '
              f'(no {part!r} in {where}).')
          break
        node = node[part]
      else:
        if key in m.overrides:
          trial = copy.deepcopy(config)
          try:
            trial.update_from_flattened_dict({key: m.overrides[key]})
          except (TypeError, ValueError, KeyError) as e:
            problems.append(f'{m.name}: config.{key}={m.overrides[key]!r}: '
                            f'{e}')
        elif extra.get(key) is not None:
          try:
            _parse_like(node, extra[key])
          except (ValueError, SyntaxError) as e:
            problems.append(f'{m.name}: {where} --config.{key}={extra[key]}'
                            f' is not a {type(node).__name__} ({e}).')
  if problems:
    seen = list(dict.fromkeys(problems))
    raise SweepError('Unknown or mistyped override fields:\n  '
                     + '\n  '.join(seen))


def format_value(value: Any) -> str:
  """A value as ml_collections' --config.<field>= parser reads it."""
  if isinstance(value, bool):
    return 'true' if value else 'false'
  if isinstance(value, list):
    value = tuple(value)
  if isinstance(value, str):
    return value
  return repr(value)


def config_args(overrides: dict[str, Any]) -> list[str]:
  return [f'--config.{k}={format_value(v)}' for k, v in overrides.items()]


# The flags of train.py and eval.py a sweep passes on (--train_args,
# --eval_args), with their kinds; the sweep sets --config and --workdir
# itself. tests/test_bad_input.py checks these against the commands.
TRAIN_FLAGS = {'progress': 'bool', 'coordinator': 'str',
               'num_processes': 'int', 'process_id': 'int'}
EVAL_FLAGS = {'lengths': 'ints', 'step': 'int', 'out': 'str'}
SET_BY_SWEEP = {'train.py': ('config', 'workdir'), 'eval.py': ('workdir',)}


def check_args(args: Sequence[str], command: str, known: dict[str, str],
               option: str) -> None:
  """Every item of ``--train_args`` / ``--eval_args`` is a flag the command
  takes, with a value of its kind; ``--config.<field>`` items are checked
  against each member's config by ``check_fields``."""
  problems = []
  for a in args:
    name, eq, value = a.lstrip('-').partition('=')
    if not a.startswith('-'):
      problems.append(f'{a!r} is not a flag (--name=value).')
      continue
    if name.startswith('config.'):
      continue
    if name in SET_BY_SWEEP[command]:
      problems.append(f'--{name} is set by the sweep for each member; '
                      'drop it.')
      continue
    kind = known.get(name)
    if kind is None and name.startswith('no') and known.get(name[2:]) == 'bool':
      kind, eq = 'bool', ''
    if kind is None:
      problems.append(f'{command} has no flag --{name}; its flags: '
                      + ', '.join(f'--{k}' for k in known) + ', and '
                      '--config.<field>.')
      continue
    try:
      if kind == 'int':
        int(value)
      elif kind == 'ints':
        [int(x) for x in value.split(',')]  # pylint: disable=expression-not-assigned
      elif kind == 'bool' and eq:
        _parse_like(True, value)
    except ValueError:
      wants = {'ints': 'integers', 'int': 'an integer'}.get(kind,
                                                            'true or false')
      problems.append(f'--{name}={value}: {command} wants {wants}.')
  if problems:
    raise SweepError(f'{option} that {command} would refuse (checked before '
                     'any member runs):\n  ' + '\n  '.join(problems))


def prepare(spec: str, sweep_dir: str, train_args: Sequence[str] = (),
            eval_args: Sequence[str] = ()) -> list[Member]:
  """Loads, expands and checks a sweep: every input error before any run,
  the --train_args and --eval_args of every member included."""
  members = expand(load_declaration(spec), sweep_dir)
  check_args(train_args, 'train.py', TRAIN_FLAGS, '--train_args')
  check_args(eval_args, 'eval.py', EVAL_FLAGS, '--eval_args')
  check_fields(members, parse_config_args(train_args))
  check_fields(members, parse_config_args(eval_args), '--eval_args')
  check_values(members, parse_config_args(train_args))
  return members


def report_module(spec: str) -> str | None:
  """The declaration's ``report`` module, checked to import and to have
  ``write``; None for the standard report."""
  name = load_declaration(spec).get('report')
  if name is None:
    return None
  check_report_module(name)
  return name


def check_report_module(name: Any) -> None:
  try:
    module = importlib.import_module(name) if isinstance(name, str) else None
  except ImportError as e:
    raise SweepError(f'report module {name!r} does not import: {e}') from e
  if not callable(getattr(module, 'write', None)):
    raise SweepError(f"'report' must name a module with write(workdirs, "
                     f'out_dir, title), got {name!r}.')


def write_report(workdirs: Sequence[str], out_dir: str, title: str,
                 module: str | None = None, **kwargs) -> list[str]:
  """``module.write`` (a declaration's report) or ``lmx.report.write``."""
  if module:
    return importlib.import_module(module).write(workdirs, out_dir, title,
                                                 **kwargs)
  return report.write(workdirs, out_dir, title, **kwargs)


def member_config(member: Member, train_overrides: dict[str, str]):
  """The config ``train.py`` will run for ``member``: its config file,
  its overrides, then the --train_args ``--config.<field>`` items."""
  config = copy.deepcopy(load_config(member.config))
  config.update_from_flattened_dict(dict(member.overrides))
  for key, text in train_overrides.items():
    node = config
    for part in key.split('.')[:-1]:
      node = node[part]
    leaf = key.split('.')[-1]
    node[leaf] = _parse_like(node[leaf], text)
  return config


def check_values(members: Sequence[Member],
                 train_overrides: dict[str, str]) -> None:
  """Every member's config passes ``lmx.config.validate`` (ranges, choices,
  cross-field rules), as train.py would check it, before any member runs.
  (What needs the data or the workdir is found by train.py itself.)"""
  from lmx import config as config_lib  # pylint: disable=g-import-not-at-top
  problems = []
  for m in members:
    try:
      config_lib.validate(member_config(m, train_overrides))
    except (ValueError, TypeError, KeyError) as e:
      problems.append(f'{m.name}: {e}')
  if problems:
    raise SweepError('Members whose config train.py would refuse:\n  '
                     + '\n  '.join(problems))


def write_manifest(sweep_dir: str, spec: str, members: Sequence[Member],
                   train_args: Sequence[str] = (),
                   eval_args: Sequence[str] = (),
                   report: str | None = None) -> str:
  os.makedirs(sweep_dir, exist_ok=True)
  path = os.path.join(sweep_dir, MANIFEST)
  manifest = {
      'sweep': spec, 'dir': os.path.abspath(sweep_dir), 'report': report,
      'train_args': list(train_args), 'eval_args': list(eval_args),
      'members': [{'name': m.name, 'config': m.config,
                   'overrides': m.overrides, 'workdir': m.workdir,
                   'train': shlex.join(m.train_command(train_args)[1:]),
                   'eval': shlex.join(m.eval_command(eval_args)[1:]),
                   'after': [shlex.join(a.command(m.workdir)[1:])
                             for a in m.after]}
                  for m in members]}
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(manifest, f, indent=2, default=repr)
  os.replace(tmp, path)
  return path


def read_manifest(sweep_dir: str) -> dict:
  path = os.path.join(sweep_dir, MANIFEST)
  if not os.path.isfile(path):
    raise SweepError(f'{path} does not exist: run the sweep first, or give '
                     '--sweep.')
  with open(path) as f:
    return json.load(f)


# --------------------------------------------------------------- running


def latest_checkpoint_time(workdir: str) -> float | None:
  """The modification time of the newest finished checkpoint, or None."""
  step = checkpoint.latest_step(workdir)
  if step is None:
    return None
  step_dir = checkpoint.step_dir(workdir, step)
  return max([os.path.getmtime(step_dir)] +
             [os.path.getmtime(os.path.join(step_dir, name))
              for name in os.listdir(step_dir)])


def is_done(workdir: str, done: str = os.path.join('eval',
                                                     'results.json')) -> bool:
  """``done`` (default: eval.py's results) written after the latest
  checkpoint."""
  results = os.path.join(workdir, done)
  ckpt = latest_checkpoint_time(workdir)
  return (ckpt is not None and os.path.isfile(results)
          and os.path.getmtime(results) >= ckpt)


def member_done(member: Member) -> bool:
  """Evaluated, and every ``after`` command done, since the latest
  checkpoint."""
  return is_done(member.workdir) and all(
      is_done(member.workdir, a.done) for a in member.after)


@dataclasses.dataclass
class Outcome:
  member: Member
  status: str                      # 'done', 'skipped', 'failed', 'stopped'
  stage: str = ''
  returncode: int = 0
  seconds: float = 0.0

  def log_path(self) -> str:
    return os.path.join(self.member.workdir, f'{self.stage}.log')


def tail(path: str, lines: int = 15) -> str:
  try:
    with open(path, errors='replace') as f:
      return ''.join(f.readlines()[-lines:])
  except OSError:
    return ''


class Runner:
  """Runs members, ``parallel`` at a time, each as train.py then eval.py."""

  def __init__(self, train_args: Sequence[str] = (),
               eval_args: Sequence[str] = (), parallel: int = 1,
               print_fn: Callable[[str], None] = print):
    self.train_args = list(train_args)
    self.eval_args = list(eval_args)
    self.parallel = max(1, parallel)
    self._print = print_fn
    self._lock = threading.Lock()
    self._procs: set[subprocess.Popen] = set()
    self.stopping = False

  def say(self, msg: str) -> None:
    with self._lock:
      self._print(msg)
      sys.stdout.flush()

  def stop(self, signum: int) -> None:
    """Stops starting members and passes ``signum`` to the running ones."""
    self.stopping = True
    with self._lock:
      procs = list(self._procs)
    for p in procs:
      try:
        p.send_signal(signum)
      except OSError:
        pass

  def _run(self, member: Member, stage: str, cmd: list[str]) -> int:
    os.makedirs(member.workdir, exist_ok=True)
    path = os.path.join(member.workdir, f'{stage}.log')
    with open(path, 'a') as log:
      stamp = datetime.datetime.now().isoformat(timespec='seconds')
      log.write(f'# {stamp} $ {shlex.join(cmd)}\n')
      log.flush()
      with self._lock:
        if self.stopping:
          return -1
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                cwd=ROOT)
        self._procs.add(proc)
      try:
        return proc.wait()
      finally:
        with self._lock:
          self._procs.discard(proc)

  def run_member(self, member: Member, index: str) -> Outcome:
    if member_done(member):
      self.say(f'{index} {member.name}: skipped, already evaluated '
               f'({os.path.join(member.workdir, "eval", "results.json")})')
      return Outcome(member, 'skipped')
    if self.stopping:
      return Outcome(member, 'stopped')
    start = time.time()

    def stages():  # decided after each stage: training may add a checkpoint
      yield 'train', member.train_command(self.train_args)
      if not is_done(member.workdir):
        yield 'eval', member.eval_command(self.eval_args)
      for a in member.after:
        if not is_done(member.workdir, a.done):
          yield a.name, a.command(member.workdir)

    for stage, cmd in stages():
      self.say(f'{index} {member.name}: {stage} (log: '
               f'{os.path.join(member.workdir, stage + ".log")})')
      rc = self._run(member, stage, cmd)
      if rc != 0:
        status = 'stopped' if self.stopping else 'failed'
        self.say(f'{index} {member.name}: {stage} {status} (exit code {rc})')
        return Outcome(member, status, stage, rc, time.time() - start)
    seconds = time.time() - start
    self.say(f'{index} {member.name}: done in {seconds:.0f} s')
    return Outcome(member, 'done', seconds=seconds)

  def run(self, members: Sequence[Member]) -> list[Outcome]:
    """Runs every member; returns their outcomes in order."""
    n = len(members)
    # Members starting together prepare a shared dataset once: a file lock
    # in lmx.data.corpus.build_local makes the others wait for it.
    with futures.ThreadPoolExecutor(self.parallel) as pool:
      jobs = [pool.submit(self.run_member, m, f'[{i + 1}/{n}]')
              for i, m in enumerate(members)]
      try:
        return [j.result() for j in jobs]
      except KeyboardInterrupt:
        self.stop(signal.SIGINT)
        for j in jobs:
          j.cancel()
        raise


def summary(outcomes: Sequence[Outcome]) -> str:
  """One line of counts, then each failure with the end of its log."""
  counts: dict[str, int] = {}
  for o in outcomes:
    counts[o.status] = counts.get(o.status, 0) + 1
  lines = ['Sweep: ' + ', '.join(f'{v} {k}' for k, v in counts.items())
           + f' of {len(outcomes)} members.']
  for o in outcomes:
    if o.status == 'failed':
      lines.append(f'FAILED {o.member.name}: {o.stage}.py exited with code '
                   f'{o.returncode}; last lines of {o.log_path()}:')
      lines += ['    ' + line for line in tail(o.log_path()).splitlines()]
  return '\n'.join(lines)
