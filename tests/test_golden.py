"""Golden values: the first training losses of tiny configs, to 1e-6.

What: each case trains a tiny config for a few steps through the public
entry, ``trainer.train(config, workdir)``, reads the loss of every step from
the run's ``metrics.jsonl`` and compares it with the value stored in
``tests/golden_losses.json`` to an absolute tolerance of 1e-6.

Why: the other training tests only check that the loss falls, which a
refactor that moves the numerics a little (an op order, a dtype, an init, a
batch) still passes. These values catch any such drift, in float32 (ALiBi),
in bfloat16 (RoPE, the CPU bf16 product path) and with a learned bias table
(T5).

The values depend on the environment as well as on the code: the training
text is this interpreter's standard library (``data.source='stdlib'``) and
XLA's CPU kernels may round differently in another jax version or on another
CPU. The JSON records the environment it was made in, and a failure shows it
beside the current one.

A change that is meant to alter the numerics regenerates the file, from the
checkout whose numbers become the reference:

    JAX_PLATFORMS=cpu python tests/test_golden.py --update

and commits tests/golden_losses.json with the change.
"""

import importlib
import json
import os
import platform
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN_PATH = os.path.join(ROOT, 'tests', 'golden_losses.json')
TOLERANCE = 1e-6
REGENERATE = 'JAX_PLATFORMS=cpu python tests/test_golden.py --update'

# Every case: 4 steps, each one logged, one checkpoint at the end.
COMMON = {'train.steps': 4, 'train.log_every': 1,
          'train.checkpoint_every': 4}
# case name -> (configs/<name>.py, overrides beyond COMMON)
CASES = {
    'alibi_float32': ('alibi', {}),
    'rope_bfloat16': ('rope', {'model.dtype': 'bfloat16'}),
    't5_float32': ('t5', {}),
}


def case_overrides(name: str) -> dict:
  """All the overrides of a case, as stored: COMMON and its own."""
  return {**COMMON, **CASES[name][1]}


def make_config(config_name: str, overrides: dict, cache_dir: str):
  """``configs/<config_name>.py`` at ``size=tiny`` with ``overrides``."""
  module = importlib.import_module(f'configs.{config_name}')
  c = module.get_config('size=tiny')
  c.data.cache_dir = cache_dir  # where the corpus is built; no numerics
  c.update_from_flattened_dict(overrides)
  return c


def train_losses(config_name: str, overrides: dict, workdir: str,
                 cache_dir: str) -> list[float]:
  """The loss of every step of a fresh run, as ``metrics.jsonl`` has it."""
  # Imported here so that --update can set up sys.path and JAX first.
  from lmx import trainer  # pylint: disable=g-import-not-at-top
  config = make_config(config_name, overrides, cache_dir)
  trainer.train(config, workdir, progress=False)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  steps = [row['step'] for row in rows]
  want = list(range(1, config.train.steps + 1))
  assert steps == want, f'metrics.jsonl logged steps {steps}, not {want}'
  return [row['loss'] for row in rows]


def cpu_class() -> str:
  """The CPU's bfloat16 product units, which set how XLA:CPU rounds a
  bfloat16 dot: 'amx_bf16' (Intel AMX), 'avx512_bf16', or 'generic'."""
  try:
    with open('/proc/cpuinfo') as f:
      flags = next((line.split(':', 1)[1].split() for line in f
                    if line.startswith('flags')), [])
  except OSError:
    flags = []
  for cls in ('amx_bf16', 'avx512_bf16'):
    if cls in flags:
      return cls
  return 'generic'


def environment() -> dict:
  """What the values depend on besides the code."""
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  return {'python': platform.python_version(), 'jax': jax.__version__,
          'jaxlib': jaxlib.__version__, 'machine': platform.machine(),
          'backend': jax.default_backend(), 'cpu': cpu_class()}


def stored_losses(stored: dict) -> list[float]:
  """The case's values for this CPU class: bfloat16 products round
  differently on AMX, so a case may hold values per class
  (``losses_by_cpu``); ``losses`` are those of the file's environment."""
  return stored.get('losses_by_cpu', {}).get(cpu_class(), stored['losses'])


def load_golden() -> dict:
  with open(GOLDEN_PATH) as f:
    return json.load(f)


@pytest.mark.parametrize('name', sorted(CASES))
def test_first_losses_match_the_golden_values(name, tmp_path, cache_dir):
  golden = load_golden()
  stored = golden['cases'].get(name)
  config_name = CASES[name][0]
  overrides = case_overrides(name)
  assert stored is not None, (
      f'Golden case {name!r} is not in {GOLDEN_PATH}; run {REGENERATE}.')
  assert (stored['config'], stored['overrides']) == (config_name, overrides), (
      f'Golden case {name!r} was stored for configs/{stored["config"]}.py '
      f'with {stored["overrides"]}, but the test now runs '
      f'configs/{config_name}.py with {overrides}; run {REGENERATE}.')

  losses = train_losses(config_name, overrides, str(tmp_path / 'run'),
                        cache_dir)

  want_losses = stored_losses(stored)
  assert len(losses) == len(want_losses), (name, losses)
  wrong = [f'  step {step}: loss {got!r}, stored {want!r} '
           f'(|difference| {abs(got - want):.3g})'
           for step, (got, want) in enumerate(zip(losses, want_losses),
                                              start=1)
           if not abs(got - want) <= TOLERANCE]
  assert not wrong, (
      f'Golden case {name!r} (configs/{config_name}.py:size=tiny with '
      f'{overrides}) drifted by more than {TOLERANCE} at:\n'
      + '\n'.join(wrong) +
      f'\nStored in {golden["environment"]}; running in {environment()}.\n'
      'If the change is meant to alter the numerics, regenerate the values '
      f'with `{REGENERATE}` and commit tests/golden_losses.json with it.')


def update() -> None:
  """Rewrites golden_losses.json from this checkout's code."""
  import lmx  # pylint: disable=g-import-not-at-top
  print(f'lmx from {lmx.__file__}')
  cases = {}
  with tempfile.TemporaryDirectory() as tmp:
    cache_dir = os.path.join(tmp, 'tfds_cache')
    for name in sorted(CASES):
      config_name = CASES[name][0]
      overrides = case_overrides(name)
      losses = train_losses(config_name, overrides,
                            os.path.join(tmp, name), cache_dir)
      cases[name] = {'config': config_name, 'overrides': overrides,
                     'losses': losses}
      old = load_golden()['cases'].get(name, {})
      if old.get('config') == config_name and old.get('overrides') == overrides:
        # Values of other CPU classes are kept (they cannot be made here).
        by_cpu = {k: v for k, v in old.get('losses_by_cpu', {}).items()
                  if k != cpu_class()}
        if by_cpu:
          cases[name]['losses_by_cpu'] = by_cpu
      print(f'{name}: {losses}')
  golden = {
      'note': ('The loss of each of the first steps of tiny configs, checked '
               f'to {TOLERANCE} by tests/test_golden.py. Regenerate only when '
               f'a change is meant to alter numerics: {REGENERATE}'),
      'environment': environment(),
      'cases': cases,
  }
  with open(GOLDEN_PATH, 'w') as f:
    json.dump(golden, f, indent=2)
    f.write('\n')
  print(f'Wrote {GOLDEN_PATH}')


if __name__ == '__main__':
  if sys.argv[1:] != ['--update']:
    sys.exit(f'usage: {REGENERATE}\n(pytest runs the test itself.)')
  sys.path.insert(0, ROOT)  # configs/ and this checkout's lmx
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  update()
