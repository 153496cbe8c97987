"""STRING, shifted rotary position embedding (An et al., ICLR 2025, "Why
Does the Effective Context Length of LLMs Fall Short?", Sec. 4; released
code: HKUNLP/STRING, ``string_for_llama.py``): a far branch of
``lmx.positions.far``.

The relative position matrix keeps every distance ``d < S`` (the shift
offset ``S``); the distances ``d >= S``, the largest and least trained,
are dropped and the well-trained ones shifted over them: the pair is scored
at ``d - S + W``, so distance ``S`` is scored as the local window ``W`` and
the largest distance of a length-``n`` window, ``n - 1``, as
``n - 1 - S + W``. As far positions: the query at ``q - S + W``, the key
at ``k`` (integers), selected by distance ``>= S`` like ReRoPE's clamp, so
it acts on any relative encoding's rotation or bias.

Where the paper and the code differ:

* The code's prefill scores the pair at distance exactly ``S`` twice (its
  neighbour pass covers ``0..S``, its shifted pass ``>= S``); its decoding
  path and the paper score it once, shifted. Followed here: once, shifted,
  in the forward pass and in decoding alike.
* The code multiplies the rotary cos/sin tables by ``1 + 0.1 ln 2``
  (every logit by its square, a YaRN-like temperature, "to recover" the
  smoother attention); the paper's equation has no such factor. Not
  applied here: the positions alone are STRING's rule.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lmx.config.fields import Field, require


@dataclasses.dataclass(frozen=True)
class Shift:
  """Distances ``d >= window`` (the shift offset ``S``) scored at
  ``d - window + local`` (``local``: the window ``W`` of exact
  neighbours)."""

  window: int
  local: int

  def far_positions(self, q_pos_BxT: jax.Array, k_pos_BxS: jax.Array):
    """``(q - S + W, k)``: their difference is the shifted distance."""
    return q_pos_BxT - (self.window - self.local), k_pos_BxS


def string_distance(d, offset: int, local: int):
  """The distance STRING scores a pair at distance ``d`` (array or int)."""
  return jnp.where(d >= offset, d - offset + local, d)


# The code's and paper's S = 0.33 n (``shifted_ratio`` times the test
# length) and W = 128 (their runs use 128; 256 or 512 also suggested).
RATIO = 0.33
LOCAL = 128


def string_params(train_len: int, length: int) -> tuple[int, int]:
  """``(S, W)`` for windows of ``length`` tokens of a model trained at
  ``train_len``: ``W = min(128, L // 8)`` (the paper's 128; a small model's
  ``L/8``, DCA's default local window, where 128 would not fit) and
  ``S = int(0.33 n)``, raised to ``n - L + W`` where that keeps the
  largest shifted distance, ``n - 1 - S + W``, below ``L`` (past about
  ``1.5 L``; the paper evaluates at ``n <= L``, where this never acts)."""
  local = max(min(LOCAL, train_len // 8), 1)
  offset = max(int(RATIO * length), length - train_len + local, local + 1)
  return offset, local


class String:
  """STRING, ``config.model.string``: ``Shift(offset, local)``. Its
  settings and rules; ``lmx.positions.far.REGISTRY`` sets them on
  ``far.Member`` (``far.on_base``), as this module cannot import the
  registry that imports it."""
  name = 'string'
  FIELDS = {
      'offset': Field(0, 'the shift offset S: distances from S on are '
                      'scored at d - S + local (0: off)', lo=0),
      'local': Field(128, 'the window W of exact neighbours: distance S is '
                     'scored at W', lo=1),
  }
  switch = 'offset'
  summary = 'STRING'
  far_switch = 'offset'
  EXTENSIONS = {'string': ('STRING: distances from S = 0.33 n on shifted '
                           'to d - S + W, W = min(128, L/8)', {})}

  @classmethod
  def check(cls, model_cfg, used):
    s = model_cfg.string
    offset, local = int(s.offset), int(s.local)
    require(local < offset,
            f'config.model.string.local={local} must be below '
            f'config.model.string.offset={offset} (STRING shifts the '
            'distances from the offset on down to the local window). Lower '
            f'local to at most {offset - 1}, or raise offset.')
    plain = [n for n, e in used.items() if not e.relative()]
    require(not plain,
            f'config.model.string.offset={offset} shifts the positions that '
            'the rotation or the bias sees, but the '
            f'{", ".join(map(repr, plain))} encoding has neither (it adds '
            'its positions to the embeddings, or has none). Use a relative '
            'encoding, or set config.model.string.offset=0.')

  @classmethod
  def far(cls, model_cfg):
    s = model_cfg.string
    return Shift(int(s.offset), int(s.local))

  @classmethod
  def kernel_refusal(cls, model_cfg):
    return ('STRING scores the shifted pairs by a second (far) logit '
            'branch, which the kernel does not compute')

  @classmethod
  def configure(cls, model_cfg, train_len, length):
    """``string_params``: on at every length, as the paper uses it within
    the training length."""
    model_cfg.string.offset, model_cfg.string.local = string_params(
        train_len, length)

