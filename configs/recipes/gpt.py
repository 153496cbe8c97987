"""A generic 125M or 350M decoder at L = 2048, sized and scheduled as the
GPT-3 paper's two smallest models (Brown et al. 2020, "Language Models are
Few-Shot Learners", Section 2.1 and Table 2.1), with RoPE.

    python train.py --config=configs/recipes/gpt.py               # 125m
    python train.py --config=configs/recipes/gpt.py:size=350m
    python train.py --config=configs/recipes/gpt.py:smoke

Table 2.1: 125M: 12 layers, width 768, 12 heads of 64, learning rate 6e-4;
350M: 24 layers, width 1024, 16 heads of 64, learning rate 3e-4; both a
batch of 0.5M tokens (256 x 2048) and 300B training tokens (Section 2.2).
The vocabulary is a 50,257-id BPE (here a SentencePiece vocabulary of
that size) with tied embeddings.

Dataset: GPT-3's mixture is not public; the recipe trains on C4 English,
the tfds catalog's ``c4/en`` (text feature ``text``).
"""

from configs import recipes
from lmx.errors import ConfigError

SIZES = {'125m': dict(d_model=768, num_layers=12, num_heads=12,
                      mlp_dim=3072, learning_rate=6e-4),
         '350m': dict(d_model=1024, num_layers=24, num_heads=16,
                      mlp_dim=4096, learning_rate=3e-4)}
TOKENS = 300e9
BATCH = 256
PAPER = {'125m': {'params': 125e6, 'tokens': TOKENS},
         '350m': {'params': 350e6, 'tokens': TOKENS},
         'section': 'Section 2.1, Table 2.1'}


def get_config(arg=None):
  args, smoke = recipes.parse(arg, {'size': '125m or 350m'})
  size = args.get('size', '125m')
  if size not in SIZES:
    raise ConfigError(f'size={size!r} in the config argument: the recipe '
                      'has size=125m and size=350m.')
  return recipes.recipe(
      f'gpt_{size}', smoke=smoke, position='rope', vocab_size=50257,
      tie_embeddings=True, seq_len=2048, batch_size=BATCH,
      steps=int(TOKENS // (BATCH * 2048)), warmup_steps=375,
      source='tfds:c4/en', **SIZES[size])


def paper(arg=None):
  """The paper's figures for ``arg``'s model."""
  args, _ = recipes.parse(arg, {'size': '125m or 350m'})
  return PAPER[args.get('size', '125m')]
