"""ALiBi on WikiText-103 (Press, Smith & Lewis 2022, "Train Short, Test
Long", ICLR 2022).

    python train.py --config=configs/recipes/alibi_wt103.py         # L=512
    python train.py --config=configs/recipes/alibi_wt103.py:L=3072
    python train.py --config=configs/recipes/alibi_wt103.py:smoke

The model (the paper's Section 2, experimental setup): Baevski & Auli's
(2019) WikiText-103 language model, 16 layers, width 1024, 8 heads, a
feed-forward width of 4096, 247M parameters; trained at L = 512 and 3072
among other lengths (Section 4, Table 1 and Figure 1). Its adaptive input
and output embeddings over the 267k-word vocabulary are here one tied
embedding over a 32k SentencePiece vocabulary trained on the same text,
which keeps the count within 5% of 247M (the test checks it).

Training budget: Baevski & Auli's schedule, which the paper keeps for every
L by holding the tokens per step fixed: 286k updates of 73,728 tokens
(about 21B tokens, some 205 epochs of WikiText-103's 103M). lmx trains with
AdamW (the paper with Nesterov SGD and a cosine schedule), so the learning
rate is lmx's, not the paper's.

Dataset: WikiText-103, raw text (``wikitext-103-raw-v1``). tfds 4.9.10 has
no builder of its own for it; its Hugging Face namespace reads it as
``huggingface:wikitext/wikitext-103-raw-v1`` (text feature ``text``, splits
train / validation / test; needs the ``datasets`` package and the network
once). Or set ``config.data.source`` to a folder of plain-text files (the
``wiki.train.raw`` file) and ``config.data.validation_source`` to
``wiki.valid.raw``.
"""

from configs import recipes
from lmx.errors import ConfigError

TOKENS_PER_STEP = 73728
STEPS = 286000
PAPER = {'params': 247e6, 'tokens': TOKENS_PER_STEP * STEPS,
         'section': 'Sections 2 and 4'}
LENGTHS = (512, 3072)


def get_config(arg=None):
  args, smoke = recipes.parse(arg, {'L': 'training length: 512 or 3072'})
  length = args.get('L', '512')
  if length not in [str(n) for n in LENGTHS]:
    raise ConfigError(f'L={length!r} in the config argument: the recipe '
                      'has L=512 and L=3072.')
  length = int(length)
  return recipes.recipe(
      f'alibi_wt103_L{length}', smoke=smoke, position='alibi',
      d_model=1024, num_layers=16, num_heads=8, mlp_dim=4096,
      vocab_size=32768, tie_embeddings=True, seq_len=length,
      batch_size=TOKENS_PER_STEP // length, steps=STEPS,
      learning_rate=5e-4, warmup_steps=16000,
      source='tfds:huggingface:wikitext/wikitext-103-raw-v1')


def paper(arg=None):
  """The paper's figures for ``arg``'s model."""
  del arg  # both lengths: the same model and tokens
  return PAPER
