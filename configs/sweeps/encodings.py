"""Every position encoding on the built-in corpus, three seeds each, plus
randomized positions (Ruoss et al. 2023) for RoPE and sinusoidal, and
CAPE's augmented positions for sinusoidal.

    python sweep.py --sweep=configs/sweeps/encodings.py \
        --dir=runs/sweeps/encodings --parallel=2
    python sweep.py --sweep=configs/sweeps/encodings.py:size=tiny,seeds=1 \
        --dir=/tmp/sweeps/encodings     # seconds per member

The argument is passed to every member's config (``size=tiny``), except
``seeds=N`` (default 3), which sets the number of seeds. Members are named
``<encoding>-s<seed>``, ``rope-randomized-s<seed>`` and ``cape-s<seed>``.
"""

from configs import base
from lmx import positions


def get_sweep(arg=None):
  args = base.parse_arg(arg, {**base.ARG_KEYS,
                              'seeds': 'seeds per member (default 3)'})
  seeds = int(args.pop('seeds', 3))
  size = ':' + ','.join(f'{k}={v}' for k, v in args.items()) if args else ''
  members = [{'model.position': name} for name in positions.REGISTRY]
  members += [{'config': f'configs/{name}_randomized.py{size}'}
              for name in ('rope', 'sinusoidal')]
  members.append({'config': f'configs/cape.py{size}'})
  return {
      'config': f'configs/base.py{size}',
      'members': members,
      'product': {'seed': list(range(seeds))},
  }
