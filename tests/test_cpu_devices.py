"""config.cpu_devices: the CPU as several XLA devices, set before JAX's
backend starts (lmx.model.xla_cpu.split_host); eval.py splits the heads over
them and gives the losses of one device, train.py trains data-parallel.

The device count is fixed when JAX starts, so the runs on 2 CPU devices are
eval.py and train.py in subprocesses; this process has started JAX already,
which is what the refusals are tested against."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from lmx.errors import ConfigError
from lmx.evaluation import runner as evaluation
from lmx.model import xla_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAG = xla_cpu.DEVICE_COUNT_FLAG


def test_split_host_refuses_what_it_cannot_do(monkeypatch):
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  cpus = len(jax.devices('cpu'))   # JAX has started in this process
  xla_cpu.split_host(0)            # 0: as JAX started; nothing to check
  xla_cpu.split_host(cpus)         # what it has already
  assert 'XLA_FLAGS' not in os.environ
  cores = len(os.sched_getaffinity(0))
  if cpus + 1 <= cores:
    with pytest.raises(ConfigError, match=r'already started with '
                       rf'{cpus} CPU device\(s\).*XLA_FLAGS={FLAG}={cpus + 1}'):
      xla_cpu.split_host(cpus + 1)
  # More devices than cores: refused, whatever JAX's state.
  with pytest.raises(ConfigError, match=rf'cpu_devices={cores + 1}, but this '
                     rf'process may use {cores} CPU\(s\): use at most {cores}'):
    xla_cpu.split_host(cores + 1)
  monkeypatch.setenv('XLA_FLAGS', f'{FLAG}=4')
  with pytest.raises(ConfigError, match=rf'XLA_FLAGS sets {FLAG}=4: drop '
                     'one of the two'):
    xla_cpu.split_host(2)


def test_split_host_sets_the_flag_before_jax_starts():
  # A fresh interpreter: JAX not started yet, the flag appended to what the
  # environment sets, and the backend then has the devices.
  n = len(os.sched_getaffinity(0))   # one device per core, the most
  code = ('import os; from lmx.model import xla_cpu; '
          f'xla_cpu.split_host({n}); print(os.environ["XLA_FLAGS"]); '
          'import jax; print(len(jax.devices("cpu")))')
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT,
             XLA_FLAGS='--xla_cpu_enable_fast_math=false')
  out = subprocess.run([sys.executable, '-c', code], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  flags, devices = out.stdout.strip().splitlines()[-2:]
  assert flags == f'--xla_cpu_enable_fast_math=false {FLAG}={n}'
  assert devices == str(n)


def test_prepare_host_adds_the_evaluation_flags_unless_named():
  code = ('import os, sys; from lmx.model import xla_cpu; '
          'xla_cpu.prepare_host(0, evaluation=sys.argv[1] == "eval"); '
          'print(os.environ.get("XLA_FLAGS", ""))')
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  env.pop('XLA_FLAGS', None)
  got = subprocess.run([sys.executable, '-c', code, 'eval'], env=env,
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert got.returncode == 0, got.stderr[-2000:]
  want = ' '.join(xla_cpu.default_flags())
  assert got.stdout.strip() == want
  with open('/proc/cpuinfo') as f:
    avx512 = any(line.startswith('flags') and ' avx512f' in line for line in f)
  assert (f'{xla_cpu.VECTOR_WIDTH_FLAG}=512' in want) == avx512
  # Training keeps XLA's defaults.
  got = subprocess.run([sys.executable, '-c', code, 'train'], env=env,
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert got.returncode == 0 and got.stdout.strip() == ''
  # A width XLA_FLAGS names already is the user's: left as it is.
  env['XLA_FLAGS'] = f'{xla_cpu.VECTOR_WIDTH_FLAG}=256'
  got = subprocess.run([sys.executable, '-c', code, 'eval'], env=env,
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert got.stdout.strip() == f'{xla_cpu.VECTOR_WIDTH_FLAG}=256'


def _run(args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, *args], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)


def test_eval_splits_heads_over_cpu_devices_with_one_devices_losses(
    tiny_rope_run, tmp_path):
  workdir, config = tiny_rope_run
  run = str(tmp_path / 'run')
  shutil.copytree(workdir, run)
  lengths = '16,64'
  one = evaluation.evaluate(config, run, [16, 64], str(tmp_path / 'one'),
                            plots=False, progress=False)
  out = str(tmp_path / 'two')
  proc = _run(['eval.py', f'--workdir={run}', f'--lengths={lengths}',
               f'--out={out}', '--config.cpu_devices=2',
               '--config.mesh.data=1', '--config.mesh.tensor=2'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(out, 'results.json')) as f:
    two = json.load(f)
  assert two['mesh'] == {'data': 1, 'fsdp': 1, 'tensor': 2}
  assert 'mesh' not in one
  got = {r['length']: r['loss'] for r in two['results']}
  want = {r['length']: r['loss'] for r in one['results']}
  assert sorted(got) == [16, 64]
  for n in got:   # the heads' sum over two devices: rounding apart
    np.testing.assert_allclose(got[n], want[n], rtol=1e-5)


def test_train_on_cpu_devices_is_data_parallel(tiny_config, tmp_path):
  c = tiny_config('rope')
  proc = _run(['train.py', '--config=configs/rope.py:size=tiny',
               f'--workdir={tmp_path / "run"}', '--config.train.steps=2',
               f'--config.data.cache_dir={c.data.cache_dir}',
               '--config.cpu_devices=2'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'on 2 devices (data=2, fsdp=1, tensor=1)' in proc.stdout
