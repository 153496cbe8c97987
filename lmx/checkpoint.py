"""The one module that talks to orbax.

A checkpoint holds the train state (``step``, ``params``, ``opt_state``) as
one orbax StandardSave item; the run's config is written beside the
checkpoints as ``<workdir>/config.json``. Restores are into an abstract
target (shapes and dtypes), so nothing has to be initialised twice.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import ml_collections
import orbax.checkpoint as ocp

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'


class CheckpointError(RuntimeError):
  """No usable checkpoint where one was required; says what to change."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def manager(workdir: str, keep: int = 3) -> ocp.CheckpointManager:
  """An async manager keeping the newest ``keep`` checkpoints; the trainer
  decides when to save."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: Any,
         force: bool = False) -> bool:
  return mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state)), force=force)


def restore(mngr: ocp.CheckpointManager, abstract_state: Any,
            step: Optional[int] = None) -> Any:
  step = mngr.latest_step() if step is None else step
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state)))
  return restored['state']


def all_steps(workdir: str) -> list[int]:
  """The finished checkpoint steps in ``workdir``, oldest first."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    return []
  with ocp.CheckpointManager(checkpoint_dir(workdir)) as mngr:
    return sorted(mngr.all_steps())


def latest_step(workdir: str) -> Optional[int]:
  """The newest finished checkpoint step in ``workdir``, or None."""
  steps = all_steps(workdir)
  return steps[-1] if steps else None


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(config.to_json(indent=2, sort_keys=True))
  os.replace(tmp, path)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config saved by train.py in ``workdir``."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise CheckpointError(
        f'{path} does not exist: --workdir must be a directory written by '
        'train.py (it holds config.json and checkpoints/).')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def require_checkpoint(workdir: str, step: Optional[int] = None) -> int:
  """The requested (default: latest) step, or a CheckpointError saying how
  to get one."""
  steps = all_steps(workdir)
  if not steps:
    raise CheckpointError(
        f'No checkpoint in {checkpoint_dir(workdir)}. Train first: '
        f'python train.py --config=<config> --workdir={workdir}')
  if step is None:
    return steps[-1]
  if step not in steps:
    raise CheckpointError(
        f'No checkpoint at step {step} in {checkpoint_dir(workdir)}; '
        f'available steps: {", ".join(map(str, steps))}.')
  return step


def abstract(tree: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
