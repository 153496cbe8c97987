"""One sweep that replicates ten published findings, and its
report (``write`` below, through ``experiments.replication``): each finding beside
what lmx measured and whether its direction holds. ``FINDINGS`` declares
the ten, with the thresholds that decide them.

    python sweep.py --sweep=configs/sweeps/replicate.py:quick \
        --dir=runs/sweeps/replicate_quick --parallel=2
    python sweep.py --sweep=configs/sweeps/replicate.py \
        --dir=runs/sweeps/replicate --parallel=2
    python sweep.py --sweep=configs/sweeps/replicate.py:quick,size=tiny \
        --dir=/tmp/replicate     # seconds per member: checks the plumbing

Members (default size, the built-in corpus; docs/replication.md):

- **lm-<enc>-s<seed>**: language models with sinusoidal, rope, t5 and alibi
  positions (findings 1 and 2: eval.py's non-overlapping and sliding
  windows), NoPE (``none``, finding 9), and KERPLE and DAPE on KERPLE
  (``configs/dape.py``, finding 10). The rope members also run
  ``python -m lmx.evaluation.extensions`` with plain RoPE, PI, NTK-aware,
  dynamic NTK, YaRN, ReRoPE and LM-Infinite (findings 5, 6, 7; no
  training) and ``python -m experiments.drope``: DroPE's recalibration of
  that RoPE model, into ``<workdir>/drope`` (finding 9).
- **task-<task>-<enc>-contiguous-s<seed>**: NoPE, T5, ALiBi, RoPE and
  sinusoidal ("absolute") on MRR_TASKS (finding 3).
- **task-<reverse|duplicate_string>-rope-<sampling>-s<seed>**: RoPE with
  contiguous and randomized positions (finding 4).
- **task-induction_heads-<sinusoidal|rope|xpos>-contiguous-s<seed>**:
  induction heads evaluated up to 64x (finding 8).

Full: 3 seeds for the findings that rest on small differences (1, 2, 4 and
the extensions 5-7), 1 seed for the MRR (a rank over many cells) and
induction heads (a collapse, not a small difference); 1500 steps as every
default config, and half the default evaluation tokens (16,384 per
length) for the language models. Quick (``:quick``): 1 seed, 500 training steps, a quarter
of the evaluation tokens, every 4th task length, two MRR tasks. The
argument takes ``quick``, ``seeds=N`` (overrides the seed count) and the
config keys (``size=...``) passed to every member's config.
"""

from configs import base
from experiments import replication as rep
from lmx.errors import ConfigError

LM_ENCODINGS = ('sinusoidal', 'rope', 't5', 'alibi', 'none', 'kerple',
                'dape')
DAPE_BASE = 'kerple'   # configs/dape.py: DAPE on KERPLE, the paper's main
DROPE_STEPS = 150      # DroPE's recalibration: a tenth of pretraining
                       # (50 of the quick variant's 500)
MRR_ENCODINGS = ('none', 't5', 'alibi', 'rope', 'sinusoidal')
MRR_TASKS = ('copy', 'reverse', 'sort')
MRR_TASKS_QUICK = ('copy', 'reverse')
RUOSS_TASKS = ('reverse', 'duplicate_string')
MAMBA_ENCODINGS = ('sinusoidal', 'rope', 'xpos')
EXTENSIONS = ('none', 'linear', 'ntk', 'dynamic', 'yarn', 'rerope',
              'lm_infinite')
REPORT = 'configs.sweeps.replicate'   # this module's write()

# What "explodes", "degrades", "stays flat" and "fails" mean here: judgment
# calls, named so that a reader can disagree with them. Ratios are of the
# loss at the longest evaluated length (or 2L) to the loss at the training
# length L, means over seeds.
EXPLODES = 1.5     # sinusoidal: longest / L
DEGRADES = 1.1     # rotary: longest / L; T5 after 2L: longest / 2L
FLAT = 1.05        # ALiBi, LM-Infinite: longest / L
NEAR_2L = 1.1      # T5 still near its training loss: 2L / L
RISE_TOL = 0.005   # ReRoPE: nats a length may exceed the one before
NO_GAIN = 0.01     # ALiBi sliding: lowest loss beyond L may be 1% below L's
RECOVERS = 1.02    # DroPE: loss at L at most 2% above RoPE's
FAILS = 0.5        # induction heads: accuracy beyond 2L / within L
LEARNED = 0.5      # ... within-L accuracy below which it was not learned
ABSOLUTE = 'sinusoidal'   # the "absolute" encoding of findings 3 and 8

FINDINGS = (
    rep.Finding(
        'Press et al. 2022', 'sinusoidal explodes past L, rotary degrades, '
        'T5 holds near 2L then rises, ALiBi stays flat', (
            rep.loss_ratio('sinusoidal', 'longest', 1, '>=', EXPLODES,
                           'sinusoidal explodes'),
            rep.loss_ratio('rope', 'longest', 1, '>', DEGRADES,
                           'rotary degrades'),
            rep.loss_ratio('t5', 2, 1, '<=', NEAR_2L, 'T5 holds near 2L'),
            rep.loss_ratio('t5', 'longest', 2, '>', DEGRADES,
                           'T5 then rises'),
            rep.loss_ratio('alibi', 'longest', 1, '<=', FLAT,
                           'ALiBi stays flat'))),
    rep.Finding(
        'Press et al. 2022 (sliding windows, appendix B)', 'with sliding-'
        'window evaluation ALiBi\'s loss past L is no better than at L: its '
        'gain under non-overlapping windows comes from the early-token '
        'curse, not from the longer context; sinusoidal still explodes', (
            rep.no_gain_beyond('alibi', NO_GAIN,
                               'ALiBi no better past L (sliding)'),
            rep.gain_only_without_overlap(
                'alibi', 'ALiBi\'s gain past L is the early-token curse: '
                'lower non-overlapping than sliding'),
            rep.loss_ratio('sinusoidal', 'longest', 1, '>=', EXPLODES,
                           'sinusoidal still explodes (sliding)',
                           rows='sliding'))),
    rep.Finding(
        'Kazemnejad et al. 2023', 'MRR across tasks orders NoPE, T5, ALiBi, '
        'RoPE, absolute', (
            rep.mrr_order(MRR_ENCODINGS, {'none': 'NoPE', 't5': 'T5',
                                          'alibi': 'ALiBi', 'rope': 'RoPE',
                                          ABSOLUTE: 'absolute'},
                          exclude_tasks=('induction_heads',)),)),
    rep.Finding(
        'Ruoss et al. 2023', 'randomized positions remove the cliff past the '
        'training length on reverse and duplicate', tuple(
            rep.accuracy_higher(t, 'rope', 'randomized', 'contiguous', 1, 2,
                                f'{t}: RoPE accuracy in (L, 2L], randomized '
                                '> contiguous') for t in RUOSS_TASKS)),
    rep.Finding(
        'Peng et al. 2023 (YaRN)', 'without fine-tuning NTK-aware beats PI; '
        'YaRN beats PI; dynamic scaling avoids the blow-up', (
            rep.extension_lower('rope', 'ntk', 'linear', 'NTK-aware has a '
                                'lower loss than PI (longest length)'),
            rep.extension_lower('rope', 'yarn', 'linear', 'YaRN has a lower '
                                'loss than PI (longest length)'),
            rep.extension_lower('rope', 'dynamic', 'none', 'dynamic NTK has '
                                'a lower loss than plain RoPE (longest '
                                'length)'))),
    rep.Finding(
        'ReRoPE (Su 2023)', 'loss keeps falling as the context grows past the '
        'training length', (rep.extension_falls('rope', 'rerope', RISE_TOL),)),
    rep.Finding(
        'Han et al. 2023 (LM-Infinite)', 'loss stays flat far past L with no '
        'training', (rep.extension_flat('rope', 'lm_infinite', FLAT),)),
    rep.Finding(
        'Gu and Dao 2023 (Mamba)', 'attention with absolute, RoPE or xPos '
        'positions fails induction heads beyond about 2x', tuple(
            rep.fails_beyond('induction_heads', p,
                             'absolute' if p == ABSOLUTE else p, 2, FAILS,
                             LEARNED) for p in MAMBA_ENCODINGS)),
    rep.Finding(
        'Gelberg et al. 2025 (DroPE)', 'a RoPE model with its position '
        'encoding dropped and briefly recalibrated at L extends past L '
        'better than RoPE and than NoPE trained from scratch, and keeps its '
        'loss at L', (
            rep.loss_below('drope', 'rope', 'longest', 'DroPE below RoPE'),
            rep.loss_below('drope', 'none', 'longest', 'DroPE below NoPE'),
            rep.loss_below('drope', 'rope', 1, 'DroPE keeps its loss at L',
                           factor=RECOVERS))),
    rep.Finding(
        'Zheng et al. 2024 (DAPE)', 'making the bias data-adaptive lowers '
        'the loss of its base encoding past L, and within L', (
            rep.loss_below('dape', DAPE_BASE, 'longest',
                           f'DAPE below {DAPE_BASE}'),
            rep.loss_below('dape', DAPE_BASE, 1,
                           f'DAPE below {DAPE_BASE} within L'))),
)


def write(workdirs, out_dir, title='replicate', mrr='length'):
  """The sweep's report: FINDINGS beside the results (experiments.replication)."""
  return rep.write(workdirs, out_dir, title, FINDINGS, mrr=mrr,
                   extensions_of='rope')


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
               'eval.tokens': 8192} if quick else {'eval.tokens': 16384})
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
        drope = (1 if args.get('size') == 'tiny' else
                 DROPE_STEPS // 3 if quick else DROPE_STEPS)
        row['after'] = [{
            'name': 'extensions',
            'args': ['-m', 'lmx.evaluation.extensions', '--workdir={workdir}',
                     '--methods=' + ','.join(EXTENSIONS)],
            'done': 'extensions/results.json'}, {
            'name': 'drope',
            'args': ['-m', 'experiments.drope', '--workdir={workdir}',
                     f'--steps={drope}'] + (
                         [f'--arg={size[1:]}'] if size else []),
            'done': 'drope/eval/results.json'}]
      add(f'lm-{enc}-s{seed}', **row)

  def task(t, enc, sampling, seed):
    # Induction heads keep their sparse grid (every 64th length to 64x).
    q = {k: v for k, v in task_quick.items()
         if t != 'induction_heads' or k != 'task.eval_stride'}
    add(f'task-{t}-{enc}-{sampling}-s{seed}',
        config=f'configs/tasks/{t}.py{size}', seed=seed,
        **{'model.position': enc, 'positions.train': sampling}, **q)

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
