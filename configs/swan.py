"""SWAN-GPT (Puvvada et al. 2025, "SWAN-GPT: An Efficient and Scalable
Approach for Long-Context Language Modeling"): NoPE layers over every
earlier token interleaved with RoPE layers of sliding-window attention
(SWA-RoPE), and a logarithmic scaling of the NoPE layers' attention as the
context grows past the training length.

    python train.py --config=configs/swan.py
    python eval.py --workdir=runs/swan

The layer plan is ``configs/rnope_swa.py``'s (three SWA-RoPE layers, then
one NoPE layer, in groups of four) with a narrower window, a quarter of the
training length, and the NoPE layers' queries scaled by log-n
(``max(1, log(p + 1) / log L)``, ``lmx.positions.length_scaling``): 1 at
every position inside the training length, so training is unchanged and
the scale acts only on the longer inputs of evaluation, the regime the
paper's inference-time scaling is for. The paper's own scaling rule and
window are set for its much longer training lengths; the structure, not
those constants, is what this config reproduces.
"""

from configs import rnope_swa

NAME = 'swan'


def get_config(arg=None):
  c = rnope_swa.hybrid(arg, NAME, 0.25)
  period = len(c.model.layers.position)
  c.model.layers.length_scaling = ('off',) * (period - 1) + ('logn',)
  c.model.length_scaling.base_len = c.train.get_ref('seq_len').identity()
  return c
