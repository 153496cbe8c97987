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
  lmx.evaluation.extensions`` on the member's checkpoint.
- ``report`` (optional): a module (``'configs.sweeps.replicate'``) whose
  ``write(workdirs, out_dir, title)`` writes the sweep's report instead of
  ``lmx.evaluation.report.write``.
- ``slurm`` (optional): cluster settings for ``--launcher=slurm``
  (``SLURM_KEYS``), e.g. ``{'partition': 'gpu', 'time_min': 240,
  'gpus_per_node': 1, 'setup': ['module load cuda']}``.

A member's name joins its override values that vary across the sweep, in
declaration order (``alibi-s0``, ``rope-randomized-s1``); its workdir is
``<sweep dir>/<name>``. ``python sweep.py`` runs ``train.py`` and
``eval.py`` for each as one submitit job (``MemberJob``), on this machine
or on a SLURM cluster (``Runner``; see sweep.py and docs/sweeps.md).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import submitit
from absl import flags

from lmx import fs

# lmx.cli, lmx.training.checkpoint and lmx.evaluation.report (JAX,
# matplotlib) are imported where they are used: every member's job imports
# this module.

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
  unknown = set(decl) - {'config', 'members', 'product', 'report', 'slurm'}
  if unknown:
    raise SweepError(f'Unknown sweep keys {sorted(unknown)}: a declaration '
                     "has 'config', 'members' and/or 'product' (and "
                     "optionally 'report' and 'slurm').")
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
    explicit_name = r.get('name')
    # The name becomes the member's workdir, <dir>/<name>: a non-empty
    # string of one path component.
    if explicit_name is not None and not (
        isinstance(explicit_name, str)
        and re.fullmatch(r'[A-Za-z0-9_.=,+-]+', explicit_name)
        and explicit_name not in ('.', '..')):
      raise SweepError(
          f"A sweep member's 'name' must be a non-empty string of letters, "
          f'digits and _.=,+- (it names the member\'s workdir), got '
          f'{explicit_name!r}.')
    name = explicit_name or member_name(r, varying)
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
  """``--config.a.b=v`` items of an argument list -> ``{'a.b': 'v'}``
  (``lmx.cli.overrides_in``, the entry points' reading; items without a
  value are left out)."""
  from lmx import cli  # pylint: disable=g-import-not-at-top
  return {k: v for k, v in cli.overrides_in(['', *args]).items()
          if v is not None}


def check_fields(members: Sequence[Member],
                 extra_fields: Sequence[str] | dict = (),
                 where: str = '--train_args') -> None:
  """Every override names an existing field of its member's config and
  holds a value of that field's type; so does every ``--config.<field>``
  of ``extra_fields`` (``{field: command-line value}``, or field names)."""
  from lmx import cli  # pylint: disable=g-import-not-at-top
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
            cli.parse_override(node, extra[key])
          except (ValueError, TypeError, SyntaxError) as e:
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


# The flags the sweep sets itself for each member.
SET_BY_SWEEP = {'train.py': ('config', 'workdir'), 'eval.py': ('workdir',)}


def check_args(args: Sequence[str], command: str, option: str) -> None:
  """Every item of ``--train_args`` / ``--eval_args`` is a flag the command
  takes, with a value it accepts: parsed by the command's own flag
  definitions (``lmx.cli.sweep_flags``). ``--config.<field>`` items are
  checked against each member's config by ``check_fields``."""
  from lmx import cli  # pylint: disable=g-import-not-at-top
  known = cli.sweep_flags(command)
  own = [n for n in known if n not in SET_BY_SWEEP[command]]
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
    negated = (name not in known and name.startswith('no')
               and name[2:] in known and known[name[2:]].boolean)
    if name not in known and not negated:
      problems.append(f'{command} has no flag --{name}; its flags: '
                      + ', '.join(f'--{k}' for k in own) + ', and '
                      '--config.<field>.')
      continue
    flag = known[name[2:] if negated else name]
    if negated and eq:
      problems.append(f'--{name} takes no value.')
      continue
    if negated or (flag.boolean and not eq):
      continue
    try:
      flag.parse(value)
    except flags.Error as e:
      problems.append(f'--{name}={value}: {command} refuses it ('
                      f'{" ".join(str(e).split())}).')
  if problems:
    raise SweepError(f'{option} that {command} would refuse (checked before '
                     'any member runs):\n  ' + '\n  '.join(problems))


def prepare(spec: str, sweep_dir: str, train_args: Sequence[str] = (),
            eval_args: Sequence[str] = ()) -> list[Member]:
  """Loads, expands and checks a sweep: every input error before any run,
  the --train_args and --eval_args of every member included."""
  members = expand(load_declaration(spec), sweep_dir)
  check_args(train_args, 'train.py', '--train_args')
  check_args(eval_args, 'eval.py', '--eval_args')
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
  """``module.write`` (a declaration's report) or ``lmx.evaluation.report.write``."""
  if module:
    return importlib.import_module(module).write(workdirs, out_dir, title,
                                                 **kwargs)
  from lmx.evaluation import report  # pylint: disable=g-import-not-at-top
  return report.write(workdirs, out_dir, title, **kwargs)


def member_config(member: Member, train_overrides: dict[str, str]):
  """The config ``train.py`` will run for ``member``: its config file,
  its overrides, then the --train_args ``--config.<field>`` items."""
  from lmx import cli  # pylint: disable=g-import-not-at-top
  config = copy.deepcopy(load_config(member.config))
  config.update_from_flattened_dict(dict(member.overrides))
  for key, text in train_overrides.items():
    node = config
    for part in key.split('.')[:-1]:
      node = node[part]
    leaf = key.split('.')[-1]
    node[leaf] = cli.parse_override(node[leaf], text)
  return config


def check_values(members: Sequence[Member],
                 train_overrides: dict[str, str]) -> None:
  """Every member's config passes ``lmx.config.validate.validate`` (ranges, choices,
  cross-field rules), as train.py would check it, before any member runs.
  (What needs the data or the workdir is found by train.py itself.)"""
  from lmx.config import validate as config_lib  # pylint: disable=g-import-not-at-top
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
                   report: str | None = None,
                   launcher: str = 'local') -> str:
  os.makedirs(sweep_dir, exist_ok=True)
  path = os.path.join(sweep_dir, MANIFEST)
  manifest = {
      'sweep': spec, 'dir': os.path.abspath(sweep_dir), 'report': report,
      'launcher': launcher,
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
  manifest = fs.read_json(path, error=SweepError, fix=(
      'sweep.py writes it when a sweep starts; run the sweep again with '
      '--sweep (finished members are not run again), which rewrites it.'))
  members = manifest.get('members')
  if not isinstance(members, list) or not all(
      isinstance(m, dict) and isinstance(m.get('workdir'), str)
      for m in members):
    raise SweepError(f'{path} is damaged (no list of members with their '
                     'workdirs): run the sweep again with --sweep, which '
                     'rewrites it.')
  return manifest


# --------------------------------------------------------------- running


def latest_checkpoint_time(workdir: str) -> float | None:
  """The modification time of the newest finished checkpoint, or None."""
  from lmx.training import checkpoint  # pylint: disable=g-import-not-at-top
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


# ------------------------------------------------------------- launchers
#
# Every member runs as one submitit job: submitit's LocalExecutor on this
# machine (--launcher=local) or its SlurmExecutor on a cluster
# (--launcher=slurm). The job runs the member's stages (train.py, then
# eval.py and the 'after' commands not done yet) as subprocesses, each
# logging to <workdir>/<stage>.log as a stage run by hand would: each stage
# is its own absl program with its own flags, exit codes and signal
# handling, a fresh process frees the accelerator between stages, and one
# job per member means one wait in a cluster queue, not three.

LAUNCHERS = ('local', 'slurm')
SUBMITIT_DIR = 'submitit'       # under the sweep dir: job pickles and logs
LOCAL_TIMEOUT_MIN = 60 * 24 * 365  # local jobs have no time limit
RESIGNAL_S = 10.0               # a stopping local job is signalled again
SLURM_JOBS = 'slurm_jobs.json'  # in <dir>/submitit: member -> SLURM job id
# sacct states of a job that may still train in its member's workdir.
SLURM_ACTIVE = ('PENDING', 'RUNNING', 'REQUEUED', 'REQUEUE_HOLD',
                'CONFIGURING', 'COMPLETING', 'SUSPENDED', 'RESIZING')

# A declaration's 'slurm' settings (and --slurm): key -> (kind, meaning).
SLURM_KEYS = {
    'partition': (str, 'sbatch --partition'),
    'account': (str, 'sbatch --account'),
    'qos': (str, 'sbatch --qos'),
    'constraint': (str, 'sbatch --constraint'),
    'job_name': (str, 'sbatch --job-name (default: lmx-<sweep dir name>)'),
    'time_min': (int, 'time limit of each member job in minutes'),
    'gpus_per_node': (int, 'sbatch --gpus-per-node'),
    'cpus_per_task': (int, 'sbatch --cpus-per-task'),
    'mem_gb': (float, 'memory of each member job in GB (sbatch --mem)'),
    'signal_delay_s': (int, 'seconds before the time limit at which the '
                       'job is warned (USR2), saves and is requeued'),
    'setup': (list, 'shell lines run before the member, e.g. module load'),
    'sbatch': (dict, 'further #SBATCH options, name -> value'),
}
SLURM_DEFAULTS = {'time_min': 24 * 60, 'signal_delay_s': 120}
_AT_LEAST = {'time_min': 1, 'cpus_per_task': 1, 'signal_delay_s': 1,
             'gpus_per_node': 0}


def check_slurm(value: Any, where: str) -> dict[str, Any]:
  """The 'slurm' settings, checked: known keys, values of their kind."""
  if not isinstance(value, dict):
    raise SweepError(f"{where}: 'slurm' must be a dict of cluster settings "
                     f'({", ".join(SLURM_KEYS)}), got {value!r}.')
  problems = []
  for key, v in value.items():
    if key not in SLURM_KEYS:
      problems.append(f'{key!r} is not a SLURM setting; the settings: '
                      + ', '.join(SLURM_KEYS) + '.')
      continue
    kind, _ = SLURM_KEYS[key]
    if kind is list:
      ok = (isinstance(v, (list, tuple))
            and all(isinstance(x, str) for x in v))
      wants = 'a list of shell lines (strings)'
    elif kind is dict:
      ok = isinstance(v, dict) and all(
          isinstance(k, str) and re.fullmatch(r'[a-z][a-z0-9-]*', k)
          and isinstance(x, (str, int)) and not isinstance(x, bool)
          for k, x in v.items())
      wants = ('a dict of sbatch option names (e.g. "mail-type") to '
               'strings or integers')
    elif kind is float:
      # _mem writes int(gb) GB or int(gb * 1024) MB: finite, at least 1 MB,
      # and at most what sbatch's --mem (an unsigned 64-bit MB count) holds.
      ok = (isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v) and 1 / 1024 <= v <= 2**53)
      wants = f'a positive number (finite; GB in [{1 / 1024:g}, {2**53}])'
    elif kind is int:
      low = _AT_LEAST[key]
      ok = isinstance(v, int) and not isinstance(v, bool) and v >= low
      wants = f'an integer of at least {low}'
    else:
      ok, wants = isinstance(v, str) and bool(v), 'a non-empty string'
    if not ok:
      problems.append(f'{key}={v!r} ({SLURM_KEYS[key][1]}) must be {wants}.')
  if problems:
    raise SweepError(f'{where}: bad SLURM settings:\n  '
                     + '\n  '.join(problems))
  return dict(value)


def parse_slurm_flag(text: str) -> dict[str, Any]:
  """``--slurm=partition=gpu,time_min=120`` as settings (scalars only)."""
  out: dict[str, Any] = {}
  for item in filter(None, (x.strip() for x in text.split(','))):
    key, eq, value = item.partition('=')
    if not eq:
      raise SweepError(f'--slurm: {item!r} is not key=value, e.g. '
                       '--slurm=partition=gpu,time_min=120.')
    kind = SLURM_KEYS.get(key, (None,))[0]
    if kind in (list, dict):
      raise SweepError(f"--slurm: {key!r} is set in the declaration's "
                       "'slurm' dict, not on the command line.")
    try:
      out[key] = kind(value) if kind in (int, float) else value
    except ValueError:
      out[key] = value   # check_slurm names the key and what it wants
  return check_slurm(out, '--slurm')


def launch_settings(spec: str, launcher: str, slurm_flag: str = '',
                    dry_run: bool = False) -> dict[str, Any] | None:
  """The SLURM settings (declaration, then --slurm, over the defaults), or
  None for the local launcher; every problem before anything runs."""
  if launcher not in LAUNCHERS:
    raise SweepError(f'--launcher={launcher} is not a launcher; use one of '
                     + ', '.join(LAUNCHERS) + '.')
  declared = load_declaration(spec).get('slurm')
  settings = dict(SLURM_DEFAULTS)
  if declared is not None:
    settings.update(check_slurm(declared, split_arg(spec)[0]))
  if launcher == 'local':
    if slurm_flag:
      raise SweepError('--slurm sets cluster settings, which only '
                       '--launcher=slurm uses: drop it or add '
                       '--launcher=slurm.')
    return None
  settings.update(parse_slurm_flag(slurm_flag or ''))
  try:  # submitit's own checks of the parameters, before anything runs
    slurm_script('.', settings, 1, 2)
  except ValueError as e:
    raise SweepError(f'SLURM settings that submitit refuses: {e}') from None
  missing = [c for c in ('sbatch', 'srun') if shutil.which(c) is None]
  if missing and not dry_run:
    raise SweepError(f'--launcher=slurm needs {" and ".join(missing)} on '
                     'PATH (run on a SLURM login node), or add --dry_run to '
                     'see the job script without submitting it.')
  return settings


def _mem(gb: float) -> str:
  return f'{int(gb)}GB' if gb == int(gb) else f'{int(gb * 1024)}MB'


def slurm_parameters(settings: dict[str, Any], sweep_dir: str,
                     parallel: int) -> dict[str, Any]:
  """submitit SlurmExecutor parameters from the sweep's SLURM settings;
  ``parallel`` is the job array's parallelism (%N of sbatch --array)."""
  settings = {**SLURM_DEFAULTS, **settings}
  name = (settings.get('job_name') or 'lmx-' + os.path.basename(
      os.path.normpath(os.path.abspath(sweep_dir))))
  params: dict[str, Any] = {
      'job_name': name, 'time': settings['time_min'],
      'signal_delay_s': settings['signal_delay_s'],
      'array_parallelism': parallel, 'stderr_to_stdout': True,
      # The job imports lmx.sweeps from this checkout, wherever it runs.
      'setup': [f'export PYTHONPATH={shlex.quote(ROOT)}'
                '${PYTHONPATH:+:$PYTHONPATH}', *settings.get('setup', ())]}
  for key in ('partition', 'account', 'qos', 'constraint', 'gpus_per_node',
              'cpus_per_task'):
    if key in settings:
      params[key] = settings[key]
  if 'mem_gb' in settings:
    params['mem'] = _mem(settings['mem_gb'])
  if settings.get('sbatch'):
    params['additional_parameters'] = dict(settings['sbatch'])
  return params


def submitit_folder(sweep_dir: str) -> str:
  return os.path.join(os.path.abspath(sweep_dir), SUBMITIT_DIR)


def _slurm_jobs_path(sweep_dir: str) -> str:
  return os.path.join(submitit_folder(sweep_dir), SLURM_JOBS)


def record_slurm_jobs(sweep_dir: str, jobs: dict[str, str]) -> None:
  """Adds ``{member name: job id}`` to ``<dir>/submitit/slurm_jobs.json``."""
  path = _slurm_jobs_path(sweep_dir)
  recorded = {}
  if os.path.isfile(path):
    recorded = fs.read_json(path, error=SweepError)
  recorded.update(jobs)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump(recorded, f, indent=2)
  os.replace(path + '.tmp', path)


def active_slurm_jobs(members: Sequence[Member],
                      sweep_dir: str) -> dict[str, tuple[str, str]]:
  """Members not done whose last recorded SLURM job is still queued or
  running (one sacct call): ``{name: (job id, state)}``."""
  path = _slurm_jobs_path(sweep_dir)
  if not os.path.isfile(path):
    return {}
  recorded = fs.read_json(path, error=SweepError)
  todo = {m.name: recorded[m.name] for m in members
          if m.name in recorded and not member_done(m)}
  if not todo:
    return {}
  watcher = submitit.SlurmJob.watcher
  for job_id in todo.values():
    watcher.register_job(str(job_id))
  watcher.update()
  out = {}
  for name, job_id in todo.items():
    state = (watcher.get_state(str(job_id), mode='cache').split() or ['?'])[0]
    if state.upper() in SLURM_ACTIVE:
      out[name] = (str(job_id), state)
  return out


def check_no_active_jobs(members: Sequence[Member], sweep_dir: str) -> None:
  """A rerun must not submit a member whose earlier job still runs: two
  jobs would train in one workdir."""
  busy = active_slurm_jobs(members, sweep_dir)
  if busy:
    raise SweepError(
        'Members whose SLURM job from an earlier run is still queued or '
        'running (two jobs would train in one workdir); wait for them or '
        'scancel them, then rerun:\n  ' + '\n  '.join(
            f'{name}: job {job_id} {state}'
            for name, (job_id, state) in busy.items()))


class _ScriptOnlySlurmExecutor(submitit.SlurmExecutor):
  """Writes job scripts without a cluster (dry runs): no srun check."""

  @classmethod
  def affinity(cls) -> int:
    return 2


def slurm_script(sweep_dir: str, settings: dict[str, Any], parallel: int,
                 count: int) -> str:
  """The sbatch script submitit writes for ``count`` member jobs (an array
  when more than one), built by submitit itself; submits nothing."""
  ex = _ScriptOnlySlurmExecutor(submitit_folder(sweep_dir))
  ex.update_parameters(**slurm_parameters(settings, sweep_dir, parallel))
  if count > 1:   # as SlurmExecutor does for an array
    ex.parameters['map_count'] = count
  return ex._make_submission_file_text(  # pylint: disable=protected-access
      ex._submitit_command_str, 'dry-run')  # pylint: disable=protected-access


class MemberJob:
  """What a member's submitit job runs: train.py, then eval.py and the
  'after' commands not done yet, each a subprocess logging to
  ``<workdir>/<stage>.log``; returns a dict (status, stage, returncode,
  seconds, stages run).

  SIGTERM or SIGINT is passed to the running stage (train.py saves a
  checkpoint and exits) and no later stage starts. On SLURM, submitit
  calls ``checkpoint`` on the warning before the time limit (USR2): the
  stage saves and submitit requeues the job, which resumes.
  """

  def __init__(self, member: Member, train_args: Sequence[str] = (),
               eval_args: Sequence[str] = (),
               env: dict[str, str | None] | None = None,
               stop_wait_s: float = 100.0):
    self.member = member
    self.train_args = list(train_args)
    self.eval_args = list(eval_args)
    self.env = dict(env or {})     # set (None: unset) for every stage
    self.stop_wait_s = stop_wait_s
    self._proc: subprocess.Popen | None = None
    self._signal: int | None = None

  def __getstate__(self):
    state = dict(self.__dict__)
    state['_proc'], state['_signal'] = None, None
    return state

  def stages(self):
    """(stage, command) pairs, decided one at a time: training may add a
    checkpoint that makes an earlier evaluation stale."""
    m = self.member
    yield 'train', m.train_command(self.train_args)
    if not is_done(m.workdir):
      yield 'eval', m.eval_command(self.eval_args)
    for a in m.after:
      if not is_done(m.workdir, a.done):
        yield a.name, a.command(m.workdir)

  def _forward(self, signum: int) -> None:
    proc = self._proc
    if proc is not None and proc.poll() is None:
      try:
        proc.send_signal(signum)
      except OSError:
        pass

  def _on_signal(self, signum, frame):  # pylint: disable=unused-argument
    if self._signal is None:   # the stage acknowledges further signals
      self._signal = signum    # itself; one is enough
      print(f'{self.member.name}: {signal.Signals(signum).name}, stopping '
            'the running stage', flush=True)
      self._forward(signum)

  def _run_stage(self, stage: str, cmd: list[str]) -> int:
    os.makedirs(self.member.workdir, exist_ok=True)
    env = dict(os.environ)
    for key, value in self.env.items():
      if value is None:
        env.pop(key, None)
      else:
        env[key] = value
    with open(os.path.join(self.member.workdir, f'{stage}.log'), 'a') as log:
      stamp = datetime.datetime.now().isoformat(timespec='seconds')
      log.write(f'# {stamp} $ {shlex.join(cmd)}\n')
      log.flush()
      self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=ROOT, env=env)
      if self._signal is not None:   # arrived while it was starting
        self._forward(self._signal)
      # poll(), not wait(): checkpoint() may wait on it from a handler.
      while self._proc.poll() is None:
        time.sleep(0.2)
      return self._proc.returncode

  def __call__(self) -> dict[str, Any]:
    if threading.current_thread() is threading.main_thread():
      for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, self._on_signal)
    start, ran = time.time(), []
    for stage, cmd in self.stages():
      if self._signal is not None:   # stopped before this stage
        return {'status': 'stopped', 'stage': stage, 'returncode': 0,
                'seconds': time.time() - start, 'stages': ran}
      print(f'{self.member.name}: {stage}: {shlex.join(cmd)}', flush=True)
      rc = self._run_stage(stage, cmd)
      ran.append(stage)
      if rc != 0:
        status = 'stopped' if self._signal is not None else 'failed'
        return {'status': status, 'stage': stage, 'returncode': rc,
                'seconds': time.time() - start, 'stages': ran}
    return {'status': 'done', 'stage': '', 'returncode': 0,
            'seconds': time.time() - start, 'stages': ran}

  def checkpoint(self, *args, **kwargs):  # pylint: disable=unused-argument
    """submitit's hook before a requeue: the running stage saves a
    checkpoint and exits; the requeued job (a fresh copy) resumes."""
    if self._signal is None:
      self._signal = signal.SIGTERM
    self._forward(signal.SIGTERM)
    deadline = time.time() + self.stop_wait_s
    while (self._proc is not None and self._proc.poll() is None
           and time.time() < deadline):
      time.sleep(0.2)
    return submitit.helpers.DelayedSubmission(MemberJob(
        self.member, self.train_args, self.eval_args, self.env,
        self.stop_wait_s))


@dataclasses.dataclass
class Outcome:
  member: Member
  status: str                      # 'done', 'skipped', 'failed', 'stopped'
  stage: str = ''                  # a stage, or 'job': ended without result
  returncode: int = 0
  seconds: float = 0.0
  stages: tuple[str, ...] = ()     # the stages the job ran
  log: str = ''                    # the log to show, if not <stage>.log
  note: str = ''

  def log_path(self) -> str:
    return self.log or os.path.join(self.member.workdir, f'{self.stage}.log')


def tail(path: str, lines: int = 15) -> str:
  try:
    with open(path, errors='replace') as f:
      return ''.join(f.readlines()[-lines:])
  except OSError:
    return ''


@contextlib.contextmanager
def _local_job_start():
  """Local jobs start with SIGINT ignored and this checkout on PYTHONPATH.
  The job controller submitit starts would answer Ctrl-C by killing the
  member's job a second later; ignored, the job's own handler gets it and
  its stage saves a checkpoint, however long that takes."""
  old_path = os.environ.get('PYTHONPATH')
  os.environ['PYTHONPATH'] = ROOT + (os.pathsep + old_path if old_path
                                     else '')
  main = threading.current_thread() is threading.main_thread()
  old_int = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
  try:
    yield
  finally:
    if main:
      signal.signal(signal.SIGINT, old_int)
    if old_path is None:
      os.environ.pop('PYTHONPATH', None)
    else:
      os.environ['PYTHONPATH'] = old_path


class Runner:
  """Runs members as submitit jobs: ``parallel`` at a time on this machine
  (local), or as one SLURM job array of that parallelism (slurm)."""

  def __init__(self, train_args: Sequence[str] = (),
               eval_args: Sequence[str] = (), parallel: int = 1,
               print_fn: Callable[[str], None] = print,
               launcher: str = 'local', sweep_dir: str = '.',
               slurm: dict[str, Any] | None = None,
               poll_s: float | None = None):
    self.train_args = list(train_args)
    self.eval_args = list(eval_args)
    self.parallel = max(1, parallel)
    self.launcher = launcher
    self.sweep_dir = sweep_dir
    self.slurm = dict(SLURM_DEFAULTS, **(slurm or {}))
    # Each poll looks for every running job's result file: on a cluster's
    # shared file system, not twice a second.
    self.poll_s = poll_s or (0.5 if launcher == 'local' else 10.0)
    self._print = print_fn
    self._lock = threading.Lock()
    self.stopping = False

  def say(self, msg: str) -> None:
    with self._lock:
      self._print(msg)
      sys.stdout.flush()

  def stop(self, signum: int) -> None:  # pylint: disable=unused-argument
    """Starts no further member; the running ones are signalled (local) or
    cancelled (slurm, which sends them SIGTERM) by ``run``."""
    self.stopping = True

  def executor(self):
    folder = submitit_folder(self.sweep_dir)
    if self.launcher == 'local':
      ex = submitit.LocalExecutor(folder)
      ex.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN,
                           stderr_to_stdout=True)
    else:
      ex = submitit.SlurmExecutor(folder)
      ex.update_parameters(**slurm_parameters(self.slurm, self.sweep_dir,
                                              self.parallel))
    return ex

  def job_function(self, member: Member) -> MemberJob:
    env = ({'CUDA_VISIBLE_DEVICES': os.environ.get('CUDA_VISIBLE_DEVICES')}
           if self.launcher == 'local' else {})  # submitit's local jobs
    return MemberJob(member, self.train_args, self.eval_args, env,  # hide
                     max(1, self.slurm['signal_delay_s'] - 20))     # GPUs

  def submit(self, executor, members: Sequence[Member]) -> list:
    """Submits one job per member (an array of them on SLURM)."""
    fns = [self.job_function(m) for m in members]
    try:
      if self.launcher == 'local':
        with _local_job_start():
          return [executor.submit(fn) for fn in fns]
      jobs = ([executor.submit(fns[0])] if len(fns) == 1
              else executor.submit_array(fns))
      record_slurm_jobs(self.sweep_dir, {m.name: j.job_id
                                         for m, j in zip(members, jobs)})
      return jobs
    except submitit.core.utils.FailedJobError as e:
      raise SweepError(f'sbatch refused the submission: {e}') from None

  def _outcome(self, member: Member, job, index: str) -> Outcome:
    try:
      r = job.result()
    except Exception as e:  # pylint: disable=broad-except
      # Ended without a result: killed, out of memory, out of time.
      note = (str(e).strip().splitlines() or [type(e).__name__])[0]
      status = 'stopped' if self.stopping else 'failed'
      out = Outcome(member, status, 'job', -1, log=str(job.paths.stdout),
                    note=note)
      self.say(f'{index} {member.name}: job {job.job_id} {status} without '
               f'a result ({note}; log: {out.log})')
      return out
    out = Outcome(member, r['status'], r['stage'], r['returncode'],
                  r['seconds'], tuple(r['stages']))
    if out.status == 'done':
      self.say(f'{index} {member.name}: done in {out.seconds:.0f} s ('
               + ', '.join(out.stages) + ')')
    elif out.status == 'stopped' and out.returncode == 0:
      self.say(f'{index} {member.name}: stopped before {out.stage}')
    else:
      self.say(f'{index} {member.name}: {out.stage} {out.status} (exit '
               f'code {out.returncode}; log: {out.log_path()})')
    return out

  def run(self, members: Sequence[Member]) -> list[Outcome]:
    """Runs every member not done yet; returns their outcomes in order."""
    n = len(members)
    index = [f'[{i + 1}/{n}]' for i in range(n)]
    outcomes: list[Outcome | None] = [None] * n
    queue = []
    for i, m in enumerate(members):
      if member_done(m):
        self.say(f'{index[i]} {m.name}: skipped, already evaluated '
                 f'({os.path.join(m.workdir, "eval", "results.json")})')
        outcomes[i] = Outcome(m, 'skipped')
      else:
        queue.append(i)
    running: dict[int, Any] = {}
    if queue and not self.stopping:
      ex = self.executor()
      if self.launcher == 'slurm':   # one array; SLURM bounds parallelism
        jobs = self.submit(ex, [members[i] for i in queue])
        for i, job in zip(queue, jobs):
          running[i] = job
          self.say(f'{index[i]} {members[i].name}: SLURM job {job.job_id} '
                   f'(stage logs in {members[i].workdir})')
        queue = []
    # Members starting together prepare a shared dataset once: a file lock
    # in lmx.data.store.open_store makes the others wait for it.
    signalled = None
    while running or (queue and not self.stopping):
      while queue and not self.stopping and len(running) < self.parallel:
        i = queue.pop(0)
        (running[i],) = self.submit(ex, [members[i]])
        self.say(f'{index[i]} {members[i].name}: local job '
                 f'{running[i].job_id} (stage logs in {members[i].workdir})')
      for i, job in list(running.items()):
        if job.done():
          outcomes[i] = self._outcome(members[i], job, index[i])
          del running[i]
      if self.stopping and running:
        if self.launcher == 'slurm':
          for i, job in running.items():
            job.cancel(check=False)   # scancel: SIGTERM, the stage saves
            self.say(f'{index[i]} {members[i].name}: cancelled SLURM job '
                     f'{job.job_id}')
            outcomes[i] = Outcome(members[i], 'stopped', 'job')
          running = {}
        elif signalled is None or time.time() - signalled > RESIGNAL_S:
          signalled = time.time()
          for job in running.values():   # the controller passes SIGTERM on
            try:
              os.kill(int(job.job_id), signal.SIGTERM)
            except OSError:
              pass
      if running:
        time.sleep(self.poll_s)
    for i in queue:
      outcomes[i] = Outcome(members[i], 'stopped')
    return outcomes


def plan(members: Sequence[Member], train_args: Sequence[str] = (),
         eval_args: Sequence[str] = (), launcher: str = 'local',
         sweep_dir: str = '.', slurm: dict[str, Any] | None = None,
         parallel: int = 1) -> str:
  """What a run would do (--dry_run): each member skipped or its stages'
  commands, and on SLURM the job script; starts and writes nothing."""
  lines, todo = [], 0
  n = len(members)
  for i, m in enumerate(members):
    if member_done(m):
      lines.append(f'[{i + 1}/{n}] {m.name}: skipped, already evaluated')
      continue
    todo += 1
    lines.append(f'[{i + 1}/{n}] {m.name}:')
    for stage, cmd in MemberJob(m, train_args, eval_args).stages():
      lines.append(f'    {stage}: {shlex.join(cmd)}')
  if launcher == 'slurm' and todo:
    what = 'one job' if todo == 1 else f'a job array of {todo}'
    lines += ['', f'sbatch script ({what}; not submitted):',
              slurm_script(sweep_dir, dict(SLURM_DEFAULTS, **(slurm or {})),
                           parallel, todo)]
  return '\n'.join(lines)


def summary(outcomes: Sequence[Outcome]) -> str:
  """One line of counts, then each failure with the end of its log."""
  counts: dict[str, int] = {}
  for o in outcomes:
    counts[o.status] = counts.get(o.status, 0) + 1
  lines = ['Sweep: ' + ', '.join(f'{v} {k}' for k, v in counts.items())
           + f' of {len(outcomes)} members.']
  for o in outcomes:
    if o.status == 'failed':
      if o.stage == 'job':
        lines.append(f'FAILED {o.member.name}: its job ended without a '
                     f'result ({o.note}); last lines of {o.log_path()}:')
      else:
        lines.append(f'FAILED {o.member.name}: {o.stage}.py exited with '
                     f'code {o.returncode}; last lines of {o.log_path()}:')
      lines += ['    ' + line for line in tail(o.log_path()).splitlines()]
  return '\n'.join(lines)
