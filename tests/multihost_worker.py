"""Runs lmx training on several CPU devices for tests/test_sharding.py.

The device count must be fixed before JAX starts, so the tests run this in
subprocesses with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``:

    python tests/multihost_worker.py meshes --cache_dir=C --root=R --out=O
        one process, 8 devices: five steps under each mesh of MESHES, and a
        run stopped by SIGTERM after step 3 under (2, 2, 2) and resumed under
        (1, 4, 2); losses and the sharding of a trained parameter to O (JSON).
    python tests/multihost_worker.py multihost --cache_dir=C --root=R \
        --out=O --coordinator=127.0.0.1:PORT --num_processes=2 --process_id=I
        one of two processes (4 devices each): a run that process 1 stops
        with SIGTERM after its third step (both must stop and save there),
        then resumed to the end; losses and what each process saw to O.
"""

import argparse
import json
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MESHES = ((8, 1, 1), (2, 2, 2), (1, 4, 2))
STEPS = 5
PROBE = ('blocks', 0, 'mlp', 'up', 'kernel')  # [embed=32, mlp=64]


def make_config(cache_dir: str, mesh=(-1, 1, 1), steps: int = STEPS):
  """A tiny rope model whose dimensions all mesh axes here divide."""
  from configs import base  # pylint: disable=g-import-not-at-top
  c = base.get_config('size=tiny')
  c.data.cache_dir = cache_dir
  c.model.position = 'rope'
  c.model.d_model, c.model.num_heads, c.model.mlp_dim = 32, 4, 64
  c.model.num_layers = 1
  c.train.batch_size = 8
  c.train.seq_len = 16
  c.train.steps = steps
  c.train.warmup_steps = 1
  c.train.log_every = 1
  c.train.checkpoint_every = 100
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
  return c


def losses(workdir: str) -> list[float]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line)['loss'] for line in f]


def _watch_params(seen: dict):
  """Records the sharding of PROBE as the trained state comes out."""
  from lmx.training import trainer  # pylint: disable=g-import-not-at-top
  original = trainer.make_train_step

  def make(*args, **kwargs):
    step = original(*args, **kwargs)

    def wrapped(state, batch):
      state, metrics = step(state, batch)
      leaf = state['params']
      for k in PROBE:
        leaf = leaf[k]
      seen['spec'] = str(leaf.sharding.spec)
      seen['shape'] = list(leaf.shape)
      seen['shard_shape'] = list(leaf.addressable_shards[0].data.shape)
      return state, metrics
    return wrapped
  trainer.make_train_step = make


def _stop_at_step_3(out: dict, process: int = 0):
  """Process ``process`` sends itself SIGTERM while the loop takes the
  batch of step 2 (once), so the run stops and saves after step 3. (The
  batches themselves are built ahead, in the prefetching thread.)"""
  import jax  # pylint: disable=g-import-not-at-top
  from lmx.training import trainer  # pylint: disable=g-import-not-at-top
  from lmx.data import prefetch  # pylint: disable=g-import-not-at-top
  original = trainer.make_batch_fn
  original_get = prefetch.Prefetch.get

  def make_batch_fn(config, rows=None, tok=None):
    out['rows'] = None if rows is None else [int(r) for r in rows]
    return original(config, rows, tok)

  def get(self, step):
    if (out.get('arm') and step == 2 and jax.process_index() == process
        and not out.get('signalled')):
      out['signalled'] = True
      os.kill(os.getpid(), signal.SIGTERM)
    return original_get(self, step)
  trainer.make_batch_fn = make_batch_fn
  prefetch.Prefetch.get = get


def run_meshes(args) -> dict:
  from lmx.training import checkpoint  # pylint: disable=g-import-not-at-top
  from lmx.training import trainer
  out = {'meshes': {}}
  seen = {}
  _watch_params(seen)
  _stop_at_step_3(out)
  for mesh in MESHES:
    name = 'x'.join(map(str, mesh))
    workdir = os.path.join(args.root, name)
    trainer.train(make_config(args.cache_dir, mesh), workdir, progress=False)
    out['meshes'][name] = {'losses': losses(workdir), **seen}
  # Stopped and saved under (2, 2, 2) after 3 steps, resumed under (1, 4, 2).
  workdir = os.path.join(args.root, 'resumed')
  out['arm'] = True
  try:
    trainer.train(make_config(args.cache_dir, (2, 2, 2)), workdir,
                  progress=False)
  except trainer.TrainingInterrupted as e:
    out['stopped_at'] = e.step
  out['steps_saved'] = checkpoint.all_steps(workdir)
  trainer.train(make_config(args.cache_dir, (1, 4, 2)), workdir,
                progress=False)
  out['resumed'] = {'losses': losses(workdir), **seen}
  return out


def run_multihost(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from lmx import sharding  # pylint: disable=g-import-not-at-top
  from lmx.training import checkpoint
  from lmx.training import trainer
  assert sharding.initialize(args.coordinator, args.num_processes,
                             args.process_id)
  out = {'process_index': jax.process_index(),
         'process_count': jax.process_count(),
         'devices': jax.device_count(),
         'local_devices': jax.local_device_count()}
  # Process 1 alone is asked to stop while building the batch of step 2, so
  # the step that finishes then (3) is where both must stop and save.
  out['arm'] = True
  _stop_at_step_3(out, process=1)
  seen = {}
  _watch_params(seen)
  workdir = args.root
  config = make_config(args.cache_dir, (-1, 2, 2))
  try:
    trainer.train(config, workdir, progress=False)
    out['stopped_at'] = None
  except trainer.TrainingInterrupted as e:
    out['stopped_at'] = e.step
  out['steps_saved'] = checkpoint.all_steps(workdir)
  trainer.train(config, workdir, progress=False)
  out['steps_final'] = checkpoint.all_steps(workdir)
  out.update(seen)
  if jax.process_index() == 0:
    out['losses'] = losses(workdir)
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('mode', choices=('meshes', 'multihost'))
  parser.add_argument('--cache_dir', required=True)
  parser.add_argument('--root', required=True)
  parser.add_argument('--out', required=True)
  parser.add_argument('--coordinator')
  parser.add_argument('--num_processes', type=int)
  parser.add_argument('--process_id', type=int)
  args = parser.parse_args()
  result = (run_meshes if args.mode == 'meshes' else run_multihost)(args)
  with open(args.out, 'w') as f:
    json.dump(result, f)


if __name__ == '__main__':
  main()
