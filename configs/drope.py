"""DroPE (Gelberg et al. 2025, "Extending the Context of Pretrained LLMs by
Dropping Their Positional Embeddings"; code SakanaAI/DroPE): a model
pretrained with RoPE has its position encoding dropped, then is trained
briefly at its training length (the *recalibration*), and is evaluated at
longer lengths with no position encoding at all.

    python train.py --config=configs/rope.py --workdir=runs/rope
    python train.py --config=configs/drope.py:from=runs/rope --workdir=runs/drope
    python eval.py --workdir=runs/drope

The argument ``from=<workdir>`` names the RoPE run to start from; it is
required, since without it this would be a short NoPE run from scratch.
What the recipe sets, following the released code's run configs
(``cfgs/run_cfg/*_drope.yaml``, ``attention_type: nope``):

* ``model.position='none'``: the rotation is removed and nothing replaces
  it (RoPE has no parameters, so every parameter loads unchanged through
  ``config.init_from``);
* the same training length, data and learning rate as pretraining, with a
  fresh optimizer and a warm-up of a tenth of the steps (their trainer's
  ``warmup_ratio: 0.1``);
* ``train.steps``: a short recalibration, a tenth of the default 1,500
  pretraining steps (``steps=N`` in the argument changes it). The paper's
  recalibration budgets are small fractions of pretraining for large
  models; at lmx's scale a tenth is what lets the NoPE model recover its
  in-distribution loss (docs/replication.md, finding 9).

``qk_norm=true`` in the argument gives the released code's variant with
qk-norm on every layer (``attention_type: qk_norm_nope``), as lmx's
qk-norm (``config.model.layers.qk_norm``): a root-mean-square norm without
the learned gain of the released code's ``RMSNorm``, so the parameters
still load unchanged.
"""

from configs import base
from lmx.config.defaults import ConfigError

RECALIBRATION = 150   # steps; a tenth of the default pretraining
EXAMPLE_ARG = 'from=runs/rope'
KEYS = {**base.ARG_KEYS,
        'from': 'the workdir of the RoPE run to recalibrate (required)',
        'steps': f'recalibration steps (default {RECALIBRATION})',
        'qk_norm': 'true: qk-norm on every layer, the qk_norm_nope variant'}


def get_config(arg=None):
  args = base.parse_arg(arg, KEYS)
  source = args.pop('from', None)
  if not source:
    raise ConfigError(
        'configs/drope.py needs the RoPE run to recalibrate: write '
        '--config=configs/drope.py:from=runs/rope (its --workdir).')
  steps = args.pop('steps', str(RECALIBRATION))
  if not steps.isdigit() or int(steps) < 1:
    raise ConfigError(f'steps={steps!r} in the config argument {arg!r} must '
                      'be a positive integer, e.g. steps=150.')
  qk = args.pop('qk_norm', 'false')
  if qk not in ('true', 'false'):
    raise ConfigError(f'qk_norm={qk!r} in the config argument {arg!r} must '
                      'be true or false.')
  c = base.encoding_config(
      'none', ','.join(f'{k}={v}' for k, v in args.items()) or None,
      name='drope')
  c.init_from = source
  c.train.steps = int(steps)
  c.train.warmup_steps = int(steps) // 10
  if qk == 'true':
    c.model.layers.qk_norm = (True,)
  return c
