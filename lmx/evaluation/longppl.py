"""LongPPL: perplexity on the key tokens, those that need the long context.

Fang et al., "What is Wrong with Perplexity for Long-context Language
Modeling?" (ICLR 2025), sec. 3-4, and their code (PKU-ML/LongPPL,
``longppl/longppl.py``: ``find_key_token``, ``compute_longppl``). For token
``x_i`` with long context ``l_i`` (everything before it) and short context
``s_i`` (its last ``K`` tokens):

* long-short difference ``LSD(x_i) = log P(x_i | l_i) - log P(x_i | s_i)``;
* long-context likelihood ``LCL(x_i) = log P(x_i | l_i)``;
* ``x_i`` is a key token when ``LSD > alpha`` and ``LCL > beta`` (both
  strict, as the code's ``loss_short - loss_full > alpha`` and
  ``loss_full < -beta``);
* ``LongPPL = exp(-mean over key tokens of log P(x_i | l_i))``, pooled over
  all key tokens of all windows (the code's token-weighted mean over
  documents). No key token: LongPPL is None (the code returns None too).

The paper's defaults (and the code's): ``alpha = 2``, ``beta = -2``,
``K = 4096`` tokens. lmx uses the *self-contrast* form: the evaluated model
itself gives both the long and the short log-probabilities, so no second
(evaluator) model is needed; the paper's main results use a separate
evaluator model (Llama-3.1-8B, Qwen2-72B, Mistral Large 2) and it discusses
the evaluated model identifying its own key tokens.

Scale. lmx trains at L = 64..256 tokens, not 4K-128K, so ``K`` is
``config.eval.longppl_short`` tokens, by default (0) the training length
``config.train.seq_len``: a key token is then one that gains from context
beyond what training showed the model. (K = 4096 is the original training
length of the Llama-2-class models the paper extends.)

The short context, exactly as the code forms it. Scoring every token with
exactly ``K`` tokens of context needs one window per token (stride 1). The
code instead cuts windows of ``K + d`` tokens every ``d`` tokens
(``sliding_window = d = 1024``, ``trunc_len = K``) and scores the last
``d`` of each, so each token is scored once with between ``K`` and
``K + d - 1`` tokens of context, at ``(K + d) / d`` times the cost of one
pass (5x at the code's 1024 / 4096). The last window is cut short at the
end of the text. Tokens with fewer than ``K`` tokens of context are never
key (their short context would be their whole context). lmx does the same
inside each evaluation window of length ``L`` (the long context of a token
is its window, as in ``protocols.loss_at_length``): ``d`` is
``config.eval.longppl_stride`` (0: ``K // 4``, the code's ratio; 1 gives
the paper's equation exactly), capped so a window never exceeds ``L``.
Windows have one shape, ``K + d - 1`` tokens (inputs; the code's windows
of ``K + d`` token ids hold as many inputs), and the last one of each
evaluation window is padded at its end: the model is causal, so padding
after a token does not change its log-probability.

Reported per length (``summarize``): LongPPL, the number of key tokens and
their fraction of the scored tokens, the plain perplexity of the same
scored tokens (the code's ``ppl``), the tokens with at least ``K`` tokens
of context (``candidates``), and the mean long-short difference over them
and over the key tokens (``lsd``, ``lsd_key``, nats; the quantity LongCE,
the paper's training loss, weights tokens by, as ``min(exp(LSD), 5)``).
"""

from __future__ import annotations

import math

import numpy as np

from lmx.data import windows
from lmx.evaluation import protocols

# The paper's (and code's) thresholds and short context.
PAPER_ALPHA = 2.0
PAPER_BETA = -2.0
PAPER_SHORT = 4096
PAPER_STRIDE = 1024


def resolve_short(config) -> int:
  """``config.eval.longppl_short``, or the training length."""
  return int(config.eval.longppl_short or config.train.seq_len)


def resolve_stride(config, short: int) -> int:
  """``config.eval.longppl_stride``, or a quarter of ``short`` (the code's
  1024 / 4096)."""
  return int(config.eval.longppl_stride or max(1, short // 4))


def short_windows(inputs: np.ndarray, targets: np.ndarray, short: int,
                  stride: int):
  """The short-context windows of evaluation windows ``inputs`` /
  ``targets`` ``[N, L]`` (``targets[:, p]`` follows ``inputs[:, :p+1]``).

  Targets at positions ``p >= short - 1`` (at least ``short`` tokens of
  context) are scored once each. Window ``k`` of a row holds the inputs
  ``k*d .. k*d + W - 1`` with ``d = min(stride, L - short + 1)`` and
  ``W = short + d - 1``, and scores its last ``d`` targets, so target ``p``
  is scored with ``p - k*d + 1`` tokens of context, in ``[short,
  short + d - 1]``. Positions past ``L - 1`` are padding (token 0, never
  scored).

  Returns ``(x, y, scored, row, col)``: windows ``x``, ``y`` ``[M, W]``; the
  mask of scored targets ``[M, W]``; and for each ``True`` of ``scored`` (in
  row-major order) the row and position of the evaluation window it
  scores. None when ``L < short`` (no target has ``short`` tokens of
  context)."""
  n, length = inputs.shape
  if length < short:
    return None
  d = max(1, min(stride, length - short + 1))
  width = short + d - 1
  count = -(-(length - short + 1) // d)  # windows per row
  starts = np.arange(count) * d
  idx = starts[:, None] + np.arange(width)[None, :]  # [count, W]
  inside = idx < length
  safe = np.where(inside, idx, 0)
  x = np.where(inside[None], inputs[:, safe], 0).reshape(n * count, width)
  y = np.where(inside[None], targets[:, safe], 0).reshape(n * count, width)
  scored_one = inside & (np.arange(width)[None, :] >= short - 1)
  scored = np.broadcast_to(scored_one[None], (n, count, width)).reshape(
      n * count, width)
  row = np.broadcast_to(np.arange(n)[:, None, None], (n, count, width))
  col = np.broadcast_to(idx[None], (n, count, width))
  keep = scored.reshape(n, count, width)
  return (x.astype(np.int32), y.astype(np.int32), scored.copy(),
          row[keep], col[keep])


def short_losses(window_losses: np.ndarray, plan, shape) -> np.ndarray:
  """The short-context losses ``[N, L]`` of the evaluation windows from
  the losses of ``short_windows``' windows (``plan``); NaN where a target
  has fewer than ``short`` tokens of context."""
  out = np.full(shape, np.nan)
  if plan is not None:
    _, _, scored, row, col = plan
    out[row, col] = window_losses[scored]
  return out


def key_tokens(long_loss: np.ndarray, short_loss: np.ndarray,
               alpha: float = PAPER_ALPHA,
               beta: float = PAPER_BETA) -> np.ndarray:
  """The key-token mask: ``LSD > alpha`` and ``LCL > beta``, with
  ``LSD = short_loss - long_loss`` (= log P(long) - log P(short)) and
  ``LCL = -long_loss``. A NaN short loss (no short context) is never
  key."""
  lsd = short_loss - long_loss
  with np.errstate(invalid='ignore'):
    return (lsd > alpha) & (-long_loss > beta) & ~np.isnan(short_loss)


def summarize(long_loss: np.ndarray, short_loss: np.ndarray,
              alpha: float = PAPER_ALPHA, beta: float = PAPER_BETA) -> dict:
  """LongPPL and its companions over per-token losses (nats; NaN short
  losses for targets without a short context), any shape."""
  long_loss = np.asarray(long_loss, np.float64)
  short_loss = np.asarray(short_loss, np.float64)
  key = key_tokens(long_loss, short_loss, alpha, beta)
  cand = ~np.isnan(short_loss)
  lsd = short_loss - long_loss
  n_key = int(key.sum())
  tokens = int(long_loss.size)
  return {
      'longppl': math.exp(float(long_loss[key].mean())) if n_key else None,
      'key_tokens': n_key,
      'key_fraction': n_key / tokens if tokens else 0.0,
      'tokens': tokens,
      'perplexity': math.exp(float(long_loss.mean())),
      'candidates': int(cand.sum()),
      'lsd': float(lsd[cand].mean()) if cand.any() else None,
      'lsd_key': float(lsd[key].mean()) if n_key else None,
  }


def longppl_at_length(token_losses, params, config, stream, length: int,
                      long_row: dict) -> dict:
  """LongPPL at ``length``: the long-context losses are ``long_row``'s
  (``protocols.loss_at_length`` at ``length``: its ``per_window``), the
  short-context ones come from the same per-token loss function on the
  windows of ``short_windows``. Adds ``length``, ``short``, ``stride``,
  ``alpha``, ``beta`` and (not saved) ``key_mask`` and ``short_loss``
  ``[N, L]``."""
  e = config.eval
  short = resolve_short(config)
  stride = resolve_stride(config, short)
  long_loss = long_row['per_window']
  inputs, targets = windows.eval_windows(stream, length, e.tokens)
  plan = short_windows(inputs, targets, short, stride)
  if plan is None:
    short_loss = np.full(long_loss.shape, np.nan)
  else:
    x, y = plan[0], plan[1]
    got = protocols._window_losses(  # pylint: disable=protected-access
        token_losses, params, config, x, y,
        windows.step_rng(e.seed, length, 3))
    short_loss = short_losses(got, plan, long_loss.shape)
  out = {'length': length, 'short': short,
         'stride': min(stride, max(1, length - short + 1)),
         'alpha': float(e.longppl_alpha), 'beta': float(e.longppl_beta),
         **summarize(long_loss, short_loss, e.longppl_alpha,
                     e.longppl_beta)}
  out['key_mask'] = key_tokens(long_loss, short_loss, e.longppl_alpha,
                               e.longppl_beta)
  out['short_loss'] = short_loss
  return out
