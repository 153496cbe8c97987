"""Sharding and multi-host: meshes and processes give the losses of one
device; checkpoints move between meshes; bad meshes are clear ConfigErrors.

The device count is fixed when JAX starts, so the runs on 8 CPU devices and
the two 4-device processes run tests/multihost_worker.py in subprocesses
(started together, once per module).
"""

import json
import os
import re
import socket
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType, PartitionSpec as P

import multihost_worker as worker
from lmx.training import run_state
from lmx.config import validate as config_lib
from lmx import sharding
from lmx.training import trainer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TIMEOUT = 300


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start(args, devices: int, log: str):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT,
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  env.pop('LMX_COORDINATOR', None)
  return subprocess.Popen(
      [sys.executable, os.path.join(HERE, 'multihost_worker.py'), *args],
      cwd=ROOT, env=env, stdout=open(log, 'w'), stderr=subprocess.STDOUT)


def _finish(proc, log: str, out: str) -> dict:
  try:
    rc = proc.wait(timeout=TIMEOUT)
  except subprocess.TimeoutExpired:
    proc.kill()
    rc = 'timeout'
  if rc != 0:
    with open(log) as f:
      tail = ''.join(l for l in f if 'Gloo' not in l)[-4000:]
    pytest.fail(f'{log}: exit {rc}\n{tail}')
  with open(out) as f:
    return json.load(f)


@pytest.fixture(scope='module')
def runs(tmp_path_factory, cache_dir):
  """Starts the 8-device run and the two processes at once, then the
  one-device reference in this process, and collects all of them."""
  # The corpus cache is built (once) before the workers read it.
  trainer.make_batch_fn(worker.make_config(cache_dir))(0)
  root = tmp_path_factory.mktemp('sharding')
  port = _free_port()
  meshes_out = str(root / 'meshes.json')
  procs = [(_start(['meshes', f'--cache_dir={cache_dir}',
                    f'--root={root / "meshes"}', f'--out={meshes_out}'],
                   8, str(root / 'meshes.log')),
            str(root / 'meshes.log'), meshes_out)]
  for i in range(2):
    out = str(root / f'process{i}.json')
    procs.append((_start(
        ['multihost', f'--cache_dir={cache_dir}', f'--root={root / "mh"}',
         f'--out={out}', f'--coordinator=127.0.0.1:{port}',
         '--num_processes=2', f'--process_id={i}'], 4,
        str(root / f'process{i}.log')), str(root / f'process{i}.log'), out))
  try:
    reference = root / 'one_device'
    trainer.train(worker.make_config(cache_dir), str(reference),
                  progress=False)
    results = [_finish(*p) for p in procs]
  finally:
    for proc, _, _ in procs:
      if proc.poll() is None:
        proc.kill()
  logs = []
  for i in range(2):
    with open(root / f'process{i}.log') as f:
      logs.append(f.read())
  return {'one_device': worker.losses(str(reference)),
          'meshes': results[0], 'processes': results[1:],
          'process_logs': logs}


# ------------------------------------------------------- rules, no devices


MESH = AbstractMesh((2, 2, 2), sharding.MESH_AXES,
                    axis_types=(AxisType.Auto,) * 3)


def _spec(path, shape):
  return sharding.logical_to_spec(
      sharding.logical_axes(path, len(shape)), shape, MESH)


def test_parameters_get_logical_axes_by_path():
  assert _spec('blocks/0/attn/qkv/kernel', (32, 96)) == P('fsdp', 'tensor')
  assert _spec('blocks/1/attn/out/kernel', (32, 32)) == P('tensor', 'fsdp')
  assert (_spec('blocks/1/attn/out_gate/kernel', (32, 32))   # the gate
          == P('fsdp', 'tensor'))
  assert _spec('blocks/0/mlp/up/kernel', (32, 64)) == P('fsdp', 'tensor')
  assert _spec('blocks/0/mlp/down/kernel', (64, 32)) == P('tensor', 'fsdp')
  assert _spec('blocks/0/mlp/up/bias', (64,)) == P('tensor')
  assert _spec('embed/embedding', (256, 32)) == P('tensor', 'fsdp')
  assert _spec('blocks/0/attn_norm/scale', (32,)) == P()
  # The optimizer's moments follow their parameter; counters are replicated.
  assert (_spec('opt_state/1/0/mu/blocks/0/mlp/up/kernel', (32, 64))
          == P('fsdp', 'tensor'))
  assert _spec('opt_state/1/0/count', ()) == P()


def test_indivisible_and_position_parameters_are_replicated():
  # 257 bytes + EOD do not split in two: the vocabulary axis is replicated.
  assert _spec('head/kernel', (32, 257)) == P('fsdp')
  assert _spec('embed/embedding', (257, 31)) == P()  # neither splits in two
  for path, shape in [('blocks/0/attn/position/table', (32, 2)),
                      ('position/table', (2048, 32)),
                      ('blocks/0/attn/position/scale', (2,)),
                      ('opt_state/1/0/nu/position/table', (2048, 32))]:
    assert _spec(path, shape) == P(), path
  # A mesh axis of size 1 shards nothing.
  one = AbstractMesh((8, 1, 1), sharding.MESH_AXES,
                     axis_types=(AxisType.Auto,) * 3)
  assert sharding.logical_to_spec(('embed', 'mlp'), (32, 64), one) == P()


def test_local_rows_split_the_batch_between_processes():
  mesh = sharding.make_mesh(worker.make_config('unused', (1, 1, 1)))
  rows = sharding.local_rows(sharding.batch_sharding(mesh), 8)
  assert rows.tolist() == list(range(8))  # one process holds every row


# ------------------------------------------------------------- bad input


def _bad(cache_dir, **mesh):
  c = worker.make_config(cache_dir)
  c.mesh = ml_collections.ConfigDict(dict(c.mesh.to_dict(), **mesh))
  return c


@pytest.mark.parametrize('mesh, words', [
    ({'data': 0}, ['config.mesh.data=0', 'positive', '-1']),
    ({'fsdp': -2}, ['config.mesh.fsdp=-2', 'positive']),
    ({'tensor': 1.5}, ['config.mesh.tensor=1.5']),
    ({'data': -1, 'fsdp': -1}, ['more than one axis', 'data, fsdp']),
    ({'data': 3, 'fsdp': 1}, ['batch_size=8', 'data x fsdp = 3 x 1 = 3',
                              'multiple of 3']),
])
def test_invalid_mesh_values_are_config_errors(cache_dir, mesh, words):
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(_bad(cache_dir, **mesh))
  for w in words:
    assert w in str(e.value)


def test_mesh_that_does_not_fit_the_devices(cache_dir):
  c = _bad(cache_dir, data=2, fsdp=2, tensor=1)
  config_lib.validate(c)  # fine without devices
  with pytest.raises(config_lib.ConfigError) as e:
    sharding.resolve(c, device_count=8)
  msg = str(e.value)
  assert 'needs 4 devices, but there are 8 devices' in msg
  assert '--config.mesh.data=8' in msg and '-1' in msg
  with pytest.raises(config_lib.ConfigError, match='does not divide the 8'):
    sharding.resolve(_bad(cache_dir, data=-1, fsdp=3), device_count=8)
  # -1 resolves, then the batch must split over data x fsdp.
  assert sharding.resolve(_bad(cache_dir, data=-1, fsdp=2),
                          device_count=8) == {'data': 4, 'fsdp': 2,
                                              'tensor': 1}
  with pytest.raises(config_lib.ConfigError, match='data x fsdp = 16 x 1'):
    sharding.resolve(_bad(cache_dir, data=-1), device_count=16)


def test_train_refuses_a_mesh_before_writing_anything(cache_dir, tmp_path):
  workdir = tmp_path / 'run'
  with pytest.raises(config_lib.ConfigError) as e:
    trainer.train(_bad(cache_dir, data=2), str(workdir), progress=False)
  assert f'there are {jax.device_count()} device' in str(e.value)
  assert not workdir.exists()


# ---------------------------------------------------- the sharded runs


def test_one_device_is_the_unsharded_step(runs, cache_dir):
  """trainer.train on one device gives exactly the losses of the plain
  jitted step without shardings (the code path before meshes)."""
  c = worker.make_config(cache_dir)
  tx = run_state.make_optimizer(c.train)
  graphdef, params = run_state.init_model(c)
  state = run_state.init_state(c, params, tx)
  step_fn = trainer.make_train_step(graphdef, tx, c)
  batch_fn = trainer.make_batch_fn(c)
  plain = []
  for step in range(c.train.steps):
    state, m = step_fn(state, dict(batch_fn(step)))
    plain.append(float(m['loss']))
  assert runs['one_device'] == plain


@pytest.mark.parametrize('mesh', ['8x1x1', '2x2x2', '1x4x2'])
def test_meshes_give_the_losses_of_one_device(runs, mesh):
  got = runs['meshes']['meshes'][mesh]['losses']
  assert len(got) == worker.STEPS
  np.testing.assert_allclose(got, runs['one_device'], rtol=1e-5, atol=1e-5)


def test_parameters_are_really_sharded(runs):
  for mesh, rows in [('2x2x2', [16, 32]), ('1x4x2', [8, 32])]:
    seen = runs['meshes']['meshes'][mesh]
    assert seen['spec'] == "P('fsdp', 'tensor')", mesh
    assert seen['shape'] == [32, 64] and seen['shard_shape'] == rows, mesh


def test_checkpoint_restores_under_another_mesh(runs):
  """Stopped after step 3 under (2, 2, 2), resumed under (1, 4, 2): the
  same losses as one device without a break."""
  r = runs['meshes']
  assert r['stopped_at'] == 3 and r['steps_saved'] == [3]
  assert r['resumed']['shard_shape'] == [8, 32]  # on the new mesh
  np.testing.assert_allclose(r['resumed']['losses'], runs['one_device'],
                             rtol=1e-5, atol=1e-5)


def test_two_processes_give_the_losses_of_one(runs):
  p0, p1 = runs['processes']
  for p in (p0, p1):
    assert (p['process_count'], p['devices'], p['local_devices']) == (2, 8, 4)
    assert p['spec'] == "P('fsdp', 'tensor')"
  # Each process built only its own half of every batch.
  assert sorted(p0['rows'] + p1['rows']) == list(range(8))
  assert not set(p0['rows']) & set(p1['rows'])
  np.testing.assert_allclose(p0['losses'], runs['one_device'], rtol=1e-5,
                             atol=1e-5)


def test_a_signal_to_one_process_stops_both_at_the_same_step(runs):
  p0, p1 = runs['processes']
  assert p1.get('signalled') and not p0.get('signalled')
  for p in (p0, p1):
    assert p['stopped_at'] == 3
    assert p['steps_saved'] == [3]     # saved by both, sealed by process 0
    assert p['steps_final'] == [3, 5]  # and resumed by both


def test_only_the_primary_process_prints_log_lines(runs):
  line = re.compile(r'^step +\d+/\d+ loss ', re.M)
  first, second = runs['process_logs']
  assert line.search(first) and not line.search(second)
