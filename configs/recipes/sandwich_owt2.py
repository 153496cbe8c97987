"""Sandwich's GPT-NeoX model on OpenWebText2 (Chi, Fan, Rudnicky &
Ramadge 2023, "Dissecting Transformer Length Extrapolation via the Lens of
Receptive Field Analysis", ACL 2023).

    python train.py --config=configs/recipes/sandwich_owt2.py
    python train.py --config=configs/recipes/sandwich_owt2.py:smoke

The paper trains in KERPLE's setting (its Section 4, experiment setup, and
appendix): the same 162M GPT-NeoX (12 layers, width 768, 12 heads) at
L = 512 on OpenWebText2, with the parameter-free Sandwich bias (lmx's
``sandwich``, d' = 128). Model, vocabulary, budget and dataset are
``kerple_owt2``'s; see that file for the local files it expects.
"""

from configs.recipes import kerple_owt2

PAPER = dict(kerple_owt2.PAPER, section='Section 4 and the appendix')


def get_config(arg=None):
  return kerple_owt2.owt2_gpt_neox('sandwich_owt2', 'sandwich', arg)


def paper(arg=None):
  """The paper's figures for ``arg``'s model."""
  del arg
  return PAPER
