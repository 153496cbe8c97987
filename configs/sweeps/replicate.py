"""One sweep that replicates eight published findings (issue 18), with the
report of ``lmx.replication``: each finding beside what lmx measured and
whether its direction holds.

    python sweep.py --sweep=configs/sweeps/replicate.py:quick \
        --dir=runs/sweeps/replicate_quick --parallel=2
    python sweep.py --sweep=configs/sweeps/replicate.py \
        --dir=runs/sweeps/replicate --parallel=2
    python sweep.py --sweep=configs/sweeps/replicate.py:quick,size=tiny \
        --dir=/tmp/replicate     # seconds per member: checks the plumbing

Members (default size, the built-in corpus; docs/replication.md):

- **lm-<enc>-s<seed>**: language models with sinusoidal, rope, t5 and alibi
  positions (findings 1 and 2: eval.py's non-overlapping and sliding
  windows). The rope members also run ``python -m lmx.extensions`` with
  plain RoPE, PI, NTK-aware, dynamic NTK, YaRN, ReRoPE and LM-Infinite
  (findings 5, 6, 7; no training).
- **task-<task>-<enc>-contiguous-s<seed>**: NoPE, T5, ALiBi, RoPE and
  sinusoidal ("absolute") on MRR_TASKS (finding 3).
- **task-<reverse|duplicate_string>-rope-<sampling>-s<seed>**: RoPE with
  contiguous and randomized positions (finding 4).
- **task-induction_heads-<sinusoidal|rope|xpos>-contiguous-s<seed>**:
  induction heads evaluated up to 64x (finding 8).

Full: 3 seeds for the findings that rest on small differences (1, 2, 4 and
the extensions 5-7), 1 seed for the MRR (a rank over many cells) and
induction heads (a collapse, not a small difference); 1500 steps as every
default config. Quick (``:quick``): 1 seed, 500 training steps, a quarter
of the evaluation tokens, every 4th task length, two MRR tasks. The
argument takes ``quick``, ``seeds=N`` (overrides the seed count) and the
config keys (``size=...``) passed to every member's config.
"""

from configs import base
from lmx.errors import ConfigError

LM_ENCODINGS = ('sinusoidal', 'rope', 't5', 'alibi')
MRR_ENCODINGS = ('none', 't5', 'alibi', 'rope', 'sinusoidal')
MRR_TASKS = ('copy', 'reverse', 'sort', 'parity')
MRR_TASKS_QUICK = ('copy', 'reverse')
RUOSS_TASKS = ('reverse', 'duplicate_string')
MAMBA_ENCODINGS = ('sinusoidal', 'rope', 'xpos')
EXTENSIONS = ('none', 'linear', 'ntk', 'dynamic', 'yarn', 'rerope',
              'lm_infinite')
REPORT = 'lmx.replication'


def _parse(arg):
  items = [a.strip() for a in (arg or '').split(',') if a.strip()]
  quick = 'quick' in items
  rest = ','.join(a for a in items if a != 'quick')
  try:
    args = base.parse_arg(rest, {
        **base.ARG_KEYS,
        'seeds': 'seeds of the multi-seed findings (full: 3, quick: 1)'})
  except ConfigError as e:
    raise ConfigError(f'{e} Or the word quick (the quick variant).'
                           ) from None
  return quick, args


def get_sweep(arg=None):
  quick, args = _parse(arg)
  many = int(args.pop('seeds', 1 if quick else 3))
  size = ':' + ','.join(f'{k}={v}' for k, v in args.items()) if args else ''
  lm_quick = ({'train.steps': 500, 'train.warmup_steps': 50,
               'eval.tokens': 8192} if quick else {})
  task_quick = ({'train.steps': 500, 'train.warmup_steps': 50,
                 'task.eval_stride': 4, 'task.eval_examples': 32}
                if quick else {})
  if args.get('size') == 'tiny':  # 4 steps, few tokens: keep them
    lm_quick = {}
    task_quick = {k: v for k, v in task_quick.items()
                  if not k.startswith('train.')}
  members, seen = [], set()

  def add(name, **row):
    if name not in seen:
      seen.add(name)
      members.append({'name': name, **row})

  for enc in LM_ENCODINGS:
    for seed in range(many):
      row = {'config': f'configs/{enc}.py{size}', 'seed': seed, **lm_quick}
      if enc == 'rope':
        row['after'] = [{
            'name': 'extensions',
            'args': ['-m', 'lmx.extensions', '--workdir={workdir}',
                     '--methods=' + ','.join(EXTENSIONS)],
            'done': 'extensions/results.json'}]
      add(f'lm-{enc}-s{seed}', **row)

  def task(t, enc, sampling, seed):
    add(f'task-{t}-{enc}-{sampling}-s{seed}',
        config=f'configs/tasks/{t}.py{size}', seed=seed,
        **{'model.position': enc, 'positions.train': sampling},
        **task_quick)

  for t in (MRR_TASKS_QUICK if quick else MRR_TASKS):
    for enc in MRR_ENCODINGS:
      task(t, enc, 'contiguous', 0)
  for t in RUOSS_TASKS:
    for sampling in ('contiguous', 'randomized'):
      for seed in range(many):
        task(t, 'rope', sampling, seed)
  for enc in MAMBA_ENCODINGS:
    task('induction_heads', enc, 'contiguous', 0)
  return {'config': f'configs/base.py{size}', 'members': members,
          'report': REPORT}
