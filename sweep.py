"""Train and evaluate every member of a sweep, then write one report.

    python sweep.py --sweep=configs/sweeps/encodings.py:size=tiny \
        --dir=runs/sweeps/encodings --parallel=2
    python sweep.py --sweep=configs/sweeps/encodings.py \
        --dir=runs/sweeps/encodings --launcher=slurm --parallel=16 \
        --slurm=partition=gpu,time_min=240
    python sweep.py --dir=runs/sweeps/encodings --report_only

Each member is one submitit job (--launcher=local: on this machine,
--parallel at a time; --launcher=slurm: one job array of that parallelism,
with the declaration's 'slurm' settings, overridden by --slurm). It runs
``train.py --config=<base> --config.<field>=<value>...
--workdir=<dir>/<name> --progress=false`` and then ``eval.py
--workdir=<dir>/<name>``, logging to ``<dir>/<name>/train.log`` and
``eval.log``. Running the same command again skips members already
evaluated after their latest checkpoint and resumes the others;
--dry_run shows what would run (and the SLURM job script). The sweep
exits with 1 if a member failed (or a signal to its job alone stopped it,
e.g. a preemption), 2 on bad input (before anything runs), and 128 + N
when stopped by signal N. Writes ``<dir>/sweep.json`` (the members)
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

from lmx import cli, fs
from lmx.evaluation import report
from lmx import sweeps as sweep

_SWEEP = flags.DEFINE_string(
    'sweep', None, 'Sweep declaration, e.g. configs/sweeps/encodings.py'
    '[:size=tiny].')
_DIR = flags.DEFINE_string('dir', None, 'Sweep directory: one workdir per '
                           'member, sweep.json and the report.')
_PARALLEL = flags.DEFINE_integer(
    'parallel', 1, 'Members run at once (on SLURM: the job array\'s '
    'parallelism).')
_LAUNCHER = flags.DEFINE_enum(
    'launcher', 'local', list(sweep.LAUNCHERS), 'Where members run: '
    'submitit\'s local executor on this machine, or SLURM jobs.')
_SLURM = flags.DEFINE_string(
    'slurm', '', 'SLURM settings over the declaration\'s \'slurm\' dict, '
    'e.g. "partition=gpu,time_min=240,gpus_per_node=1" (with '
    '--launcher=slurm).')
_DRY_RUN = flags.DEFINE_bool(
    'dry_run', False, 'Print what would run (each member\'s commands, and '
    'the SLURM job script) and exit; starts and writes nothing.')
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
  try:  # the output path, before any work (creates nothing)
    fs.check_writable_dir(sweep_dir, '--dir', sweep.SweepError)
  except sweep.SweepError as e:
    _fail(str(e))
  if _PARALLEL.value < 1:
    _fail(f'--parallel must be at least 1, got {_PARALLEL.value}.')
  try:
    train_args = shlex.split(_TRAIN_ARGS.value)
    eval_args = shlex.split(_EVAL_ARGS.value)
  except ValueError as e:  # e.g. an unbalanced quote
    _fail(f'--train_args/--eval_args cannot be split into arguments ({e}): '
          'check their quotes.')
  if _REPORT_ONLY.value and _DRY_RUN.value:
    _fail('--dry_run and --report_only exclude each other: drop one.')
  try:
    if _SWEEP.value:
      members = sweep.prepare(_SWEEP.value, sweep_dir, train_args,
                              eval_args)
      report_module = sweep.report_module(_SWEEP.value)
      slurm = sweep.launch_settings(_SWEEP.value, _LAUNCHER.value,
                                    _SLURM.value, _DRY_RUN.value)
      if slurm is not None and not _DRY_RUN.value:
        sweep.check_no_active_jobs(members, sweep_dir)
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

  if _DRY_RUN.value:
    print(sweep.plan(members, train_args, eval_args, _LAUNCHER.value,
                     sweep_dir, slurm, _PARALLEL.value))
    sys.exit(0)

  failed = False
  if not _REPORT_ONLY.value:
    sweep.write_manifest(sweep_dir, _SWEEP.value, members, train_args,
                         eval_args, report_module, _LAUNCHER.value)
    print(f'Sweep {_SWEEP.value}: {len(members)} members in {sweep_dir}, '
          f'{_PARALLEL.value} at a time ({_LAUNCHER.value} launcher).')
    runner = sweep.Runner(train_args, eval_args, _PARALLEL.value,
                          launcher=_LAUNCHER.value, sweep_dir=sweep_dir,
                          slurm=slurm)
    received = []

    def on_signal(signum, frame):  # pylint: disable=unused-argument
      if received:
        print(f'Signal {signum}: already stopping; waiting for the running '
              'members to save.', file=sys.stderr)
        return
      received.append(signum)
      print(f'Signal {signum}: stopping the running members (they save a '
            'checkpoint); rerun the same command to resume.', file=sys.stderr)
      runner.stop(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
      outcomes = runner.run(members)
    except sweep.SweepError as e:   # sbatch refused the submission
      _fail(str(e))
    print(sweep.summary(outcomes))
    if received:
      sys.exit(128 + received[0])
    # Stopped with no signal to the sweep: by one to the job (preemption).
    failed = any(o.status in ('failed', 'stopped') for o in outcomes)

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
