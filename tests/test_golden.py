"""Golden values: the first training losses of tiny configs, each to the
tolerance its dtype's rounding sets (``tolerance``).

What: each case trains a tiny config for a few steps through the public
entry, ``trainer.train(config, workdir)``, reads the loss of every step from
the run's ``metrics.jsonl`` and compares it with the value stored in
``tests/golden_losses.json``: a float32 case to an absolute 1e-6, the
bfloat16 case to one bfloat16 rounding of the loss (relative 2^-8).

Why: the other training tests only check that the loss falls, which a
refactor that moves the numerics a little (an op order, a dtype, an init, a
batch) still passes. These values catch any such drift, in float32 (ALiBi),
with a learned bias table (T5), and, to bfloat16's precision, in bfloat16
(RoPE, the CPU bf16 product path).

The values depend on the environment as well as on the code: the training
text is this interpreter's standard library (``data.source='stdlib'``) and
XLA's CPU kernels may round differently in another jax version or on another
CPU. In float32 the x86-64 kernels agree to well within 1e-6 over 4 steps.
In bfloat16 they do not: XLA:CPU computes a bfloat16 product with AMX or
AVX-512 BF16 units where the CPU has them, and by float32 emulation
elsewhere, which round differently (measured: 4.6e-4 apart on a loss of 6,
7.9e-5 relative, between an AMX and a generic x86-64 CPU). So the bfloat16
case is held to bfloat16's own precision, one rounding of the loss: 8
significant bits, a relative step of 2^-8 = 3.9e-3, 50x the drift between
CPUs and still small beside what a change to the model, the data or the
optimizer moves (the losses fall by 0.05 to 0.15 per step). The JSON
records the environment it was made in, and a failure shows it beside the
current one.

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
# |got - stored| <= absolute + relative * |stored|, by the case's dtype:
# float32 kernels agree across x86-64 CPUs to far below 1e-6 over 4 steps;
# bfloat16's unit roundoff is 2^-8 (an 8-bit significand), and different
# CPUs' bfloat16 product kernels round differently (module docstring).
TOLERANCES = {'float32': (1e-6, 0.0), 'bfloat16': (0.0, 2.0**-8)}
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
  from lmx.training import trainer  # pylint: disable=g-import-not-at-top
  config = make_config(config_name, overrides, cache_dir)
  trainer.train(config, workdir, progress=False)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  steps = [row['step'] for row in rows]
  want = list(range(1, config.train.steps + 1))
  assert steps == want, f'metrics.jsonl logged steps {steps}, not {want}'
  return [row['loss'] for row in rows]


def environment() -> dict:
  """What the values depend on besides the code."""
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  return {'python': platform.python_version(), 'jax': jax.__version__,
          'jaxlib': jaxlib.__version__, 'machine': platform.machine(),
          'backend': jax.default_backend()}


def tolerance(name: str, want: float) -> float:
  """The largest |difference| case ``name`` accepts at a stored loss of
  ``want``: set by its dtype (``TOLERANCES``)."""
  dtype = case_overrides(name).get('model.dtype', 'float32')
  absolute, relative = TOLERANCES[dtype]
  return absolute + relative * abs(want)


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

  want_losses = stored['losses']
  assert len(losses) == len(want_losses), (name, losses)
  wrong = [f'  step {step}: loss {got!r}, stored {want!r} '
           f'(|difference| {abs(got - want):.3g} > '
           f'{tolerance(name, want):.3g})'
           for step, (got, want) in enumerate(zip(losses, want_losses),
                                              start=1)
           if not abs(got - want) <= tolerance(name, want)]
  assert not wrong, (
      f'Golden case {name!r} (configs/{config_name}.py:size=tiny with '
      f'{overrides}) drifted by more than its tolerance at:\n'
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
      print(f'{name}: {losses}')
  golden = {
      'note': ('The loss of each of the first steps of tiny configs, checked '
               'by tests/test_golden.py to the tolerance of each case\'s '
               'dtype. Regenerate only when a change is meant to alter '
               f'numerics: {REGENERATE}'),
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
