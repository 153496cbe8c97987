"""Train and evaluate every member of a sweep, then write one report.

    python sweep.py --sweep=configs/sweeps/encodings.py:size=tiny \
        --dir=runs/sweeps/encodings --parallel=2
    python sweep.py --dir=runs/sweeps/encodings --report_only

Each member runs ``train.py --config=<base> --config.<field>=<value>...
--workdir=<dir>/<name> --progress=false`` and then ``eval.py
--workdir=<dir>/<name>``, logging to ``<dir>/<name>/train.log`` and
``eval.log``. Running the same command again skips members already
evaluated after their latest checkpoint and resumes the others. The sweep
exits with 1 if a member failed, 2 on bad input (before anything runs), and
128 + N when stopped by signal N. Writes ``<dir>/sweep.json`` (the members)
and ``<dir>/report.md``, ``report.csv`` and plots (the declaration's own
``report`` module writes them where it names one, as
configs/sweeps/replicate.py does). Members may run further commands after
eval.py (a declaration's ``'after'``), resumed the same way.
"""

import os
import shlex
import signal
import sys

from absl import app, flags

from lmx import cli, report, sweep

_SWEEP = flags.DEFINE_string(
    'sweep', None, 'Sweep declaration, e.g. configs/sweeps/encodings.py'
    '[:size=tiny].')
_DIR = flags.DEFINE_string('dir', None, 'Sweep directory: one workdir per '
                           'member, sweep.json and the report.')
_PARALLEL = flags.DEFINE_integer('parallel', 1, 'Members run at once.')
_TRAIN_ARGS = flags.DEFINE_string(
    'train_args', '', 'Extra train.py arguments for every member, e.g. '
    '"--config.train.steps=50".')
_EVAL_ARGS = flags.DEFINE_string(
    'eval_args', '', 'Extra eval.py arguments, e.g. "--lengths=64,512".')
_MRR = flags.DEFINE_enum(
    'mrr', 'length', list(report.MRR_FORMS), 'Mean reciprocal rank in the '
    'report: per task and length with average ties (length), or per task '
    'and seed as the authors\' code (authors); see docs/tasks.md.')
_REPORT_ONLY = flags.DEFINE_bool(
    'report_only', False, 'Only (re)write the report from the members\' '
    'eval results.')


def _fail(msg: str) -> None:
  print(f'error: {msg}', file=sys.stderr)
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  sweep_dir = _DIR.value
  if not sweep_dir:
    _fail('--dir is required, e.g. --dir=runs/sweeps/encodings.')
  if _PARALLEL.value < 1:
    _fail(f'--parallel must be at least 1, got {_PARALLEL.value}.')
  try:
    train_args = shlex.split(_TRAIN_ARGS.value)
    eval_args = shlex.split(_EVAL_ARGS.value)
  except ValueError as e:  # e.g. an unbalanced quote
    _fail(f'--train_args/--eval_args cannot be split into arguments ({e}): '
          'check their quotes.')
  try:
    if _SWEEP.value:
      members = sweep.prepare(_SWEEP.value, sweep_dir, train_args,
                              eval_args)
      report_module = sweep.report_module(_SWEEP.value)
      workdirs = [m.workdir for m in members]
      title = _SWEEP.value
    elif _REPORT_ONLY.value:
      manifest = sweep.read_manifest(sweep_dir)
      workdirs = [m['workdir'] for m in manifest['members']]
      title = manifest.get('sweep')
      report_module = manifest.get('report')
      if report_module:
        sweep.check_report_module(report_module)
    else:
      _fail('--sweep is required, e.g. '
            '--sweep=configs/sweeps/encodings.py:size=tiny.')
  except sweep.SweepError as e:
    _fail(str(e))

  failed = False
  if not _REPORT_ONLY.value:
    sweep.write_manifest(sweep_dir, _SWEEP.value, members, train_args,
                         eval_args, report_module)
    print(f'Sweep {_SWEEP.value}: {len(members)} members in {sweep_dir}, '
          f'{_PARALLEL.value} at a time.')
    runner = sweep.Runner(train_args, eval_args, _PARALLEL.value)
    received = []

    def on_signal(signum, frame):  # pylint: disable=unused-argument
      received.append(signum)
      print(f'Signal {signum}: stopping the running members (they save a '
            'checkpoint); rerun the same command to resume.', file=sys.stderr)
      runner.stop(signum)

    signal.signal(signal.SIGTERM, on_signal)
    try:
      outcomes = runner.run(members)
    except KeyboardInterrupt:
      print('Interrupted; rerun the same command to resume.', file=sys.stderr)
      sys.exit(128 + signal.SIGINT)
    print(sweep.summary(outcomes))
    if received:
      sys.exit(128 + received[0])
    failed = any(o.status == 'failed' for o in outcomes)

  written = sweep.write_report(
      workdirs, sweep_dir, title or os.path.basename(os.path.normpath(
          sweep_dir)), report_module, mrr=_MRR.value)
  if written:
    print('Report: ' + ', '.join(written))
  else:
    print(f'No member has eval/results.json yet: no report written in '
          f'{sweep_dir}.')
  sys.exit(1 if failed else 0)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
