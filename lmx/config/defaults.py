"""Every default of an lmx run, defined once.

``get_config(arg)`` is the complete config of a byte-level LM on the
Python standard library; ``configs/base.py`` builds on it, and a
``config.json`` saved by an older run is completed from it when it is read
(``complete``), so no field has a fallback default anywhere else. The
settings of each position encoding (and of each RoPE scaling) come from
that encoding's own ``default_config()``.

The argument after the colon of a config file chooses a variant:

    python train.py --config=configs/alibi.py            # default size
    python train.py --config=configs/alibi.py:size=tiny  # seconds, for tests

An unknown key or an item that is not ``key=value`` is a ConfigError that
names the valid keys.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import ml_collections

from lmx.model import layer_plan
from lmx import positions
from lmx.data import tasks
from lmx.errors import ConfigError
from lmx.positions import dape as score_adapter
from lmx.positions import far
from lmx.positions import length_scaling
from lmx.positions import sampling as sampling_lib

SIZES = {
    # d_model, layers, heads, mlp, seq_len, batch, steps, warmup, eval
    # tokens; evaluation during training: every eval_every steps (0 = off),
    # train_eval_tokens scored per length
    'default': dict(d_model=128, num_layers=4, num_heads=4, mlp_dim=512,
                    seq_len=64, batch_size=32, steps=1500, warmup=100,
                    eval_tokens=32768, eval_every=500,
                    train_eval_tokens=16384),
    'small': dict(d_model=256, num_layers=6, num_heads=8, mlp_dim=1024,
                  seq_len=256, batch_size=32, steps=5000, warmup=200,
                  eval_tokens=131072, eval_every=1000,
                  train_eval_tokens=32768),
    'tiny': dict(d_model=32, num_layers=2, num_heads=2, mlp_dim=64,
                 seq_len=16, batch_size=4, steps=4, warmup=1,
                 eval_tokens=512, eval_every=0, train_eval_tokens=512),
}

# The keys ``get_config``'s argument takes, with what each means.
ARG_KEYS = {'size': f'the model and run size: {", ".join(SIZES)}'}


def parse_arg(arg: str | None,
              keys: Mapping[str, str] = ARG_KEYS) -> dict[str, str]:
  """``'size=tiny,foo=bar'`` -> ``{'size': 'tiny', 'foo': 'bar'}``.

  ``keys`` maps each accepted key to a description; anything else (an
  unknown key, an item without ``=``, an empty key or value, a key given
  twice) is a ConfigError that lists them.
  """
  valid = '; '.join(f'{k} ({v})' for k, v in keys.items())
  out = {}
  for item in (arg or '').split(','):
    if not item.strip():
      continue
    key, eq, value = (s.strip() for s in item.partition('='))
    if not eq or not key or not value:
      raise ConfigError(
          f'The config argument {arg!r} has {item.strip()!r}, which is not '
          f'key=value. Write e.g. configs/alibi.py:size=tiny; valid keys: '
          f'{valid}.')
    if key not in keys:
      raise ConfigError(
          f'Unknown key {key!r} in the config argument {arg!r}; valid keys: '
          f'{valid}.')
    if key in out:
      raise ConfigError(f'The config argument {arg!r} sets {key!r} twice.')
    out[key] = value
  return out


def size_of(args: Mapping[str, str]) -> dict:
  """The sizes of ``args['size']`` (default: ``'default'``)."""
  size = args.get('size', 'default')
  if size not in SIZES:
    raise ConfigError(f'Unknown size {size!r} in the config argument; '
                      f'valid: {", ".join(SIZES)}.')
  return SIZES[size]


def get_config(arg: str | None = None,
               keys: Mapping[str, str] = ARG_KEYS) -> ml_collections.ConfigDict:
  """The complete default config; ``arg`` as in ``parse_arg``. Config files
  that take more keys pass them in ``keys`` and read them themselves."""
  s = size_of(parse_arg(arg, keys))

  c = ml_collections.ConfigDict()
  c.name = 'base'
  c.seed = 0
  # Fine-tuning: start from the parameters (not the optimizer) of another
  # run's checkpoint, e.g. at a longer train.seq_len or with a RoPE scaling.
  # Ignored once this run has checkpoints of its own (it then resumes).
  c.init_from = ''           # that run's --workdir
  c.init_from_step = 0       # its checkpoint step; 0 = the latest
  c.init_interpolate = False  # resize position tables that differ in length

  c.data = ml_collections.ConfigDict()
  # 'stdlib' (this interpreter's standard library), a folder or glob of text
  # files and record files (.jsonl, .jsonl.gz, .jsonl.zst, .parquet: one
  # document per record), or 'tfds:<catalog name>' (needs the [tf] extra and
  # the network to prepare). Tokenized once into the token store
  # (lmx.data.store) under cache_dir and memory-mapped.
  c.data.source = 'stdlib'
  c.data.text_key = 'text'   # the text's field (jsonl), column, tfds feature
  c.data.train_split = 'train'      # tfds catalog split names
  c.data.validation_split = 'validation'
  c.data.validation_fraction = 0.05  # of files, chosen by path hash
  # An explicit validation text: a file, folder or glob. Then every file of
  # data.source trains and validation_fraction is not used; '' = split
  # data.source by path hash (too few files may leave validation empty).
  c.data.validation_source = ''
  c.data.cache_dir = '~/.cache/lmx/tfds'
  c.data.prepare_workers = 0   # processes preparing the store; 0 = all cores
  c.data.prefetch = 2          # training batches built ahead of the step
  # 'bytes' (256 bytes + end-of-document) or 'sentencepiece' (a subword
  # vocabulary, lmx.data.subword). With sentencepiece, model.vocab_size
  # follows the tokenizer and a trained run keeps its copy of the model.
  c.data.tokenizer = 'bytes'
  c.data.sentencepiece = ml_collections.ConfigDict({
      # A given .model file; '' = train one on a sample of the training
      # split (cached beside the token store).
      'model_file': '',
      # What lmx trains: 'bpe' | 'unigram', with vocab_size ids in all
      # (2 special, 256 bytes, the rest pieces), and the characters that
      # cover this fraction of the text (rarer ones fall back to bytes).
      'model_type': 'bpe',
      'vocab_size': 1024,
      'character_coverage': 0.9995,
      # Trained on a deterministic sample of this many bytes of the
      # training split (all of it if smaller).
      'train_bytes': 1 << 27,
  })

  c.model = ml_collections.ConfigDict()
  c.model.position = positions.DEFAULT
  # 256 bytes + end-of-document; set from data.sentencepiece's tokenizer.
  c.model.vocab_size = 257
  c.model.d_model = s['d_model']
  c.model.num_layers = s['num_layers']
  c.model.num_heads = s['num_heads']
  c.model.mlp_dim = s['mlp_dim']
  c.model.dropout = 0.0
  c.model.dtype = 'float32'
  c.model.tie_embeddings = False
  # Compute choices that leave the parameters and the values as they are
  # (lmx.model.transformer): the layers under one jax.lax.scan (compile time flat in
  # depth), and rematerialisation of each block: off | full | dots (keep
  # the products with weights, recompute the rest).
  c.model.scan_layers = False
  c.model.remat = 'off'
  # Attention backend (lmx.model.attention): auto | dense | chunked | cudnn. auto
  # takes cudnn on a GPU when the dtype and the encoding allow it, dense up
  # to chunk_threshold tokens (accelerator_chunk_threshold on a GPU or TPU)
  # and chunked (linear memory) beyond.
  c.model.attention = 'auto'
  c.model.attention_block = 512       # chunked: query and key tile length
  c.model.chunk_threshold = 2048      # auto on CPU: chunked above this many keys
  c.model.accelerator_chunk_threshold = 512  # auto on GPU/TPU: the same
  # How a query weighs its keys: softmax | stick_breaking |
  # stick_breaking_current (lmx/model/stickbreaking.py).
  c.model.normaliser = 'softmax'
  # The far branches and masks (ReRoPE, LM-Infinite, Self-Extend, attention
  # sinks), each off at its defaults: lmx/positions/far.py.
  for name in far.REGISTRY:
    c.model[name] = far.default_config(name)
  # Length scaling (kind: off | logn | ssmax | llama4) and the settings of
  # each: lmx/positions/length_scaling.py.
  c.model.length_scaling = length_scaling.default_config()
  # A score adapter of the logits (kind: off | dape) and its settings:
  # lmx/positions/dape.py. Gated attention (off | elementwise | headwise):
  # lmx/model/gating.py.
  c.model.score_adapter = score_adapter.default_config()
  c.model.attention_gate = 'off'
  # Per-layer encodings, sliding windows and length scalings (tuples; ()
  # = every layer as the model-level setting; a pattern whose length
  # divides num_layers repeats): lmx/model/layer_plan.py, configs/hwfa.py.
  c.model.layers = layer_plan.default_config()
  # Each encoding's own settings, at config.model.<name>.
  for name, encoding in positions.REGISTRY.items():
    c.model[name] = encoding.default_config()

  # The device mesh (lmx.sharding): sizes of the data, fsdp and tensor
  # axes; -1 takes the devices the others leave. Batches are split over
  # data x fsdp, parameters over fsdp (and tensor) by logical-axis rules.
  c.mesh = ml_collections.ConfigDict({'data': -1, 'fsdp': 1, 'tensor': 1})
  # On the CPU, the host's cores as this many XLA devices, set before JAX's
  # backend starts (lmx.model.xla_cpu.split_host); 0: as JAX starts (one
  # device unless XLA_FLAGS says otherwise). With 2 on a 2-core host, the
  # mesh's data axis trains data-parallel and eval.py splits the heads
  # (--config.mesh.data=1 --config.mesh.tensor=2): each device's operations
  # run on one core instead of every small operation on both.
  c.cpu_devices = 0

  c.positions = ml_collections.ConfigDict()
  # A sampler of lmx/positions/sampling.py: contiguous | randomized | shift
  # | pose | cape
  # (lmx/positions/sampling.py)
  c.positions.train = sampling_lib.DEFAULT
  # At evaluation: contiguous | randomized | shift, or 'train' for whatever
  # training used (contiguous after pose and cape). 'train' is the default
  # because Ruoss et al. evaluate randomized models with randomized
  # positions too.
  c.positions.eval = 'train'
  c.positions.max_position = 2048
  # Each sampler's settings (CAPE's), at config.positions.<name>.
  for name, section in sampling_lib.default_sections().items():
    c.positions[name] = section

  c.train = ml_collections.ConfigDict()
  c.train.seq_len = s['seq_len']
  c.train.batch_size = s['batch_size']
  c.train.steps = s['steps']
  c.train.learning_rate = 2e-3
  c.train.warmup_steps = s['warmup']
  c.train.min_lr_ratio = 0.1
  c.train.weight_decay = 0.1
  c.train.b1 = 0.9
  c.train.b2 = 0.95
  c.train.grad_clip = 1.0
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 3         # newest verified ones kept
  # A latest checkpoint that fails its checksums or does not restore:
  # 'previous' moves it to checkpoints_corrupt/ and resumes from the newest
  # good one; 'refuse' stops with a message and changes nothing.
  c.train.on_corrupt_checkpoint = 'previous'
  # Non-finite loss or gradient: 0 stops the run at that step (the default);
  # N > 0 skips up to N such updates before stopping.
  c.train.max_nonfinite_skips = 0
  # The final norm, head and loss on this many tokens of each sequence at a
  # time (0: all at once), so [B, T, vocab] float32 logits never exist in
  # the step: a memory choice that leaves the loss as it is.
  c.train.loss_chunk = 0
  # Gradient accumulation: each step's batch in this many slices of rows,
  # one after another (activations of one slice at a time); the same
  # update as the whole batch at once, to rounding.
  c.train.microbatches = 1
  # Evaluation during training (lmx.training.trainer): every eval_every steps (0 =
  # off) the validation loss at eval_multipliers x seq_len, non-overlapping
  # windows as eval.py scores them (config.eval's settings but the token
  # count), eval_tokens tokens per length; logged to metrics.jsonl as
  # eval_loss_len<L> and drawn in training_curve.png. Text runs only.
  c.train.eval_every = s['eval_every']
  c.train.eval_multipliers = (1, 4, 16)
  c.train.eval_tokens = s['train_eval_tokens']

  # An algorithmic task or passkey retrieval instead of language modelling
  # (lmx/data/tasks.py, configs/tasks/); name '' = the text corpus.
  c.task = tasks.default_config()

  c.eval = ml_collections.ConfigDict()
  c.eval.multipliers = (1, 2, 4, 8, 16)   # of train.seq_len
  c.eval.lengths = ()                     # explicit lengths override them
  c.eval.tokens = s['eval_tokens']        # tokens scored at every length
  c.eval.batch_tokens = 16384             # tokens per forward pass
  c.eval.position_buckets = 64
  # The evaluators to run, in order (lmx.evaluation.evaluators.EVALUATORS:
  # loss, sliding, per_position, attention, generation, ood, tasks,
  # longppl). Empty:
  # those the switches below turn on (loss, sliding with `sliding`,
  # per_position, attention with `diagnostics_windows`, generation, ood;
  # tasks for a task run), so configs and saved runs that set them keep
  # their meaning.
  c.eval.evaluators = ()
  # The sliding-window protocol beside the non-overlapping one: windows
  # every `sliding_stride` tokens (0: a quarter of each length) that score
  # only their last `sliding_stride` targets.
  c.eval.sliding = True
  c.eval.sliding_stride = 0
  # Windows of the longest length for attention entropy / max logit per
  # layer against position (0: off).
  c.eval.diagnostics_windows = 2
  # Generation quality at length (LM-Infinite sec. 5; lmx.evaluation.generation):
  # greedy continuations of generation_tokens tokens after each position
  # (generation_multipliers x train.seq_len, or explicit
  # generation_positions) in generation_documents validation documents,
  # scored with BLEU and ROUGE against the true continuation.
  c.eval.generation = False
  c.eval.generation_multipliers = (1, 2, 4, 8, 16)
  c.eval.generation_positions = ()
  c.eval.generation_tokens = 100
  c.eval.generation_documents = 8
  # LM-Infinite's out-of-distribution factors (lmx.evaluation.ood) at the
  # longest length the dense path reaches: logits against distance for the
  # last ood_query_rows queries (head ood_head and the max over heads), and
  # a 2-D PCA of block ood_layer's hidden states (negative: from the last).
  c.eval.ood = False
  c.eval.ood_head = 0
  c.eval.ood_layer = -1
  c.eval.ood_query_rows = 64
  # LongPPL (Fang et al. 2025; lmx.evaluation.longppl), run when
  # config.eval.evaluators names 'longppl': perplexity on the key tokens,
  # those whose log-probability gains more than longppl_alpha nats from the
  # long context over the last longppl_short tokens (0: train.seq_len) and
  # whose long-context log-probability exceeds longppl_beta. Short contexts
  # come from windows every longppl_stride tokens (0: longppl_short / 4).
  c.eval.longppl_short = 0
  c.eval.longppl_stride = 0
  c.eval.longppl_alpha = 2.0
  c.eval.longppl_beta = -2.0
  # Effective length (lmx.evaluation.effective): the longest length whose
  # score keeps this fraction of the in-distribution score (NoLiMa: 0.85).
  c.eval.effective_fraction = 0.85
  c.eval.seed = 1234
  return c


def complete(saved: dict) -> dict:
  """``saved`` (a config read from JSON) with every field it lacks taken
  from ``get_config()``: the fields added since it was written. Where such
  a run had another behaviour than today's default, the encoding says so
  (``PositionEncoding.former_defaults``: KERPLE's per-layer parameters,
  YaRN's ramp on turns; ``length_scaling.former_defaults``: Llama 4's
  temperature by position value), and that value is filled in instead. Fields it has
  are never changed. Returns ``saved``, completed in place."""
  model = saved.get('model')
  if isinstance(model, dict):
    for name, encoding in positions.REGISTRY.items():
      former = encoding.former_defaults(model)
      if former:
        section = model.setdefault(name, {})
        if isinstance(section, dict):
          for key, value in former.items():
            section.setdefault(key, value)
    section = model.setdefault('length_scaling', {})
    if isinstance(section, dict):
      for key, value in length_scaling.former_defaults(model).items():
        section.setdefault(key, value)
  _fill(saved, get_config().to_dict())
  return saved


def as_tuples(saved: dict) -> dict:
  """``saved`` (read from JSON, where tuples become lists) with each list
  whose default is a tuple made a tuple again, so that it can be
  overridden on the command line like the field of a config file
  (ml_collections overrides tuples, not lists). In place; returns it."""
  _tuples(saved, get_config().to_dict())
  return saved


def _tuples(node: dict, defaults: dict) -> None:
  for key, value in defaults.items():
    if key not in node:
      continue
    if isinstance(value, dict) and isinstance(node[key], dict):
      _tuples(node[key], value)
    elif isinstance(value, tuple) and isinstance(node[key], list):
      node[key] = tuple(node[key])


def flatten(node: dict, prefix: str = '') -> dict:
  """``{'a': {'b': 1}}`` -> ``{'a.b': 1}``: a nested config dict by dotted
  field names (``prefix`` before each)."""
  out = {}
  for key, value in node.items():
    if isinstance(value, dict):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def _fill(node: dict, defaults: dict) -> None:
  for key, value in defaults.items():
    if key not in node:
      node[key] = copy.deepcopy(value)
    elif isinstance(value, dict) and isinstance(node[key], dict):
      _fill(node[key], value)
