"""Every position encoding on the built-in corpus, three seeds each, plus
randomized positions (Ruoss et al. 2023) for RoPE and sinusoidal, CAPE's
augmented positions for sinusoidal, the per-layer models HWFA, iRoPE,
RNoPE-SWA and SWAN-GPT, RoPE with each length scaling (``configs/logn.py``,
``ssmax.py``), DAPE on KERPLE, RoPE with gated attention, and NoPE with
stick-breaking attention.

    python sweep.py --sweep=configs/sweeps/encodings.py \
        --dir=runs/sweeps/encodings --parallel=2
    python sweep.py --sweep=configs/sweeps/encodings.py:size=tiny,seeds=1 \
        --dir=/tmp/sweeps/encodings     # seconds per member

The argument is passed to every member's config (``size=tiny``), except
``seeds=N`` (default 3), which sets the number of seeds, and
``configs=a+b`` (config file names, e.g. ``configs=dape+swan``), which
runs only those members. Members are named
``<encoding>-s<seed>``, ``rope-randomized-s<seed>``, ``cape-s<seed>``,
``hwfa-s<seed>``, ``irope-s<seed>``, ``logn-s<seed>`` and
``ssmax-s<seed>``.
"""

from configs import base
from lmx import positions

# The config files beside each encoding's own (configs/<name>.py).
EXTRA = ('rope_randomized', 'sinusoidal_randomized', 'cape', 'hwfa', 'irope',
         'logn', 'ssmax', 'rnope_swa', 'swan', 'dape', 'gated',
         'stickbreaking')


def get_sweep(arg=None):
  args = base.parse_arg(arg, {**base.ARG_KEYS,
                              'seeds': 'seeds per member (default 3)',
                              'configs': 'only these config files, joined '
                                         'by +, e.g. dape+swan'})
  seeds = int(args.pop('seeds', 3))
  only = args.pop('configs', '')
  size = ':' + ','.join(f'{k}={v}' for k, v in args.items()) if args else ''
  # Each member is its config file, so a row is what ``python train.py
  # --config=configs/<name>.py`` trains (CoPE's sets npos_max, for one).
  names = [*positions.REGISTRY, *EXTRA]
  if only:
    unknown = [n for n in only.split('+') if n not in names]
    if unknown:
      raise base.defaults.ConfigError(
          f'configs={only!r} in the sweep argument names {unknown[0]!r}, '
          f'not a member; members: {"+".join(names)}.')
    names = only.split('+')
  members = [{'config': f'configs/{name}.py{size}'} for name in names]
  return {
      'config': f'configs/base.py{size}',
      'members': members,
      'product': {'seed': list(range(seeds))},
  }
