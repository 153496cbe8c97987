"""The errors lmx raises for bad input: each message says what to change.

Entry points turn these into one line on stderr and exit status 2, before
anything is compiled. They live here, apart from the modules that raise
them, so that any module can raise any of them without importing another
module's machinery (and without import cycles).
"""


class ConfigError(ValueError):
  """An invalid configuration; the message names the field and the fix."""


class DataError(ValueError):
  """The data source is missing, empty, or unusable; says what to change."""


class CheckpointError(RuntimeError):
  """No usable checkpoint where one was required; says what to change."""
