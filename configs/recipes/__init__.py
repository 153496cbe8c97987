"""Published training setups as configs: one file per paper's model.

Each ``configs/recipes/<name>.py`` builds its config with ``recipe`` from
what the paper states (the section is cited in its docstring), names its
dataset, and keeps the paper's figures in ``PAPER``: the parameter count it
states (``tests/test_recipes.py`` holds the recipe within 15% of it) and
the tokens it trains on (docs/aot.md turns them into training time).

    python train.py --config=configs/recipes/alibi_wt103.py        # L=512
    python train.py --config=configs/recipes/alibi_wt103.py:L=3072
    python train.py --config=configs/recipes/fire.py:size=large
    python train.py --config=configs/recipes/kerple_owt2.py:smoke  # seconds

``smoke`` keeps the recipe's encoding and settings but shrinks the model
and the run to lmx's tiny size on the standard-library corpus (bytes), so
that it trains for a few steps on a CPU in seconds.
"""

from __future__ import annotations

from collections.abc import Mapping

import ml_collections

from configs import base

# Tokens per sequence and sequences per step of the smoke runs.
SMOKE = dict(seq_len=16, batch_size=4, steps=2)


def parse(arg: str | None,
          keys: Mapping[str, str]) -> tuple[dict[str, str], bool]:
  """``arg`` as ``base.parse_arg`` reads it with ``keys``, plus the bare
  word ``smoke``: (the key=value items, whether smoke was given)."""
  items = [s.strip() for s in (arg or '').split(',')]
  smoke = 'smoke' in items
  rest = ','.join(s for s in items if s and s != 'smoke')
  return base.parse_arg(rest, {**keys, 'smoke': 'the word alone: a run '
                                                  'of seconds on a CPU'}), smoke


def recipe(name: str, *, smoke: bool, position: str, d_model: int,
           num_layers: int, num_heads: int, mlp_dim: int, vocab_size: int,
           seq_len: int, batch_size: int, steps: int, learning_rate: float,
           warmup_steps: int, source: str, tie_embeddings: bool = False,
           weight_decay: float = 0.1, b2: float = 0.95,
           text_key: str = 'text', validation_split: str = 'validation',
           validation_source: str = '') -> ml_collections.ConfigDict:
  """A recipe's config: bfloat16, a SentencePiece vocabulary of
  ``vocab_size`` trained on the dataset, full remat, scanned layers and a
  chunked loss (what lets the published sizes fit one accelerator); with
  ``smoke``, the same encoding at lmx's tiny size on the stdlib corpus."""
  c = base.encoding_config(position, 'size=tiny' if smoke else None,
                           name=name)
  if smoke:
    c.train.seq_len = SMOKE['seq_len']
    c.train.batch_size = SMOKE['batch_size']
    c.train.steps = SMOKE['steps']
    c.train.log_every = 1
    c.eval.multipliers = (1, 2)
    return c
  m = c.model
  m.d_model, m.num_layers, m.num_heads, m.mlp_dim = (d_model, num_layers,
                                                      num_heads, mlp_dim)
  m.vocab_size = vocab_size
  m.tie_embeddings = tie_embeddings
  m.dtype = 'bfloat16'
  m.remat = 'full'
  m.scan_layers = True
  c.data.source = source
  c.data.text_key = text_key
  c.data.validation_split = validation_split
  c.data.validation_source = validation_source
  c.data.tokenizer = 'sentencepiece'
  c.data.sentencepiece.vocab_size = vocab_size
  t = c.train
  t.seq_len, t.batch_size, t.steps = seq_len, batch_size, steps
  t.learning_rate, t.warmup_steps = learning_rate, warmup_steps
  t.weight_decay, t.b2 = weight_decay, b2
  t.loss_chunk = min(512, seq_len)
  t.log_every = 100
  t.checkpoint_every = 5000
  c.positions.max_position = 16 * seq_len
  c.eval.batch_tokens = max(16384, seq_len)
  return c
