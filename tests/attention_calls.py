"""Tests' shorthand for one attention call: a ``Spec`` and a ``Call`` from
keyword arguments (``lmx.model.attention``)."""

import types
from typing import Optional

import jax
import jax.numpy as jnp

from lmx.model import attention as A
from lmx.positions import far as far_lib


def spec(backend: str = 'dense', *, mask=A.CAUSAL, window: int = 0,
         block: int = 512, threshold: int = 2048,
         accelerator_threshold: int = 512) -> A.Spec:
  """A spec; ``window`` > 0: a far branch from that distance on (the far
  positions come with the call's far branch)."""
  return A.Spec(mask=mask, far=far_lib.Clamp(window) if window else None,
                backend=backend, block=block, threshold=threshold,
                accelerator_threshold=accelerator_threshold)


def call(near, v=None, *, far=None, bias_fn=None, encoding=None,
         content=None, prefix=None, logit_scale=None) -> A.Call:
  if encoding is not None and bias_fn is None:
    bias_fn = encoding.bias
  return A.Call(near, v, far, bias_fn=bias_fn, encoding=encoding,
                content=content, prefix=prefix, logit_scale=logit_scale)


def run(backend: str, near, v, *, mask=A.CAUSAL, window: int = 0,
        block: int = 512, threshold: int = 2048,
        accelerator_threshold: int = 512, **kw):
  """``[B, T, H, K]``: attention through ``backend`` (or ``auto``'s walk)."""
  return A.attention(
      spec(backend, mask=mask, window=window, block=block,
           threshold=threshold, accelerator_threshold=accelerator_threshold),
      call(near, v, **kw))


def scores(near, far, window: int, bias_fn, **kw):
  """Unmasked float32 logits ``[B, H, T, S]`` (``attention.scores``)."""
  return A.scores(spec(window=window), call(near, far=far, bias_fn=bias_fn,
                                           **kw))


def shapes(num_keys: int, q_dtype=jnp.float32, head_dim: int = 16,
           num_queries: Optional[int] = None) -> A.Branch:
  """A branch of shapes alone, for the backend rules (nothing is
  computed)."""
  t = num_queries or num_keys
  q = jax.ShapeDtypeStruct((1, t, 1, head_dim), q_dtype)
  k = jax.ShapeDtypeStruct((1, num_keys, 1, head_dim), q_dtype)
  return A.Branch(q, k, jax.ShapeDtypeStruct((1, t), jnp.int32),
                  jax.ShapeDtypeStruct((1, num_keys), jnp.int32))


def chosen(requested: str, *, num_keys: int, q_dtype=jnp.float32,
           head_dim: int = 16, far: bool = False, threshold: int = 2048,
           accelerator_threshold: int = 512, content: bool = False,
           tiled: bool = True, sinks: bool = False, encoding=None) -> str:
  """The name of the backend the walk takes for a call of these shapes
  (``content``: with a content term, ``tiled`` or not)."""
  near = shapes(num_keys, q_dtype, head_dim)
  prefix = far_lib.Prefix(None, None) if sinks else None
  content = types.SimpleNamespace(tiled=tiled) if content else None
  c = call(near, far=near if far else None, encoding=encoding,
           content=content, prefix=prefix)
  return A.choose(spec(requested, window=1 if far else 0,
                       threshold=threshold,
                       accelerator_threshold=accelerator_threshold), c).name


def why_not(backend: A.Backend, *, num_keys: int = 8, q_dtype=jnp.float32,
            head_dim: int = 16, far: bool = False, content: bool = False,
            sinks: bool = False, encoding=None, bias_fn=None,
            logit_scale: bool = False, block: int = 512) -> Optional[str]:
  """Why ``backend`` cannot take a call of these shapes, or None."""
  near = shapes(num_keys, q_dtype, head_dim)
  c = call(near, far=near if far else None, encoding=encoding,
           bias_fn=bias_fn,
           content=types.SimpleNamespace(tiled=True) if content else None,
           prefix=far_lib.Prefix(None, None) if sinks else None,
           logit_scale=near.q if logit_scale else None)
  return backend.unavailable(spec(backend.name, window=1 if far else 0,
                                  block=block), c)


def flash_applies(*, content: bool = False, encoding=None) -> bool:
  """Whether ``auto`` wants the GPU flash kernel for such a call."""
  return A.gpu_flash_applies(call(
      shapes(8), encoding=encoding,
      content=types.SimpleNamespace(tiled=True) if content else None))
