"""Ahead-of-time compilation of the real train and evaluation steps for TPU
slices and NVIDIA GPUs that are not attached: memory per chip (per GPU),
FLOPs, a roofline, and the attention backend that was compiled.

XLA's TPU compiler (``libtpu``, the ``[tpu]`` extra) runs on a CPU host.
``jax.experimental.topologies.get_topology_desc`` gives abstract devices of
a named slice (``v5e:4x4`` is 16 v5e chips); ``jax.jit(step).lower(...)
.compile()`` on a mesh of them compiles the step exactly as a TPU job
would, and the compiled executable reports its per-chip memory
(``memory_analysis``) and cost (``cost_analysis``). Nothing is executed.

The steps are lmx's own: ``trainer.make_train_step`` (forward, backward,
AdamW, the encoding's projection) and the evaluation's per-token losses,
traced under ``ops.on_platform('tpu')`` so the products take the TPU path
and none of the CPU workarounds of ``lmx.model.xla_cpu`` reaches the TPU
program.

Chip figures are Google Cloud's published per-chip peaks (bf16 dense
FLOP/s, HBM capacity and bandwidth) from the system-architecture pages of
the Cloud TPU documentation (docs.cloud.google.com/tpu/docs/v5e, /v5p,
/v6e). The roofline step time is ``max(FLOPs / peak, bytes / bandwidth)``
per chip. The FLOPs are counted from the model
(``lmx.flops.hardware_flops_per_token``: ``6 N + 12 L T d`` per token as in
the PaLM paper's appendix, less the causal tiles a tiled backend skips, plus
what rematerialisation recomputes), because the compiler's
cost analysis counts a while loop's body once whatever its trip count,
and the scanned layers and the chunked backend are loops; its count is
shown beside. The bytes are the compiler's, so under loops the memory time
is a lower bound. The MFU bound is the model's FLOPs over ``chips x peak x
roofline time``: a real
step is slower (collectives, imperfect overlap), so the real MFU is lower.

GPUs go the same way through the CUDA plugin of ``jax[cuda12]`` (the
``[gpu]`` extra): ``get_topology_desc(platform='cuda', target_config=...,
topology='1x1x<n>')`` gives ``n`` abstract GPUs of one host, described to
the compiler by the ``GpuTargetConfigProto`` text that ``lmx.gpus`` writes
from NVIDIA's published figures, and the per-GPU peaks come from the same
place. The process must start JAX on the CPU (``JAX_PLATFORMS=cpu``; the
command sets it) and skip the plugin's check of the CUDA libraries against
an attached driver (``JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1``).

Which attention backend each traced layer took is recorded while the step
is traced (``lmx.model.attention``'s own choice, with its reason when ``auto`` or
``cudnn`` did not give cudnn), and the compiled program is searched for the
fused kernels it holds (cuDNN's ``__cudnn$fmha`` custom calls, Pallas's
Triton and Mosaic calls), so a fallback to the chunked backend shows in the
report instead of passing silently.

``libtpu`` holds a process lock at ``/tmp/libtpu_lockfile``; the command
sets ``ALLOW_MULTIPLE_LIBTPU_LOAD=1`` so several compilations (or tests)
may run at once on one host.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import os
import re
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lmx.model import attention
from lmx.config import defaults
from lmx.evaluation import runner as evaluation
from lmx import flops
from lmx import gpus
from lmx import memory
from lmx.model import ops
from lmx.training import run_state
from lmx import sharding
from lmx.training import trainer
from lmx.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  peak_flops: float      # dense bf16 FLOP/s
  hbm_bytes: float
  hbm_bandwidth: float   # bytes/s


# Cloud TPU documentation, system architecture of each generation (the
# peaks are lmx.flops's).
CHIPS = {
    'v5e': Chip('TPU v5e', flops.TPU_PEAKS['v5e'], 16e9, 819e9),
    'v5p': Chip('TPU v5p', flops.TPU_PEAKS['v5p'], 95e9, 2765e9),
    'v6e': Chip('TPU v6e', flops.TPU_PEAKS['v6e'], 32e9, 1638e9),
}

# NVIDIA GPUs: the figures and their sources are in lmx.gpus.
CHIPS.update({name: Chip(g.name, g.peak_flops, g.hbm_bytes, g.hbm_bandwidth)
              for name, g in gpus.GPUS.items()})

# Topology names this command compiles for (one device per chip): the
# generation, then the chip grid of the slice.
TPU_TOPOLOGIES = ('v5e:2x2', 'v5e:4x4', 'v5e:8x8', 'v5e:16x16',
              'v5p:2x2x1', 'v5p:2x2x2', 'v5p:4x4x4',
              'v6e:2x2', 'v6e:4x4', 'v6e:8x8', 'v6e:16x16')
# GPUs: one, or ':8' for one host of eight.
GPU_TOPOLOGIES = gpus.TOPOLOGIES
TOPOLOGIES = TPU_TOPOLOGIES + GPU_TOPOLOGIES

# Model presets: width, depth, heads, MLP width (4x), vocabulary. The
# parameter counts are printed with each table.
PRESETS = {
    '125m': dict(d_model=768, num_layers=12, num_heads=12, mlp_dim=3072),
    '350m': dict(d_model=1024, num_layers=24, num_heads=16, mlp_dim=4096),
    '1.3b': dict(d_model=2048, num_layers=24, num_heads=16, mlp_dim=8192),
    '7b': dict(d_model=4096, num_layers=32, num_heads=32, mlp_dim=16384),
}
DEFAULT_VOCAB = 32768


def chip_of(topology: str) -> Chip:
  return CHIPS[topology.split(':')[0]]


def is_gpu(topology: str) -> bool:
  return topology in GPU_TOPOLOGIES


def check_topology(topology: str) -> None:
  if topology not in TOPOLOGIES:
    raise ConfigError(
        f'Unknown topology {topology!r}. Valid topologies: TPU slices '
        f'{", ".join(TPU_TOPOLOGIES)}; GPUs {", ".join(GPU_TOPOLOGIES)}.')


def gpu_available() -> Optional[str]:
  """None if NVIDIA GPUs can be compiled for here, else why not."""
  try:
    import jax_cuda12_plugin  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return ('the CUDA plugin of JAX is not installed: pip install '
            '"lmx[gpu]" (jax[cuda12] pinned to the installed JAX) in its '
            'own environment.')
  return None


def available(topology: str) -> Optional[str]:
  """None if ``topology`` can be compiled for here, else why not."""
  return gpu_available() if is_gpu(topology) else tpu_available()


def tpu_available() -> Optional[str]:
  """None if TPU topologies can be compiled for here, else why not."""
  try:
    import libtpu  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return ('libtpu is not installed: pip install "lmx[tpu]" (jax[tpu] '
            'pinned to the installed JAX) in its own environment.')
  return None


def topology_devices(topology: str) -> list:
  """The abstract devices of a named slice or GPU host (nothing is
  attached)."""
  check_topology(topology)
  why = available(topology)
  if why:
    raise ConfigError(why)
  if is_gpu(topology):
    return gpu_devices(topology)
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  desc = topologies.get_topology_desc(
      platform='tpu', topology_name=topology, chip_config_name='default',
      chips_per_host_bounds=(2, 2, 1), num_slices=1)
  return list(desc.devices)


def gpu_devices(topology: str) -> list:
  """The abstract GPUs of ``topology`` (one host), described to XLA's GPU
  compiler by ``lmx.gpus.target_config``."""
  os.environ.setdefault('JAX_SKIP_CUDA_CONSTRAINTS_CHECK', '1')
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  gpu, count = gpus.parse(topology)
  desc = topologies.get_topology_desc(
      platform='cuda', target_config=gpus.target_config(gpu),
      topology=f'1x1x{count}')
  return list(desc.devices)


def make_config(preset: str, *, seq_len: int, batch: int, mesh: dict,
                overrides: Optional[dict] = None,
                vocab_size: int = DEFAULT_VOCAB) -> ml_collections.ConfigDict:
  """An lmx config of ``preset`` in bfloat16: ``batch`` sequences of
  ``seq_len`` tokens per step, on ``mesh`` (data, fsdp, tensor), with
  ``overrides`` (dotted field -> value) applied last."""
  if preset not in PRESETS:
    raise ConfigError(f'Unknown preset {preset!r}. Valid presets: '
                      f'{", ".join(PRESETS)}.')
  c = defaults.get_config()
  for k, v in PRESETS[preset].items():
    c.model[k] = v
  c.model.vocab_size = vocab_size
  c.model.dtype = 'bfloat16'
  c.train.seq_len, c.train.batch_size = seq_len, batch
  c.eval.batch_tokens = seq_len * batch
  for axis, n in mesh.items():
    c.mesh[axis] = n
  c.update_from_flattened_dict(overrides or {})
  return c


def recipes() -> list[str]:
  """The recipe names (``configs/recipes/<name>.py``)."""
  import configs.recipes  # pylint: disable=g-import-not-at-top
  folder = os.path.dirname(configs.recipes.__file__)
  return sorted(f[:-3] for f in os.listdir(folder)
                if f.endswith('.py') and f != '__init__.py')


def recipe_config(spec: str, *, mesh: dict,
                  overrides: Optional[dict] = None) -> ml_collections.ConfigDict:
  """The config of recipe ``spec`` (``name`` or ``name:arg``, as
  ``configs/recipes/<name>.py:<arg>``) on ``mesh``, with ``overrides``
  (dotted field -> value) applied last; the evaluation step scores one
  training batch."""
  import importlib  # pylint: disable=g-import-not-at-top
  name, _, arg = spec.partition(':')
  if name not in recipes():
    raise ConfigError(f'Unknown recipe {name!r}. Valid recipes: '
                      f'{", ".join(recipes())} (configs/recipes/).')
  module = importlib.import_module(f'configs.recipes.{name}')
  c = module.get_config(arg or None)
  for axis, n in mesh.items():
    c.mesh[axis] = n
  c.update_from_flattened_dict(overrides or {})
  c.eval.batch_tokens = int(c.train.seq_len) * int(c.train.batch_size)
  return c


def recipe_paper(spec: str) -> dict:
  """The paper's figures of recipe ``spec``: its parameters, tokens and
  the section they are from."""
  import importlib  # pylint: disable=g-import-not-at-top
  name, _, arg = spec.partition(':')
  module = importlib.import_module(f'configs.recipes.{name}')
  return dict(module.paper(arg or None), section=module.PAPER['section'])


def training_days(config, tokens: float, chips: int, chip: Chip,
                  mfu: float) -> float:
  """Days to train ``tokens`` tokens of ``config`` on ``chips`` chips at
  model FLOPs utilisation ``mfu`` (the model's FLOPs,
  ``flops.train_flops_per_token``, over the chips' peak)."""
  per_token = flops.train_flops_per_token(config.model,
                                          int(config.train.seq_len))
  return per_token * tokens / (chips * chip.peak_flops * mfu) / 86400


def mesh_over(devices: list, config) -> jax.sharding.Mesh:
  sizes = sharding.resolve(config, device_count=len(devices))
  shape = tuple(sizes[a] for a in sharding.MESH_AXES)
  return jax.sharding.Mesh(np.asarray(devices).reshape(shape),
                           sharding.MESH_AXES)


@dataclasses.dataclass
class Compiled:
  """One compiled step's figures, per chip."""
  what: str
  compile_s: float
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  flops: float
  bytes_accessed: float
  text: str = dataclasses.field(repr=False, default='')
  # The compiler's message when it refused the step for want of memory
  # (then only temp_bytes is known: the temporaries it asked for).
  refused: str = ''
  # The attention backend of each traced attention call, in order (with
  # why cudnn or flash was not taken, where asked for), and the fused
  # kernels found in the compiled program (name -> call sites).
  backends: list = dataclasses.field(default_factory=list)
  kernels: dict = dataclasses.field(default_factory=dict)

  @property
  def peak_bytes(self) -> int:
    """Live at once at the peak: arguments, outputs not aliased to
    (donated) arguments, and temporaries."""
    return (self.argument_bytes + self.output_bytes - self.alias_bytes
            + self.temp_bytes)


_OUT_OF_HBM = re.compile(
    r'HLO temporaries \(([0-9.]+)([KMGT])\) exceeds available HBM '
    r'\(([0-9.]+)([KMGT])\)')
_UNITS = {'K': 2**10, 'M': 2**20, 'G': 2**30, 'T': 2**40}


def _refused(what: str, error: Exception, started: float) -> Compiled:
  """A step the TPU compiler refused for want of memory: the temporaries
  it asked for (from its message), no cost figures."""
  found = _OUT_OF_HBM.search(str(error))
  if not found:
    raise error
  temp = float(found.group(1)) * _UNITS[found.group(2)]
  return Compiled(what=what, compile_s=time.perf_counter() - started,
                  argument_bytes=0, output_bytes=0, alias_bytes=0,
                  temp_bytes=int(temp), flops=float('nan'),
                  bytes_accessed=float('nan'),
                  refused=str(found.group(0)))


# Custom-call targets of fused kernels in a compiled program.
KERNEL_TARGETS = {
    'cuDNN fMHA': r'__cudnn\$fmha',
    'Triton (Pallas)': r'__gpu\$xla\.gpu\.triton',
    'Mosaic GPU': r'mosaic_gpu',
    'Mosaic TPU': r'tpu_custom_call',
}


def fused_kernels(text: str) -> dict[str, int]:
  """Call sites of each fused kernel in compiled HLO ``text`` (a kernel in
  a loop body counts once)."""
  return {name: len(re.findall(rf'custom_call_target="{pattern}', text))
          for name, pattern in KERNEL_TARGETS.items()}


@contextlib.contextmanager
def default_backend(platform: Optional[str]):
  """While tracing, ``jax.default_backend()`` answers ``platform`` (None:
  unchanged). ``lmx.model.attention.Cudnn.unavailable`` asks it whether a GPU is
  attached, and in a deviceless compile the answer is the CPU, so ``auto``
  never takes cudnn there; under ``default_backend('gpu')`` it chooses as
  on an attached GPU (XLA's GPU compiler compiles cuDNN's fused attention
  without a device)."""
  if platform is None:
    yield
    return
  original = jax.default_backend
  jax.default_backend = lambda: platform
  try:
    yield
  finally:
    jax.default_backend = original


def _analyse(what: str, lowered, started: float,
             backends: Optional[list] = None) -> Compiled:
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    out = _refused(what, e, started)
    out.backends = list(backends or [])
    return out
  seconds = time.perf_counter() - started
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0] if cost else {}
  # XLA's GPU compiler gives no cost analysis without a device (None):
  # then the compiler's FLOPs and bytes are unknown (nan), not zero.
  cost = cost if cost is not None else {'flops': math.nan,
                                        'bytes accessed': math.nan}
  text = compiled.as_text() or ''
  return Compiled(
      what=what, compile_s=seconds,
      argument_bytes=int(mem.argument_size_in_bytes),
      output_bytes=int(mem.output_size_in_bytes),
      alias_bytes=int(mem.alias_size_in_bytes),
      temp_bytes=int(mem.temp_size_in_bytes),
      flops=float(cost.get('flops', 0.0)),
      bytes_accessed=float(cost.get('bytes accessed', 0.0)),
      text=text, backends=list(backends or []),
      kernels=fused_kernels(text))


def _platform(mesh) -> str:
  return mesh.devices.flat[0].platform


def _struct(tree, shardings):
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      tree, shardings)


def compile_train_step(config, mesh, as_attached: bool = False) -> Compiled:
  """The train step of ``config`` compiled for ``mesh``'s devices;
  ``as_attached``: attention chooses as on an attached device of that
  platform (``default_backend``)."""
  tx = run_state.make_optimizer(config.train)
  started = time.perf_counter()
  with ops.on_platform(mesh.devices.flat[0].platform):
    graphdef, target = run_state.abstract_state(config, tx)
    state_shardings = sharding.tree_shardings(target, mesh)
    state = _struct(target, state_shardings)
    t = config.train
    rows = sharding.batch_sharding(mesh)
    tokens = jax.ShapeDtypeStruct((t.batch_size, t.seq_len), jnp.int32,
                                  sharding=rows)
    batch = {'inputs': tokens, 'targets': tokens, 'positions': tokens}
    step = trainer.make_train_step(graphdef, tx, config, mesh,
                                   state_shardings)
    with jax.set_mesh(mesh), attention.recording() as backends, \
        default_backend(_platform(mesh) if as_attached else None):
      lowered = step.lower(state, batch)
  return _analyse('train', lowered, started, backends)


def compile_eval_step(config, mesh, as_attached: bool = False) -> Compiled:
  """The evaluation's per-token losses at ``train.seq_len`` tokens (the
  batch of ``eval.batch_tokens``) compiled for ``mesh``'s devices;
  ``as_attached`` as in ``compile_train_step``."""
  started = time.perf_counter()
  with ops.on_platform(mesh.devices.flat[0].platform):
    graphdef, params = run_state.abstract_model(config)
    params = _struct(params, sharding.tree_shardings(params, mesh))
    t = config.train
    rows = max(1, int(config.eval.batch_tokens) // t.seq_len)
    tokens = jax.ShapeDtypeStruct((rows, t.seq_len), jnp.int32,
                                  sharding=sharding.batch_sharding(mesh))
    fn = evaluation.make_loss_fn(graphdef)
    with jax.set_mesh(mesh), attention.recording() as backends, \
        default_backend(_platform(mesh) if as_attached else None):
      lowered = fn.lower(params, tokens, tokens, tokens)
  return _analyse('eval', lowered, started, backends)


def roofline(c: Compiled, chip: Chip,
             flops: Optional[float] = None) -> dict[str, float]:
  """Step time bounds per chip. ``flops`` replaces the compiler's count,
  which takes a while loop's body once whatever its trip count (the scanned
  layers, the chunked backend's tiles), as do its bytes: under loops the
  memory time is a lower bound."""
  compute = (c.flops if flops is None else flops) / chip.peak_flops
  memory = c.bytes_accessed / chip.hbm_bandwidth
  if math.isnan(memory):  # no byte count (a GPU compiled deviceless)
    return {'compute_s': compute, 'memory_s': memory, 'step_s': compute,
            'bound': 'compute; bytes unknown'}
  return {'compute_s': compute, 'memory_s': memory,
          'step_s': max(compute, memory),
          'bound': 'compute' if compute >= memory else 'memory'}


def backend_summary(backends: list) -> str:
  """``[('chunked', why), ...]`` as ``'chunked x 12 (why)'``, each distinct
  backend and reason once, in the order first traced."""
  counts = collections.Counter(backends)
  return '; '.join(f'{b} x {n}' + (f' ({why})' if why else '')
                   for (b, why), n in counts.items()) or 'none traced'


def attention_line(r: dict[str, Any]) -> str:
  """What the report says about attention: the backend each traced
  attention call took, and the fused kernels in the compiled program,
  with a warning where a fused backend was chosen but is not there."""
  unit = r.get('unit', 'chip')
  scanned = r['scan_layers']
  parts = []
  for row in r['rows']:
    traced = row.get('backends', [])
    where = ('the scanned block, every layer' if scanned
             else f'{len(traced)} traced calls, {r["layers"]} layers')
    kernels = row.get('kernels', {})
    found = ', '.join(f'{k} {n}' for k, n in kernels.items()
                      if n or (unit == 'GPU' and k != 'Mosaic TPU')
                      or (unit == 'chip' and k == 'Mosaic TPU'))
    line = (f"{row['step']}: {backend_summary(traced)} [{where}]"
            + (f'; compiled fused kernels: {found}' if kernels else ''))
    chosen = {b for b, _ in traced}
    if 'cudnn' in chosen and not kernels.get('cuDNN fMHA'):
      line += '; WARNING: cudnn was chosen but no cuDNN fMHA was compiled'
    if 'flash' in chosen and kernels and not any(
        kernels.get(k) for k in ('Triton (Pallas)', 'Mosaic GPU',
                                 'Mosaic TPU')):
      line += '; WARNING: flash was chosen but no fused kernel was compiled'
    parts.append(line)
  return 'attention per step: ' + ' | '.join(parts)


def report(config, topology: str, device_count: int,
           results: list[Compiled], preset: str = '') -> dict[str, Any]:
  """The figures of one run (a preset on a topology of ``device_count``
  chips or GPUs), as a dict."""
  chip = chip_of(topology)
  chips = int(math.prod(sharding.resolve(
      config, device_count=device_count).values()))
  rows = []
  for c in results:
    if c.refused:
      rows.append({'step': c.what, 'compile_s': c.compile_s,
                   'temp_gb': c.temp_bytes / 1e9,
                   'peak_gb': c.temp_bytes / 1e9, 'fits': False,
                   'margin': 1 - c.temp_bytes / chip.hbm_bytes,
                   'refused': c.refused, 'backends': c.backends,
                   'kernels': c.kernels})
      continue
    t = config.train
    tokens = t.batch_size * t.seq_len
    # The accelerator's limit, as the step was traced for it.
    with ops.on_platform('gpu' if is_gpu(topology) else 'tpu'):
      limit = attention.dense_key_limit(attention.Spec(
          threshold=int(config.model.chunk_threshold),
          accelerator_threshold=int(config.model.accelerator_chunk_threshold)))
    per_token = flops.hardware_flops_per_token(config.model, t.seq_len, limit)
    if c.what != 'train':  # a forward pass
      per_token = flops.forward_flops_per_token(config.model, t.seq_len)
    hardware = per_token * tokens / chips
    roof = roofline(c, chip, flops=hardware)
    row = {'step': c.what, 'compile_s': c.compile_s,
           'argument_gb': c.argument_bytes / 1e9,
           'output_gb': c.output_bytes / 1e9,
           'alias_gb': c.alias_bytes / 1e9,
           'temp_gb': c.temp_bytes / 1e9, 'peak_gb': c.peak_bytes / 1e9,
           'fits': c.peak_bytes <= chip.hbm_bytes,
           'margin': 1 - c.peak_bytes / chip.hbm_bytes,
           'tflops_per_chip': hardware / 1e12,
           'compiler_tflops_per_chip': c.flops / 1e12,
           'gb_accessed_per_chip': c.bytes_accessed / 1e9,
           'roofline_ms': roof['step_s'] * 1e3, 'bound': roof['bound'],
           'backends': c.backends, 'kernels': c.kernels}
    if c.what == 'train':
      model = flops.train_flops_per_token(config.model, t.seq_len) * tokens
      row['mfu_bound'] = model / (chips * chip.peak_flops * roof['step_s'])
    rows.append(row)
  m = config.model
  return {'preset': preset, 'topology': topology, 'chip': chip.name,
          'unit': 'GPU' if is_gpu(topology) else 'chip',
          'platform': 'gpu' if is_gpu(topology) else 'tpu',
          'layers': int(m.num_layers), 'chips': chips,
          'params': memory.param_count(config),
          'seq_len': int(t.seq_len), 'global_batch': int(t.batch_size),
          'mesh': dict(sharding.resolve(config, device_count=chips)),
          'attention': str(m.attention), 'remat': str(m.remat),
          'scan_layers': bool(m.scan_layers),
          'loss_chunk': int(t.loss_chunk),
          'microbatches': int(t.microbatches), 'rows': rows}


def _figure(x: float) -> str:
  return 'n/a' if math.isnan(x) else f'{x:.1f}'


def format_report(r: dict[str, Any]) -> str:
  unit = r.get('unit', 'chip')
  mesh = ' x '.join(f'{a} {n}' for a, n in r['mesh'].items() if n > 1)
  head = (f"{r['preset'] or 'model'} ({r['params'] / 1e6:,.0f}M parameters)"
          f" on {r['topology']} ({r['chips']} x {r['chip']}), mesh "
          f"{mesh or 'one device'}; {r['global_batch']} x {r['seq_len']} "
          f"tokens; attention {r['attention']}, remat {r['remat']}, "
          f"scan_layers {r['scan_layers']}, loss_chunk {r['loss_chunk']}, "
          f"microbatches {r.get('microbatches', 1)}"
          + ('; attention chosen as on an attached device'
             if r.get('as_attached') else ''))
  lines = [head, '',
           '| step | compile s | args GB | out GB | temp GB | peak GB | fits '
           f'(margin) | TFLOP/{unit} | compiler TFLOP/{unit} | '
           f'GB moved/{unit} | roofline ms | MFU bound |',
           '|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|']
  for row in r['rows']:
    if row.get('refused'):
      lines.append(
          f"| {row['step']} | {row['compile_s']:.1f} | | | "
          f"{row['temp_gb']:.2f} | >= {row['peak_gb']:.2f} | NO "
          f"({row['margin']:+.0%}): the compiler refused it | | | | | |")
      continue
    fits = 'yes' if row['fits'] else 'NO'
    mfu = f"{row['mfu_bound']:.0%}" if 'mfu_bound' in row else ''
    lines.append(
        f"| {row['step']} | {row['compile_s']:.1f} | {row['argument_gb']:.2f}"
        f" | {row['output_gb']:.2f} | {row['temp_gb']:.2f} | "
        f"{row['peak_gb']:.2f} | {fits} ({row['margin']:+.0%}) | "
        f"{row['tflops_per_chip']:.1f} | "
        f"{_figure(row['compiler_tflops_per_chip'])} | "
        f"{_figure(row['gb_accessed_per_chip'])} | "
        f"{row['roofline_ms']:.1f} ({row['bound']}) | {mfu} |")
  if any('backends' in row for row in r['rows']):
    lines += ['', attention_line(r)]
  return '\n'.join(lines)


def advice(r: dict[str, Any], hbm_bytes: float) -> str:
  """What would make a run that does not fit fit: by how much it is over
  per chip, and the settings that lower the peak."""
  worst = max(r['rows'], key=lambda row: row['peak_gb'])
  over = worst['peak_gb'] - hbm_bytes / 1e9
  tips = []
  if r['remat'] != 'full':
    tips.append('--remat=full (or dots) keeps less for the backward pass')
  if r.get('unit') == 'GPU':
    if r['attention'] in ('auto', 'dense', 'chunked'):
      tips.append('--attention=cudnn (what auto takes on an attached GPU in '
                  'bfloat16) keeps no T x T logits nor chunked tiles')
  elif r['attention'] == 'dense':
    tips.append('--attention=chunked or flash never keeps T x T logits')
  elif r['attention'] in ('auto', 'chunked'):
    tips.append('--attention=flash keeps a log-sum-exp per row for the '
                'backward pass instead of the chunked tiles')
  if r['mesh'].get('fsdp', 1) < r['chips']:
    tips.append('more of the mesh on fsdp shards the parameters and the '
                'optimizer state further')
  if not r.get('loss_chunk'):
    tips.append('--loss_chunk=512 never keeps [B, T, vocab] float32 logits')
  tips.append(f"--microbatches (now {r.get('microbatches', 1)}) keeps one "
              'slice of the batch\'s activations at a time')
  tips.append(f"a smaller global batch (now {r['global_batch']})")
  return (f"The {worst['step']} step needs {worst['peak_gb']:.2f} GB per "
          f"{r.get('unit', 'chip')}, {over:.2f} GB more than the {hbm_bytes / 1e9:.0f} GB of a "
          f"{r['chip']}. Try: " + '; '.join(tips) + '.')
