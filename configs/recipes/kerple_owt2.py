"""KERPLE's GPT-NeoX model on OpenWebText2 (Chi, Fan, Ramadge & Rudnicky
2022, "KERPLE: Kernelized Relative Positional Embedding for Length
Extrapolation", NeurIPS 2022).

    python train.py --config=configs/recipes/kerple_owt2.py
    python train.py --config=configs/recipes/kerple_owt2.py:smoke

The model and data (the paper's Section 5, experiments, and its appendix of
hyperparameters): GPT-NeoX at 162M parameters, 12 layers, width 768, 12
heads (feed-forward 4 x 768), trained at L = 512 on OpenWebText2 (also
GitHub and ArXiv in the paper), with the log kernel (lmx's ``kerple``).
The GPT-NeoX tokenizer's 50,432 ids (padded) untied in and out give the
162M; here a SentencePiece vocabulary of the same size is trained on the
text.

Training budget: 50,000 steps of 32 sequences of 512 tokens (819M tokens)
and a 6e-4 learning rate, our reading of the appendix's table, still to be
checked line by line against it.

Dataset: OpenWebText2 is in no tfds catalog. Expected as local files, as
it is distributed: ``config.data.source`` a folder (default
``data/openwebtext2``) of its ``.jsonl.zst`` shards, one document per
record, the text under ``text`` (``config.data.text_key``); lmx reads them
as they are into its token store (``python -m lmx.data.prepare`` prepares
it ahead). Validation records are chosen by hash of their file and place
(``config.data.validation_fraction``).
"""

from configs import recipes

PAPER = {'params': 162e6, 'tokens': 50000 * 32 * 512,
         'section': 'Section 5 and the appendix of hyperparameters'}
SOURCE = 'data/openwebtext2'


def owt2_gpt_neox(name, position, arg):
  _, smoke = recipes.parse(arg, {})
  return recipes.recipe(
      name, smoke=smoke, position=position, d_model=768, num_layers=12,
      num_heads=12, mlp_dim=3072, vocab_size=50432, seq_len=512,
      batch_size=32, steps=50000, learning_rate=6e-4, warmup_steps=500,
      source=SOURCE)


def get_config(arg=None):
  return owt2_gpt_neox('kerple_owt2', 'kerple', arg)


def paper(arg=None):
  """The paper's figures for ``arg``'s model."""
  del arg
  return PAPER
