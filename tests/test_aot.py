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
from lmx import flops
from lmx import memory
from lmx.model import attention
from lmx.model import ops
from lmx.training import run_state
from lmx.training import trainer
from lmx.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_libtpu = pytest.mark.skipif(
    aot.tpu_available() is not None, reason='libtpu is not installed')


def _bench(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'bench', 'aot.py'),
                         *args], capture_output=True, text=True, cwd=ROOT,
                        timeout=300)


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
    assert lo < memory.param_count(c) < hi, name


@needs_libtpu
def test_a_tpu_train_step_compiles_without_the_cpu_workarounds(tiny_config):
  """The compiled TPU program has no trace of lmx.model.xla_cpu (its products and
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
       'chips': 4, 'params': memory.param_count(config), 'seq_len': 128,
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


def test_report_of_a_compiled_step_takes_the_accelerators_dense_limit():
  # A step's figures, as a compile on the slice would give them: report()
  # needs no TPU. Its roofline takes the hardware FLOPs at the dense-key
  # limit of an accelerator (min of the two thresholds), not of this CPU.
  config = aot.make_config('125m', seq_len=128, batch=4,
                           mesh={'data': 2, 'fsdp': 2})
  config.model.chunk_threshold = 4096
  config.model.accelerator_chunk_threshold = 64
  c = aot.Compiled('train', 1.0, argument_bytes=10**9, output_bytes=10**9,
                   alias_bytes=10**9, temp_bytes=2 * 10**9, flops=1e12,
                   bytes_accessed=1e9)
  r = aot.report(config, 'v5e:2x2', 4, [c], preset='125m')
  row = r['rows'][0]
  per_token = flops.hardware_flops_per_token(config.model, 128, 64)
  assert per_token != flops.hardware_flops_per_token(config.model, 128, 4096)
  want = aot.roofline(c, aot.chip_of('v5e:2x2'), flops=per_token * 4 * 128 / 4)
  assert row['roofline_ms'] == pytest.approx(want['step_s'] * 1e3)
  assert '| train |' in aot.format_report(r)


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


# ------------------------------------------------------------------ GPUs

needs_gpu_compiler = pytest.mark.skipif(
    aot.gpu_available() is not None,
    reason='the CUDA plugin of JAX (the [gpu] extra) is not installed')


def test_an_unknown_gpu_lists_the_known_ones():
  r = _bench('--topology=h800')
  assert r.returncode == 2, r.stderr
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and 'Traceback' not in r.stderr, r.stderr
  assert "Unknown topology 'h800'" in lines[0]
  for name in ('h100', 'h100:8', 'a100', 'h200', 'b200', 'v5e:4x4'):
    assert name in lines[0]


def test_a_bad_flag_is_one_line_and_exit_2():
  r = _bench('--seq_len=abc')
  assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and '--seq_len=abc' in lines[0], r.stderr


def test_an_unknown_recipe_lists_the_known_ones():
  with pytest.raises(ConfigError, match='alibi_wt103, fire_c4, gpt'):
    aot.recipe_config('alibi', mesh={'data': 1})


@pytest.mark.skipif(aot.gpu_available() is None,
                    reason='the [gpu] extra is installed here')
def test_without_the_gpu_extra_the_command_says_how_to_install_it():
  r = _bench('--topology=h100')
  assert r.returncode == 2 and 'Traceback' not in r.stderr
  assert 'CUDA plugin' in r.stderr and 'lmx[gpu]' in r.stderr


def test_the_gpu_description_carries_the_published_figures():
  from lmx import gpus  # pylint: disable=g-import-not-at-top
  text = gpus.target_config(gpus.GPUS['h100'])
  assert 'core_count: 132' in text and 'major: 9' in text
  assert f'device_memory_size: {int(80e9)}' in text
  assert 'feature_extension: ACCELERATED_FEATURES' in text
  a100 = gpus.target_config(gpus.GPUS['a100'])
  assert 'core_count: 108' in a100 and 'feature_extension: NONE' in a100
  assert gpus.parse('h100:8') == (gpus.GPUS['h100'], 8)
  assert aot.chip_of('b200:8').peak_flops == gpus.GPUS['b200'].peak_flops


def test_fused_kernels_are_found_in_compiled_text():
  text = ('%a = custom-call(), custom_call_target="__cudnn$fmhaSoftmax"\n'
          '%b = custom-call(), custom_call_target="__gpu$xla.gpu.triton"\n'
          '%c = custom-call(), custom_call_target="__gpu$xla.gpu.triton"\n')
  found = aot.fused_kernels(text)
  assert found['cuDNN fMHA'] == 1 and found['Triton (Pallas)'] == 2
  assert found['Mosaic GPU'] == 0 and found['Mosaic TPU'] == 0


def test_the_backend_of_each_traced_attention_call_is_recorded(tiny_config):
  """On this CPU, auto is dense at 16 tokens and says why not cudnn;
  chunked is taken as asked; flash, which the interpreter runs here, is
  recorded as flash."""
  for asked, want in [('auto', 'dense'), ('chunked', 'chunked')]:
    c = tiny_config('alibi', **{'model.attention': asked})
    graphdef, params = run_state.abstract_model(c)
    tokens = jax.ShapeDtypeStruct((2, c.train.seq_len), jnp.int32)
    with attention.recording() as calls:
      jax.eval_shape(run_state.apply_fn(graphdef), params, tokens, tokens)
    assert [b for b, _ in calls] == [want] * c.model.num_layers, asked
    if asked == 'auto':
      assert 'cudnn: the platform is cpu' in calls[0][1]
    else:
      assert calls[0][1] == ''
  summary = aot.backend_summary([('chunked', 'x'), ('chunked', 'x'),
                                 ('dense', '')])
  assert summary == 'chunked x 2 (x); dense x 1'


@needs_gpu_compiler
def test_a_tiny_step_compiles_for_an_h100(tiny_config):
  """The train step compiled for one abstract H100: positive temporaries,
  the backend traced (not cudnn: the process runs JAX on the CPU), and no
  cuDNN attention in the compiled program, which the search would find:
  a cudnn attention compiled the same way is found."""
  devices = aot.topology_devices('h100')
  assert len(devices) == 1 and devices[0].platform == 'gpu'
  c = tiny_config('alibi', **{'model.dtype': 'bfloat16'})
  c.mesh.data = 1
  compiled = aot.compile_train_step(c, aot.mesh_over(devices, c))
  assert compiled.temp_bytes > 0 and compiled.argument_bytes > 0
  assert [b for b, _ in compiled.backends] == ['dense'] * c.model.num_layers
  assert compiled.kernels['cuDNN fMHA'] == 0
  assert 'xla_cpu.py' not in compiled.text
  r = aot.report(c, 'h100', 1, [compiled])
  assert r['unit'] == 'GPU' and r['rows'][0]['fits']
  table = aot.format_report(r)
  assert 'TFLOP/GPU' in table and 'train: dense x 2' in table

  # As on an attached H100: auto takes cudnn, and cuDNN's fused attention
  # is in the compiled program (forward and backward).
  attached = aot.compile_train_step(c, aot.mesh_over(devices, c),
                                    as_attached=True)
  assert [b for b, _ in attached.backends] == ['cudnn'] * c.model.num_layers
  assert attached.kernels['cuDNN fMHA'] >= 2
  assert jax.default_backend() == 'cpu'  # restored

  mesh = jax.sharding.Mesh(devices, ('x',))
  q = jax.ShapeDtypeStruct((2, 256, 4, 64), jnp.bfloat16,
                           sharding=jax.sharding.NamedSharding(
                               mesh, jax.sharding.PartitionSpec()))
  fused = jax.jit(lambda q: jax.nn.dot_product_attention(
      q, q, q, is_causal=True, implementation='cudnn')).lower(q).compile()
  assert aot.fused_kernels(fused.as_text())['cuDNN fMHA'] >= 1


@needs_gpu_compiler
def test_eight_gpus_of_one_host_and_the_command():
  assert len(aot.topology_devices('h100:8')) == 8
  r = _bench('--topology=a100:8', '--preset=125m', '--depths=1',
             '--seq_len=128', '--batch=8', '--scan_layers', '--steps=train')
  assert r.returncode == 0, r.stderr[-2000:]
  assert 'on a100:8 (8 x NVIDIA A100-SXM4-80GB), mesh data 8' in r.stdout
  assert '| train |' in r.stdout and 'attention per step: train:' in r.stdout


@needs_gpu_compiler
def test_a_step_too_large_for_the_gpu_is_refused_with_the_settings():
  """XLA's GPU compiler compiles it (it does not check the device's
  memory); the report does, exits 1 and names the settings that lower it."""
  r = _bench('--topology=h100', '--preset=125m', '--depths=1',
             '--seq_len=2048', '--batch=256', '--scan_layers',
             '--steps=train')
  assert r.returncode == 1, r.stderr[-2000:]
  assert '| NO (' in r.stdout
  assert 'GB per GPU' in r.stdout and 'than the 80 GB of a NVIDIA H100' \
      in r.stdout
  for knob in ('--remat=full', '--attention=cudnn', '--loss_chunk=512',
               '--microbatches'):
    assert knob in r.stdout
