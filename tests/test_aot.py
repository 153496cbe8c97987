"""Ahead-of-time compilation for TPU slices (lmx.aot, bench/aot.py).

The arithmetic and the bad-input messages are tested everywhere; the
compilations need libtpu (the ``[tpu]`` extra) and are skipped without it.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from lmx import aot
from lmx import ops
from lmx import run_state
from lmx import trainer
from lmx.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_libtpu = pytest.mark.skipif(
    aot.tpu_available() is not None, reason='libtpu is not installed')


def _bench(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'bench', 'aot.py'),
                         *args], capture_output=True, text=True, cwd=ROOT,
                        timeout=300)


def test_model_flops_per_token_by_hand(tiny_config):
  m = tiny_config('alibi').model
  m.d_model, m.num_layers, m.mlp_dim, m.vocab_size = 2, 1, 4, 3
  # Per layer 4 d^2 + 2 d f = 16 + 16 = 32 weights, the head d V = 6:
  # 6 x 38 = 228; attention 6 x L x T x d = 6 x 1 x 5 x 2 = 60.
  assert aot.model_flops_per_token(m, seq_len=5) == 288


def test_the_roofline_takes_the_slower_of_compute_and_memory():
  chip = aot.CHIPS['v5e']
  c = aot.Compiled('train', 0.0, 0, 0, 0, 0, flops=197e12,
                   bytes_accessed=819e9 / 2)
  r = aot.roofline(c, chip)
  assert r['step_s'] == pytest.approx(1.0) and r['bound'] == 'compute'
  c.bytes_accessed = 819e9 * 3
  assert aot.roofline(c, chip)['step_s'] == pytest.approx(3.0)
  assert aot.roofline(c, chip)['bound'] == 'memory'


def test_peak_bytes_count_donated_outputs_once():
  c = aot.Compiled('train', 0.0, argument_bytes=10, output_bytes=8,
                   alias_bytes=6, temp_bytes=5, flops=0, bytes_accessed=0)
  assert c.peak_bytes == 10 + 8 - 6 + 5


def test_advice_says_by_how_much_and_what_to_change():
  r = {'rows': [{'step': 'train', 'peak_gb': 19.5}],
       'remat': 'off', 'attention': 'auto', 'mesh': {'data': 4, 'fsdp': 4,
                                                      'tensor': 1},
       'chips': 16, 'global_batch': 64, 'chip': 'TPU v5e'}
  text = aot.advice(r, 16e9)
  assert '3.50 GB more than the 16 GB' in text
  for knob in ('--remat=full', '--attention=flash', 'fsdp', '--microbatches',
               'batch'):
    assert knob in text


def test_unknown_topology_and_preset_name_the_valid_ones():
  with pytest.raises(ConfigError, match='v5e:4x4'):
    aot.check_topology('v5e:3x3')
  with pytest.raises(ConfigError, match='125m, 350m, 1.3b, 7b'):
    aot.make_config('2b', seq_len=16, batch=1, mesh={'data': 1})
  r = _bench('--topology=v9:1x1')
  assert r.returncode == 2, r.stderr
  assert 'Unknown topology' in r.stderr and 'v5e:4x4' in r.stderr
  assert 'Traceback' not in r.stderr
  r = _bench('--mesh=4,4')
  assert r.returncode == 2 and 'three integers' in r.stderr


@pytest.mark.skipif(aot.tpu_available() is None,
                    reason='libtpu is installed here')
def test_without_libtpu_the_command_says_how_to_install_it():
  r = _bench('--topology=v5e:2x2', '--mesh=2,2,1')
  assert r.returncode == 2
  assert 'libtpu is not installed' in r.stderr and '[tpu]' in r.stderr


def test_the_presets_have_the_parameters_their_names_say():
  for name, lo, hi in [('125m', 110e6, 150e6), ('350m', 330e6, 400e6),
                       ('1.3b', 1.2e9, 1.45e9), ('7b', 6.3e9, 7.3e9)]:
    c = aot.make_config(name, seq_len=2048, batch=1, mesh={'data': 1})
    assert lo < aot.param_count(c) < hi, name


@needs_libtpu
def test_a_tpu_train_step_compiles_without_the_cpu_workarounds(tiny_config):
  """The compiled TPU program has no trace of lmx.xla_cpu (its products and
  their optimization barriers), while the same step compiled for this CPU
  does: the check could fail."""
  devices = aot.topology_devices('v5e:2x2')
  c = tiny_config('alibi', **{'model.dtype': 'bfloat16',
                              'train.batch_size': 4})
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 1
  mesh = aot.mesh_over(devices, c)
  compiled = aot.compile_train_step(c, mesh)
  assert compiled.argument_bytes > 0 and compiled.flops > 0
  assert 'xla_cpu.py' not in compiled.text
  barriers = [line for line in compiled.text.splitlines()
              if 'opt-barrier' in line]
  assert not any('xla_cpu' in line for line in barriers)

  tx = run_state.make_optimizer(c.train)
  c1 = c.copy_and_resolve_references()
  c1.mesh.data = c1.mesh.fsdp = 1
  graphdef, state = run_state.abstract_state(c1, tx)
  step = trainer.make_train_step(graphdef, tx, c1)
  tokens = jax.ShapeDtypeStruct((4, c.train.seq_len), jnp.int32)
  with ops.on_platform('cpu'):
    cpu_text = step.lower(state, {'inputs': tokens, 'targets': tokens,
                                  'positions': tokens}).compile().as_text()
  assert 'xla_cpu.py' in cpu_text


@needs_libtpu
def test_the_command_prints_a_table_per_run():
  r = _bench('--topology=v5e:2x2', '--mesh=2,2,1', '--preset=125m',
             '--depths=1', '--seq_len=128', '--batch=4', '--scan_layers')
  assert r.returncode == 0, r.stderr[-2000:]
  assert '| train |' in r.stdout and '| eval |' in r.stdout
  assert 'on v5e:2x2 (4 x TPU v5e)' in r.stdout


def test_a_step_the_compiler_refuses_is_reported_with_its_temporaries():
  e = RuntimeError('RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total '
                   'memory required for HLO temporaries (20.00G) exceeds '
                   'available HBM (15.75G).')
  c = aot._refused('train', e, 0.0)  # pylint: disable=protected-access
  assert c.temp_bytes == 20 * 2**30 and c.refused
  config = aot.make_config('125m', seq_len=128, batch=4,
                           mesh={'data': 2, 'fsdp': 2})
  r = {'preset': '125m', 'topology': 'v5e:2x2', 'chip': 'TPU v5e',
       'chips': 4, 'params': aot.param_count(config), 'seq_len': 128,
       'global_batch': 4, 'mesh': {'data': 2, 'fsdp': 2, 'tensor': 1},
       'attention': 'auto', 'remat': 'full', 'scan_layers': True,
       'loss_chunk': 0,
       'rows': [{'step': 'train', 'compile_s': 1.0, 'temp_gb': 21.47,
                 'peak_gb': 21.47, 'fits': False, 'margin': -0.34,
                 'refused': c.refused}]}
  table = aot.format_report(r)
  assert 'the compiler refused it' in table and '>= 21.47' in table
  advice = aot.advice(r, 16e9)
  assert '5.47 GB more' in advice and '--loss_chunk' in advice
  assert '--remat' not in advice  # already full
  with pytest.raises(ValueError):  # any other failure is not swallowed
    aot._refused('train', ValueError('something else'), 0.0)  # pylint: disable=protected-access


def test_the_mlp_activation_is_float32_on_cpu_only(tiny_config):
  """The CPU's float32 activation (bf16 elementwise arithmetic is emulated
  there) does not reach an accelerator, which keeps it in bfloat16."""
  c = tiny_config('alibi', **{'model.dtype': 'bfloat16'})
  graphdef, params = run_state.abstract_model(c)
  tokens = jnp.zeros((3, 5), jnp.int32)  # 15 rows: no parameter's shape
  f = c.model.mlp_dim
  shapes = (f'f32[3,5,{f}]', f'f32[15,{f}]')
  for platform, float32 in [('cpu', True), ('tpu', False)]:
    # A new function per platform: a traced function is not traced again.
    apply = run_state.apply_fn(graphdef)
    with ops.on_platform(platform):
      text = str(jax.make_jaxpr(apply)(params, tokens, tokens))
    assert any(s in text for s in shapes) == float32, platform


def test_hardware_flops_add_what_remat_and_tiles_recompute(tiny_config):
  m = tiny_config('alibi').model
  m.d_model, m.num_layers, m.mlp_dim, m.vocab_size = 2, 1, 4, 3
  m.attention, m.remat = 'dense', 'off'
  assert aot.hardware_flops_per_token(m, 5, dense_limit=512) == 288
  m.attention = 'chunked'  # tiles recompute the attention products: 60 -> 80
  assert aot.hardware_flops_per_token(m, 5, dense_limit=512) == 228 + 80
  m.remat = 'full'  # and the weight products: 228 -> 304
  assert aot.hardware_flops_per_token(m, 5, dense_limit=512) == 304 + 80
