"""Prepare a corpus's token store ahead of training.

    python -m lmx.data.prepare --config=configs/alibi.py \\
        --config.data.source='/data/fineweb/*.jsonl.zst' --config.data.text_key=text

Builds (or checks) the store that ``train.py`` with the same config would
read: the SentencePiece model first if the config asks for one, then both
splits, with ``config.data.prepare_workers`` processes. A later training,
evaluation or resume opens the store at once. It prints the store's folder
and its size; bad input exits with 2 and one message.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from absl import app, logging
from ml_collections import config_flags

from lmx import cli
from lmx.config import validate as config_lib
from lmx.data import store, subword
from lmx.errors import CheckpointError, ConfigError, DataError


def prepare(config) -> dict:
  """Prepares the store of ``config.data``; returns its manifest."""
  config_lib.validate(config)
  if config.task.name:
    raise ConfigError(f'config.task.name={config.task.name!r} generates its '
                      'examples: it has no corpus to prepare.')
  tok = subword.for_config(config)
  start = time.perf_counter()
  manifests = []
  for split in store.SPLITS:
    stream = store.open_split(config.data, split, tok)
    manifests.append((split, stream))
  took = time.perf_counter() - start
  for split, stream in manifests:
    print(f'{split}: {stream.size:,} tokens ({stream.dtype}), '
          f'{len(stream.doc_ends()):,} documents, {len(stream.records)} '
          f'shards in {stream.folder}')
  print(f'Ready in {took:.1f} s.')
  return {split: stream for split, stream in manifests}


def main(argv: Sequence[str], config_flag) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  config = config_flag.value
  if config is None:
    raise app.UsageError('--config is required, e.g. --config=configs/alibi.py')
  try:
    prepare(config)
  except (ConfigError, DataError, CheckpointError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except OSError as e:
    print(f'error: {cli.os_error(e)}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  _CONFIG = config_flags.DEFINE_config_file(
      'config', None, 'Config file, e.g. configs/alibi.py[:size=tiny].',
      lock_config=False)
  app.run(lambda argv: main(argv, _CONFIG), flags_parser=cli.parse_flags)
