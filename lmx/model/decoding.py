"""Sampling and autoregressive generation with the KV cache.

Sampling is a pure function of the next-token logits and a key:

* ``greedy(logits_BxV)``: the argmax;
* ``sample(logits_BxV, key, temperature, top_k)``: softmax sampling at
  ``temperature`` among the ``top_k`` largest logits (0 = all of them);
  ``temperature=0`` is greedy.

``generate`` prefills the prompt in one call (``Transformer.decode`` with
``prefill=True``, through the configured attention backend), then decodes
one token per call with a jitted step. The step is the NNX functional
pattern of ``lmx.training.trainer``: the model is split once into ``(graphdef,
params)`` and the step is a pure function of ``(params, cache, token,
position, key)`` that merges them inside the trace; the cache is donated, so
it is updated in place. Positions are contiguous (``arange``). The key of
the ``i``-th new token is ``fold_in(PRNGKey(seed), i)``: the same seed gives
the same text.

Lengths are checked in Python before anything is compiled: an unbounded
cache must hold the prompt and the new tokens, and a learned position table
has no row past its ``max_len``. Under LM-Infinite's Lambda-shaped mask
(``config.model.lm_infinite.n_local > 0``) the cache is a ring of
``n_global + n_local`` slots, so any length fits and each new token costs
the same however long the text grows.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from lmx.training import checkpoint
from lmx.model import layer_plan
from lmx import memory
from lmx.training import run_state
from lmx.errors import ConfigError
from lmx.data import subword
from lmx.data import tokenizer

EOD = tokenizer.EOD


# ------------------------------------------------------------------ sampling


def greedy(logits_BxV: jax.Array) -> jax.Array:
  """The most likely token of each row: ``[B]`` int32."""
  return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)


def sample(logits_BxV: jax.Array, key: jax.Array, temperature=1.0,
           top_k: int = 0) -> jax.Array:
  """One token per row: ``[B]`` int32.

  Draws from ``softmax(logits / temperature)`` restricted to the ``top_k``
  largest logits of each row (``top_k=0``: every token). The restriction is
  by index (``lax.top_k``), so even with tied logits no token outside the
  top ``k`` can be drawn. ``temperature`` may be a traced scalar; a Python
  ``0`` (or ``top_k=1``) is greedy.
  """
  check_sampling(temperature, top_k)
  if isinstance(temperature, (int, float, np.number)) and temperature == 0:
    return greedy(logits_BxV)
  if top_k == 1:
    return greedy(logits_BxV)
  scaled_BxV = logits_BxV.astype(jnp.float32) / jnp.asarray(
      temperature, jnp.float32)
  vocab = logits_BxV.shape[-1]
  if top_k and top_k < vocab:
    top_BxK, index_BxK = jax.lax.top_k(scaled_BxV, top_k)
    choice_B = jax.random.categorical(key, top_BxK, axis=-1)
    return jnp.take_along_axis(index_BxK, choice_B[:, None],
                               axis=-1)[:, 0].astype(jnp.int32)
  return jax.random.categorical(key, scaled_BxV, axis=-1).astype(jnp.int32)


def check_sampling(temperature, top_k) -> None:
  """A ConfigError for a negative or non-finite temperature or a top_k that
  is not a non-negative integer (a traced temperature is not checked)."""
  if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) \
      or top_k < 0:
    raise ConfigError(f'top_k must be an integer >= 0 (0 = no restriction), '
                      f'got {top_k!r}.')
  if isinstance(temperature, (int, float, np.number)) and (
      not np.isfinite(temperature) or temperature < 0):
    raise ConfigError(f'temperature must be a finite number >= 0 (0 = '
                      f'greedy), got {temperature!r}.')


def token_key(seed: int, i) -> jax.Array:
  """The key of the ``i``-th generated token: derived from (seed, i)."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), i)


# ------------------------------------------------------------- jitted steps


@functools.lru_cache(maxsize=64)
def prefill_fn(graphdef):
  """Jitted ``(params, cache, tokens_BxT, positions_BxT) -> (logits_BxV of
  the last token, cache)`` on an empty cache (the cache is donated)."""
  def prefill(params, cache, tokens_BxT, positions_BxT):
    model = nnx.merge(graphdef, params)
    logits_BxTxV, cache = model.decode(tokens_BxT, positions_BxT, cache,
                                       prefill=True)
    return logits_BxTxV[:, -1], cache
  return jax.jit(prefill, donate_argnums=1)


@functools.lru_cache(maxsize=64)
def step_fn(graphdef, top_k: int = 0, greedy_only: bool = False):
  """Jitted ``(params, cache, token_B, position_B, key, temperature) ->
  (next token_B, logits_BxV, cache)``: one decoding step and the sampling of
  the token after it (the cache is donated)."""
  def step(params, cache, token_B, position_B, key, temperature):
    model = nnx.merge(graphdef, params)
    logits_Bx1xV, cache = model.decode(token_B[:, None], position_B[:, None],
                                       cache)
    logits_BxV = logits_Bx1xV[:, 0]
    if greedy_only:
      return greedy(logits_BxV), logits_BxV, cache
    return sample(logits_BxV, key, temperature, top_k), logits_BxV, cache
  return jax.jit(step, donate_argnums=1)


@functools.lru_cache(maxsize=64)
def _sample_fn(top_k: int, greedy_only: bool):
  def first(logits_BxV, key, temperature):
    if greedy_only:
      return greedy(logits_BxV)
    return sample(logits_BxV, key, temperature, top_k)
  return jax.jit(first)


# ---------------------------------------------------------------- generate


def split_model(model_or_split):
  """``(graphdef, params)`` of an NNX model, or the pair passed through."""
  if isinstance(model_or_split, nnx.Module):
    graphdef, state = nnx.split(model_or_split)
    return graphdef, nnx.to_pure_dict(state)
  graphdef, params = model_or_split
  return graphdef, params


def check_lengths(config: ml_collections.ConfigDict, prompt_len: int,
                  max_new_tokens: int, max_len: Optional[int] = None) -> int:
  """The cache length to allocate, or a ConfigError saying what to change.

  The text (prompt plus new tokens) takes positions ``0 .. total - 1``.
  """
  if prompt_len < 1:
    raise ConfigError('The prompt is empty: generation needs at least one '
                      'token to start from (e.g. the end-of-document token '
                      f'{EOD}).')
  if isinstance(max_new_tokens, bool) or not isinstance(
      max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
    raise ConfigError(f'max_new_tokens must be an integer >= 0, got '
                      f'{max_new_tokens!r}.')
  total = prompt_len + int(max_new_tokens)
  for name, encoding in layer_plan.used_encodings(config.model).items():
    view = layer_plan.view(config.model, name)
    bound = encoding.max_positions(view)
    if bound is not None and total > bound:
      raise ConfigError(
          f'A prompt of {prompt_len} tokens plus {max_new_tokens} new ones '
          f'needs positions up to {total - 1}, but the '
          f'{name!r} encoding has rows for positions 0 .. '
          f'{bound - 1} only ({encoding.bound_setting()}={bound}). Ask for '
          f'at most {max(bound - prompt_len, 0)} new tokens '
          '(--max_new_tokens) or shorten the prompt; a longer table needs '
          f'training again with a larger {encoding.bound_setting()}.')
    limit = encoding.max_span(view)
    if limit is not None and total > limit[0]:
      raise ConfigError(
          f'A prompt of {prompt_len} tokens plus {max_new_tokens} new ones '
          f'spans {total} positions, but the {name!r} encoding '
          f'cannot: {limit[1]} (--max_new_tokens).')
  # The mask the cache's slots follow: LM-Infinite's, or one sliding
  # window every layer shares (lmx.model.layer_plan.cache_mask).
  mask = layer_plan.cache_mask(config.model)
  n_global, n_local = mask.n_global, mask.n_local
  bounded = n_local > 0
  if max_len is None:
    return total
  if bounded:
    needed = min(total, n_global + n_local)
    if max_len < needed:
      raise ConfigError(
          f'max_len={max_len} is smaller than the bounded cache of the '
          f'Lambda-shaped mask (or of the one sliding window of every '
          f'layer) needs ({needed} slots: n_global={n_global} + '
          f'n_local={n_local}, or the whole text if shorter). Pass '
          f'max_len >= {needed}, or leave it unset.')
  elif total > max_len:
    raise ConfigError(
        f'A prompt of {prompt_len} tokens plus {max_new_tokens} new ones is '
        f'{total} tokens, more than the KV cache holds (max_len={max_len}). '
        f'Pass max_len >= {total} (or leave it unset), ask for fewer new '
        f'tokens, or bound the cache with LM-Infinite\'s mask '
        f'(config.model.lm_infinite.n_local > 0).')
  return max_len


def generate(model_or_split, config: ml_collections.ConfigDict,
             prompt_tokens: Union[Sequence[int], np.ndarray],
             max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int = 0, seed: int = 0, stop_at_eod: bool = False,
             max_len: Optional[int] = None, eod: int = EOD) -> np.ndarray:
  """The tokens generated after ``prompt_tokens`` (int32 numpy).

  ``model_or_split`` is a ``Transformer`` or its ``(graphdef, params)``;
  ``config`` the run's config (``config.model`` must describe the model).
  ``prompt_tokens`` is ``[T]`` (returns ``[N]``) or a batch ``[B, T]`` of
  equal-length prompts (returns ``[B, N]``). Generation stops after
  ``max_new_tokens``, or with ``stop_at_eod`` once every row has produced
  the end-of-document token (included; a finished row is padded with it).
  ``max_len`` is the cache length (default: prompt + new tokens); ``eod``
  the end-of-document id (the tokenizer's; default: the byte tokenizer's).
  """
  prompt = np.asarray(prompt_tokens, dtype=np.int32)
  single = prompt.ndim == 1
  if single:
    prompt = prompt[None]
  if prompt.ndim != 2:
    raise ConfigError(f'prompt_tokens must be [T] or [B, T], got shape '
                      f'{prompt.shape}.')
  vocab = int(config.model.vocab_size)
  if prompt.size and (prompt.min() < 0 or prompt.max() >= vocab):
    raise ConfigError(f'prompt tokens must lie in [0, {vocab}) '
                      f'(config.model.vocab_size).')
  check_sampling(temperature, top_k)
  batch, prompt_len = prompt.shape
  cache_len = check_lengths(config, prompt_len, max_new_tokens, max_len)
  out_shape = (batch, 0)
  if max_new_tokens == 0:
    empty = np.zeros(out_shape, np.int32)
    return empty[0] if single else empty

  graphdef, params = split_model(model_or_split)
  model = nnx.merge(graphdef, params)
  cache = model.init_cache(batch, cache_len)
  greedy_only = temperature == 0 or top_k == 1
  top_k = 0 if greedy_only else int(top_k)
  temp = jnp.asarray(1.0 if greedy_only else temperature, jnp.float32)

  positions_BxT = np.broadcast_to(np.arange(prompt_len, dtype=np.int32),
                                  prompt.shape)
  logits_BxV, cache = prefill_fn(graphdef)(params, cache, jnp.asarray(prompt),
                                           jnp.asarray(positions_BxT))
  token_B = _sample_fn(top_k, greedy_only)(logits_BxV, token_key(seed, 0),
                                           temp)
  step = step_fn(graphdef, top_k, greedy_only)
  tokens = [token_B]
  done_B = np.zeros((batch,), bool)
  for i in range(1, max_new_tokens):
    if stop_at_eod:
      done_B |= np.asarray(tokens[-1]) == eod
      if done_B.all():
        break
    position_B = jnp.full((batch,), prompt_len + i - 1, jnp.int32)
    token_B, _, cache = step(params, cache, tokens[-1], position_B,
                             token_key(seed, i), temp)
    tokens.append(token_B)
  out = np.asarray(jnp.stack(tokens, axis=1))
  if stop_at_eod:
    # Everything after a row's first end-of-document is padding.
    after_eod = np.cumsum(out == eod, axis=1) - (out == eod) > 0
    out = np.where(after_eod, eod, out).astype(np.int32)
  return out[0] if single else out


# ------------------------------------------------------------ from a run


def generate_from_run(config: ml_collections.ConfigDict, workdir: str,
                      prompt: str, max_new_tokens: int, *,
                      temperature: float = 1.0, top_k: int = 0,
                      seed: int = 0, step: Optional[int] = None,
                      stop_at_eod: bool = False) -> tuple[str, int]:
  """``(text, step)``: the prompt and its continuation by the checkpoint of
  ``workdir`` at ``step`` (default: the latest), encoded and decoded by the
  run's tokenizer (bytes, or its SentencePiece model).

  ``config`` is the run's saved config (with any overrides). Bad lengths or
  sampling settings raise ConfigError and a missing or unusable checkpoint
  CheckpointError, both before anything is compiled. An empty prompt starts
  a new document (the end-of-document token).
  """
  tok = subword.for_run(config, workdir)
  try:  # a prompt from the command line may hold any bytes (see encode)
    given = tok.encode(prompt)
  except UnicodeEncodeError as e:
    raise ConfigError(
        f'The prompt holds characters that cannot be written as bytes '
        f'({e.reason} at position {e.start}): give text, or the bytes '
        'themselves.') from None
  prompt_tokens = given if given.size else np.array([tok.eod], np.int32)
  check_sampling(temperature, top_k)
  total = check_lengths(config, prompt_tokens.size, max_new_tokens)
  mask = layer_plan.cache_mask(config.model)
  slots = (min(total, mask.n_global + mask.n_local) if mask.n_local
           else total)
  memory.check_cache(config, slots, prompt_tokens.size,
                     f'A prompt of {prompt_tokens.size} tokens plus '
                     f'{max_new_tokens} new ones (a KV cache of {slots:,} '
                     'tokens)')
  checkpoint.require_checkpoint(workdir, step)
  # The checkpoint holds the whole train state; only the params are kept.
  graphdef, params, step = run_state.load_params(config, workdir, step)
  new = generate((graphdef, params), config, prompt_tokens, max_new_tokens,
                 temperature=temperature, top_k=top_k, seed=seed,
                 stop_at_eod=stop_at_eod, eod=tok.eod)
  if stop_at_eod and new.size and new[-1] == tok.eod:
    new = new[:-1]
  # Decoded together, so a character split between the prompt and the new
  # bytes is whole; bytes that are not UTF-8 read as U+FFFD.
  return tok.decode(np.concatenate([given, new])), step
