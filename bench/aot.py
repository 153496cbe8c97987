"""Compile lmx's real train and evaluation steps for a TPU slice or NVIDIA
GPUs that are not attached, and print per-chip (per-GPU) memory, FLOPs, a
roofline and the attention backend compiled (``lmx.aot``).

    pip install -e ".[tpu]"     # libtpu: in its own environment
    pip install -e ".[gpu]"     # XLA's GPU compiler: in another one
    python bench/aot.py --preset=125m --topology=v5e:4x4 --mesh=4,4,1 \
        --seq_len=2048 --batch=64
    python bench/aot.py --preset=1.3b --seq_len=2048 --batch=256 \
        --remat=full --scan_layers --out=aot.json
    python bench/aot.py --preset=125m --depths=2,4,8,12 --scan_layers
        # compile time against depth
    python bench/aot.py --topology=h100:8 --preset=125m --batch=16 \
        --remat=full --scan_layers --loss_chunk=512

``--topology`` is a TPU slice (``v5e:4x4``) or a GPU (``h100``, ``a100``,
``h200``, ``b200``), alone or ``:8`` for one host of eight. ``--mesh`` is
data,fsdp,tensor (one may be -1: the devices the others leave); for a GPU
topology it defaults to every GPU on the data axis.

Each run prints one table: compile time; per-chip argument, output,
temporary and peak bytes and whether they fit the chip's memory, with the
margin; FLOPs and bytes moved per chip (the compiler's cost analysis); the
roofline step time from the chip's published peaks; and an upper bound on
the model FLOPs utilisation; then the attention backend each traced
attention call took (and why not cudnn or flash, where asked for) and the
fused attention kernels found in the compiled program. A run that does not
fit says by how much per chip and what to change, and exits with 1. Bad flags exit with 2 before
anything compiles.
"""

import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')


def _gpu_requested(argv) -> bool:
  """Whether --topology names a GPU (read before JAX starts: a GPU compile
  runs JAX on the CPU, where the CUDA plugin finds no device)."""
  from lmx import gpus  # pylint: disable=g-import-not-at-top
  for i, a in enumerate(argv):
    value = a.split('=', 1)[1] if a.startswith('--topology=') else (
        argv[i + 1] if a == '--topology' and i + 1 < len(argv) else None)
    if value is not None:
      return value.split(':')[0] in gpus.GPUS
  return False


if _gpu_requested(sys.argv):
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  os.environ.setdefault('JAX_SKIP_CUDA_CONSTRAINTS_CHECK', '1')

from lmx import aot  # noqa: E402  pylint: disable=g-import-not-at-top
from lmx import cli  # noqa: E402
from lmx.config import validate as config_lib  # noqa: E402
from lmx import positions  # noqa: E402
from lmx.errors import ConfigError  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string('topology', 'v5e:4x4',
                    f'TPU slice or GPUs: {", ".join(aot.TOPOLOGIES)}.')
flags.DEFINE_string('preset', '125m', f'Model: {", ".join(aot.PRESETS)}.')
flags.DEFINE_string('recipe', '', 'A published setup instead of --preset: '
                    'configs/recipes/<name>.py[:arg] as <name>[:arg] (e.g. '
                    'alibi_wt103:L=3072). Its own length, batch and '
                    'settings, except the flags given.')
flags.DEFINE_integer('seq_len', 2048, 'Tokens per sequence.')
flags.DEFINE_integer('batch', 64, 'Global batch, in sequences.')
flags.DEFINE_string('mesh', '4,4,1', 'data,fsdp,tensor axis sizes (for a '
                    'GPU topology, unless given: -1,1,1).')
flags.DEFINE_integer('vocab', aot.DEFAULT_VOCAB, 'Vocabulary size.')
flags.DEFINE_string('position', 'alibi', 'Position encoding.')
flags.DEFINE_string('attention', 'auto', 'config.model.attention.')
flags.DEFINE_integer('attention_block', 512, 'config.model.attention_block.')
flags.DEFINE_string('remat', 'off', 'config.model.remat: off, full, dots.')
flags.DEFINE_bool('scan_layers', False, 'config.model.scan_layers.')
flags.DEFINE_integer('loss_chunk', 0, 'config.train.loss_chunk.')
flags.DEFINE_integer('microbatches', 1, 'config.train.microbatches.')
flags.DEFINE_float('mfu', 0.4, 'With --recipe: the model FLOPs utilisation '
                   "at which to estimate the time to train the paper's "
                   'tokens.')
flags.DEFINE_bool('as_attached', False,
                  'Attention chooses its backend as on an attached device: '
                  'lmx.model.attention asks JAX whether a GPU is attached before '
                  'it takes cudnn, and a deviceless compile answers the CPU; '
                  'this makes it answer the compiled-for platform.')
flags.DEFINE_list('steps', ['train', 'eval'], 'Steps to compile.')
flags.DEFINE_list('depths', [], 'Compile at each of these depths instead '
                  "of the preset's (compile time against depth).")
flags.DEFINE_string('out', '', 'Also write the reports as JSON here.')


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _duration(days: float) -> str:
  return f'{days * 24:,.1f} hours' if days < 1 else f'{days:,.1f} days'


def _configs():
  """The configs to compile, each checked before anything compiles."""
  spec = FLAGS.mesh
  if aot.is_gpu(FLAGS.topology) and not FLAGS['mesh'].present:
    spec = '-1,1,1'
  try:
    mesh = [int(x) for x in spec.split(',')]
  except ValueError:
    mesh = []
  if len(mesh) != 3:
    _fail(f'--mesh={FLAGS.mesh!r} must be three integers data,fsdp,tensor '
          '(e.g. 4,4,1; one of them may be -1).')
  unknown = [s for s in FLAGS.steps if s not in ('train', 'eval')]
  if unknown or not FLAGS.steps:
    _fail(f'--steps={",".join(FLAGS.steps)}: give train, eval or both.')
  if FLAGS.position not in positions.REGISTRY:
    _fail(f'--position={FLAGS.position!r} is not an encoding. Valid: '
          f'{", ".join(sorted(positions.REGISTRY))}.')
  try:
    depths = [int(d) for d in FLAGS.depths]
  except ValueError:
    depths = [0]
  if any(d < 1 for d in depths):
    _fail(f'--depths={",".join(FLAGS.depths)} must be positive integers.')
  overrides = {'model.position': FLAGS.position,
               'model.attention': FLAGS.attention,
               'model.attention_block': FLAGS.attention_block,
               'model.remat': FLAGS.remat,
               'model.scan_layers': FLAGS.scan_layers,
               'train.loss_chunk': FLAGS.loss_chunk,
               'train.microbatches': FLAGS.microbatches}
  if FLAGS.recipe:  # the recipe's own settings, but for the flags given
    names = {'position': 'model.position', 'attention': 'model.attention',
             'attention_block': 'model.attention_block',
             'remat': 'model.remat', 'scan_layers': 'model.scan_layers',
             'loss_chunk': 'train.loss_chunk',
             'microbatches': 'train.microbatches',
             'seq_len': 'train.seq_len', 'batch': 'train.batch_size',
             'vocab': 'model.vocab_size'}
    overrides = {field: FLAGS[flag].value for flag, field in names.items()
                 if FLAGS[flag].present}
  configs = []
  try:
    aot.check_topology(FLAGS.topology)
    why = aot.available(FLAGS.topology)
    if why:
      raise ConfigError(why)
    chips = len(aot.topology_devices(FLAGS.topology))
    for depth in depths or [None]:
      extra = dict(overrides)
      if depth:
        extra['model.num_layers'] = depth
      axes = dict(zip(('data', 'fsdp', 'tensor'), mesh))
      if FLAGS.recipe:
        c = aot.recipe_config(FLAGS.recipe, mesh=axes, overrides=extra)
      else:
        c = aot.make_config(FLAGS.preset, seq_len=FLAGS.seq_len,
                            batch=FLAGS.batch, mesh=axes, overrides=extra,
                            vocab_size=FLAGS.vocab)
      # The model and run checks of train.py; the mesh against the slice
      # (the cudnn check asks for this host's platform, so it is skipped).
      config_lib.validate(c)
      aot.sharding.resolve(c, device_count=chips)
      configs.append(c)
  except ConfigError as e:
    _fail(str(e))
  return configs


def main(argv):
  del argv
  configs = _configs()
  devices = aot.topology_devices(FLAGS.topology)
  chip = aot.chip_of(FLAGS.topology)
  reports, fits = [], True
  for c in configs:
    mesh = aot.mesh_over(devices, c)
    results = []
    if 'train' in FLAGS.steps:
      results.append(aot.compile_train_step(c, mesh, FLAGS.as_attached))
    if 'eval' in FLAGS.steps:
      results.append(aot.compile_eval_step(c, mesh, FLAGS.as_attached))
    r = aot.report(c, FLAGS.topology, len(devices), results,
                   FLAGS.recipe or FLAGS.preset)
    r['as_attached'] = FLAGS.as_attached
    if FLAGS.recipe:
      paper = aot.recipe_paper(FLAGS.recipe)
      r['paper_tokens'] = paper['tokens']
      r['mfu'] = FLAGS.mfu
      r['train_days'] = aot.training_days(c, paper['tokens'], r['chips'],
                                          chip, FLAGS.mfu)
    reports.append(r)
    print(aot.format_report(r), flush=True)
    if FLAGS.recipe:
      print(f"The paper's {r['paper_tokens'] / 1e9:,.1f}B tokens "
            f"({paper['section']}) on {r['chips']} x {r['chip']} at "
            f"{FLAGS.mfu:.0%} MFU: {_duration(r['train_days'])}.",
            flush=True)
    if not all(row['fits'] for row in r['rows']):
      fits = False
      print(aot.advice(r, chip.hbm_bytes), flush=True)
    print(flush=True)
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      json.dump(reports, f, indent=1)
  sys.exit(0 if fits else 1)


if __name__ == '__main__':
  # The shared flag parsing: a bad flag is one line and exit status 2.
  app.run(main, flags_parser=cli.parse_flags)
