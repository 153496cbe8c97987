"""Train an lmx model.

    python train.py --config=configs/alibi.py
    python train.py --config=configs/rope.py:size=tiny --workdir=/tmp/run \
        --config.train.steps=50

Running the same command again resumes from the latest good checkpoint.
SIGTERM or Ctrl-C saves a checkpoint at the current step and exits with
128 + the signal number; bad input exits with 2 and one message.

Several processes (multi-host; see lmx/sharding.py): run the same command in
each, with a shared --workdir, plus

    --coordinator=<host of process 0>:<port> --num_processes=N --process_id=I

(or LMX_COORDINATOR, LMX_NUM_PROCESSES, LMX_PROCESS_ID in the environment).
"""

import os
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from lmx import cli
from lmx import sharding
from lmx.training import trainer
from lmx.errors import CheckpointError, ConfigError, DataError

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/alibi.py[:size=tiny].',
    lock_config=True)
(_WORKDIR, _PROGRESS, _COORDINATOR, _NUM_PROCESSES,
 _PROCESS_ID) = cli.define_train_flags()
flags.adopt_module_key_flags(cli)  # --help lists them


def default_workdir(config) -> str:
  return os.path.join('runs', config.name)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  if config is None:
    raise app.UsageError('--config is required, e.g. --config=configs/alibi.py')
  workdir = _WORKDIR.value or default_workdir(config)
  try:
    sharding.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                        _PROCESS_ID.value)
    trainer.train(config, workdir, progress=_PROGRESS.value)
  except trainer.TrainingInterrupted as e:
    print(str(e), file=sys.stderr)
    sys.exit(128 + e.signum)
  except KeyboardInterrupt:  # before the training loop took over signals
    print('Interrupted before training started; no checkpoint was written '
          'by this run. Run the same command to start again.',
          file=sys.stderr)
    sys.exit(128 + signal.SIGINT)
  except OSError as e:  # anything the checks before did not foresee
    print(f'error: {cli.os_error(e)}', file=sys.stderr)
    sys.exit(2)
  except (ConfigError, DataError, CheckpointError,
          FloatingPointError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
