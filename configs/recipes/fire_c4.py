"""FIRE's base and large models at L = 2048 (Li, You, Guruganesh, Ainslie,
Ontanon, Zaheer, Sanghai, Yang, Kumar & Bhojanapalli 2024, "Functional
Interpolation for Relative Positions Improves Long Context Transformers",
ICLR 2024).

    python train.py --config=configs/recipes/fire_c4.py            # base
    python train.py --config=configs/recipes/fire_c4.py:size=large
    python train.py --config=configs/recipes/fire_c4.py:smoke

The models (the paper's Section 4, experiments, and its appendix of
training details): decoder-only Transformers of the base (~125M; 12 layers,
width 768, 12 heads) and large (~350M; 24 layers, width 1024, 16 heads)
sizes, pre-trained on C4 at L = 2048 with FIRE (lmx's ``fire``: the
learned MLP of the log distance, progressive interpolation). A 32k
SentencePiece vocabulary (T5's size) untied in and out.

Training budget: 600k steps of 256 sequences of 2048 tokens (315B tokens)
at a 3e-4 peak learning rate, our reading of the appendix, still to be
checked line by line against it.

Dataset: C4, English: the tfds catalog's ``c4/en`` (text feature
``text``, splits train / validation; preparing it needs the ``[tf]`` extra
and Apache Beam, or the prepared copy).
"""

from configs import recipes
from lmx.errors import ConfigError

SIZES = {'base': dict(d_model=768, num_layers=12, num_heads=12,
                      mlp_dim=3072),
         'large': dict(d_model=1024, num_layers=24, num_heads=16,
                       mlp_dim=4096)}
PAPER = {'base': {'params': 125e6, 'tokens': 600000 * 256 * 2048},
         'large': {'params': 350e6, 'tokens': 600000 * 256 * 2048},
         'section': 'Section 4 and the appendix of training details'}


def get_config(arg=None):
  args, smoke = recipes.parse(arg, {'size': 'base or large'})
  size = args.get('size', 'base')
  if size not in SIZES:
    raise ConfigError(f'size={size!r} in the config argument: the recipe '
                      'has size=base and size=large.')
  return recipes.recipe(
      f'fire_c4_{size}', smoke=smoke, position='fire', vocab_size=32128,
      seq_len=2048, batch_size=256, steps=600000, learning_rate=3e-4,
      warmup_steps=10000, source='tfds:c4/en', **SIZES[size])


def paper(arg=None):
  """The paper's figures for ``arg``'s model."""
  args, _ = recipes.parse(arg, {'size': 'base or large'})
  return PAPER[args.get('size', 'base')]
