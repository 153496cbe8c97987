"""The core sections' settings as field specs: type, range and meaning of
every scalar field of ``config.model``, ``config.positions``,
``config.train`` and ``config.data`` that lmx reads, checked by the one
generic validator (``lmx.config.fields.check_section``). Their values are
defined in ``lmx.config.defaults`` (some depend on the model size); the
method families declare their own sections beside their members
(``lmx.positions``), and the rules that tie fields together live with the
component that owns them (``lmx.config.validate``, ``lmx.model.layer_plan``,
``lmx.sharding``, ``lmx.data.tasks``).

Ranges follow the arithmetic a field enters: positions and steps are int32
on the device (``INT32_MAX``); a rate in [0, 1) is a probability; Adam's
betas are below 1 so that ``1 - beta^t`` never vanishes.
"""

from __future__ import annotations

from lmx.config.fields import Field
from lmx.model import gating
from lmx.model import stickbreaking

# Positions and steps are int32 on the device.
INT32_MAX = 2**31 - 1


def _positive_int(doc: str) -> Field:
  return Field(int, doc, lo=1)


TOP = {
    'seed': Field(int, 'the run seed (initialisation, batches, dropout)',
                  seed=True),
    'init_from_step': Field(int, 'the step of --init_from to start from (0: '
                            'its latest)', lo=0),
    'init_interpolate': Field(bool, 'resize learned position tables to the '
                              'new length when fine-tuning'),
    'cpu_devices': Field(int, 'on the CPU, the host\'s cores as this many '
                         'XLA devices for the mesh (0: as JAX starts; at '
                         'most the CPUs this process may use)', lo=0),
}

MODEL = {
    'd_model': _positive_int('the width'),
    'num_layers': _positive_int('the depth'),
    'num_heads': _positive_int('attention heads (they divide the width)'),
    'mlp_dim': _positive_int('the MLP width'),
    'vocab_size': _positive_int('the vocabulary (the tokenizer sets it)'),
    'dtype': Field(str, 'the compute dtype', choices=('float32', 'bfloat16')),
    'dropout': Field(float, 'the dropout rate', lo=0.0, hi=1.0, hi_open=True),
    'tie_embeddings': Field(bool, 'the head is the embedding, transposed'),
    'scan_layers': Field(bool, 'the layers under one jax.lax.scan'),
    'attention_block': _positive_int('the tile of the chunked and flash '
                                     'backends'),
    'chunk_threshold': Field(int, 'the most keys auto computes densely on a '
                             'CPU', lo=0),
    'accelerator_chunk_threshold': Field(int, 'the same on a GPU or TPU',
                                         lo=0),
    'normaliser': Field(str, 'how a query weighs its keys: softmax, or '
                        'stick-breaking (lmx.model.stickbreaking)',
                        choices=tuple(stickbreaking.REGISTRY)),
    'attention_gate': Field(str, "gated attention's sigmoid gate on each "
                            "head's output (lmx.model.gating)",
                            choices=tuple(gating.KINDS)),
}

TRAIN = {
    **{name: Field(int, doc, lo=1, hi=INT32_MAX) for name, doc in (
        ('seq_len', 'the training length'),
        ('batch_size', 'sequences per step'),
        ('steps', 'training steps'),
        ('checkpoint_every', 'steps between checkpoints'),
        ('log_every', 'steps between log lines'),
        ('keep_checkpoints', 'the newest verified checkpoints kept'))},
    'learning_rate': Field(float, 'the peak learning rate', lo=0.0,
                           lo_open=True),
    'min_lr_ratio': Field(float, 'the cosine floor, a fraction of the peak',
                          lo=0.0, hi=1.0),
    'weight_decay': Field(float, "AdamW's decoupled weight decay", lo=0.0),
    'b1': Field(float, "Adam's first-moment decay", lo=0.0, hi=1.0,
                hi_open=True),
    'b2': Field(float, "Adam's second-moment decay", lo=0.0, hi=1.0,
                hi_open=True),
    'grad_clip': Field(float, 'the global gradient norm clip', lo=0.0,
                       lo_open=True),
    'on_corrupt_checkpoint': Field(str, 'what a latest checkpoint that fails '
                                   'its checksums does',
                                   choices=('previous', 'refuse')),
    'loss_chunk': Field(int, 'tokens of the head and loss computed at a '
                        'time (0: all)', lo=0),
    'microbatches': _positive_int('gradient accumulation steps per batch'),
    'max_nonfinite_skips': Field(int, 'non-finite updates skipped before the '
                                 'run stops', lo=0),
    'eval_every': Field(int, 'steps between evaluations during training (0: '
                        'none)', lo=0, hi=INT32_MAX),
    'eval_tokens': _positive_int('validation tokens per length of the '
                                 'evaluation during training'),
}

DATA = {
    'validation_fraction': Field(float, 'the share of documents held out',
                                 lo=0.0, hi=1.0, lo_open=True, hi_open=True),
    # 0 = one worker per core; more processes than cores only add memory.
    'prepare_workers': Field(int, 'processes that prepare the token store '
                             '(0: one per core)', lo=0, hi=1024),
    # Each batch built ahead holds one batch on host and device.
    'prefetch': Field(int, 'batches built ahead of the step', lo=0, hi=64),
}


EVAL = {
    'multipliers': Field(tuple, 'lengths to evaluate, as multiples of the '
                         'training length', positive_ints=True),
    'tokens': _positive_int('validation tokens per length'),
    'seed': Field(int, 'the seed of drawn evaluation positions', seed=True),
    'batch_tokens': _positive_int('tokens per evaluation batch'),
    'position_buckets': _positive_int('buckets of the per-position loss'),
    'sliding': Field(bool, 'the sliding-window protocol too'),
    'sliding_stride': Field(int, 'its stride (0: a quarter of each window length)',
                            lo=0),
    'diagnostics_windows': Field(int, 'windows of the attention statistics '
                                 '(0: none)', lo=0),
    'generation': Field(bool, 'generation quality at length'),
    'generation_tokens': _positive_int('tokens generated after each '
                                       'position'),
    'generation_documents': _positive_int('documents generated from'),
    'generation_multipliers': Field(tuple, 'positions to generate after, as '
                                    'multiples of the training length',
                                    positive_ints=True),
    'generation_positions': Field(tuple, 'positions to generate after',
                                  positive_ints=True),
    'ood': Field(bool, "LM-Infinite's out-of-distribution factors"),
    'ood_query_rows': _positive_int('the last queries whose logits are '
                                    'profiled'),
    'longppl_short': Field(int, "LongPPL's short context in tokens (0: the "
                           'training length; the paper: 4096)', lo=0,
                           hi=INT32_MAX),
    'longppl_stride': Field(int, 'tokens sharing one short-context window '
                            '(0: a quarter of the short context; 1: each '
                            'token exactly the short context)', lo=0,
                            hi=INT32_MAX),
    'longppl_alpha': Field(float, "LongPPL's long-short difference threshold "
                           '(nats)'),
    'longppl_beta': Field(float, "LongPPL's long-context log-likelihood "
                          'threshold (nats)'),
    'effective_fraction': Field(float, 'the fraction of the in-distribution '
                                'score a length keeps to count in the '
                                'effective length', lo=0.0, hi=1.0,
                                lo_open=True),
}


def positions(samplers: tuple[str, ...]) -> dict[str, Field]:
  """``config.positions``' own fields, the samplers' names given."""
  return {
      'train': Field(str, 'the position sampler of training',
                     choices=samplers),
      'eval': Field(str, "the sampler of evaluation ('train': training's)",
                    choices=samplers + ('train',)),
      'max_position': Field(int, 'positions are drawn from [0, '
                            'max_position)', lo=1, hi=INT32_MAX),
  }
