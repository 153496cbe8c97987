"""NoPE: no position encoding at all (Kazemnejad et al. 2023).

A causal decoder can still infer position from the causal mask itself, so
NoPE is a real baseline, not a broken model. It acts at none of the hooks.
"""

from lmx.positions.base import PositionEncoding


class NoPE(PositionEncoding):
  """Acts nowhere: embeddings, queries, keys and logits are left unchanged."""

  real_positions = True   # it reads none
