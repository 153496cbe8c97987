"""Every position encoding on the built-in corpus, three seeds each, plus
randomized positions (Ruoss et al. 2023) for RoPE and sinusoidal, CAPE's
augmented positions for sinusoidal, the per-layer models HWFA and iRoPE,
and RoPE with each length scaling (``configs/logn.py``, ``ssmax.py``).

    python sweep.py --sweep=configs/sweeps/encodings.py \
        --dir=runs/sweeps/encodings --parallel=2
    python sweep.py --sweep=configs/sweeps/encodings.py:size=tiny,seeds=1 \
        --dir=/tmp/sweeps/encodings     # seconds per member

The argument is passed to every member's config (``size=tiny``), except
``seeds=N`` (default 3), which sets the number of seeds. Members are named
``<encoding>-s<seed>``, ``rope-randomized-s<seed>``, ``cape-s<seed>``,
``hwfa-s<seed>``, ``irope-s<seed>``, ``logn-s<seed>`` and
``ssmax-s<seed>``.
"""

from configs import base
from lmx import positions


def get_sweep(arg=None):
  args = base.parse_arg(arg, {**base.ARG_KEYS,
                              'seeds': 'seeds per member (default 3)'})
  seeds = int(args.pop('seeds', 3))
  size = ':' + ','.join(f'{k}={v}' for k, v in args.items()) if args else ''
  # Each member is its config file, so a row is what ``python train.py
  # --config=configs/<name>.py`` trains (CoPE's sets npos_max, for one).
  names = [*positions.REGISTRY, 'rope_randomized', 'sinusoidal_randomized',
           'cape', 'hwfa', 'irope', 'logn', 'ssmax']
  members = [{'config': f'configs/{name}.py{size}'} for name in names]
  return {
      'config': f'configs/base.py{size}',
      'members': members,
      'product': {'seed': list(range(seeds))},
  }
