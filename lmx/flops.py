"""The model FLOPs count of lmx's decoder-only Transformer, and the device
peaks it is divided by for model FLOPs utilisation (MFU).

One count serves the ahead-of-time report (``lmx.aot``), the benchmarks
(``bench/train_throughput.py``, ``bench/gpu_check.py``) and the trainer's
log line, so they cannot disagree.

Convention (PaLM, Chowdhery et al. 2022, appendix B; MaxText's
``calculate_tflops_training_per_device`` before it halved the causal
attention term): a multiply-add is 2 FLOPs and the backward pass costs twice
the forward, so training is 3x the forward. Per token, the forward does

* ``2 N`` in the weight matmuls, N their weights: per layer ``4 d^2`` (the
  fused q, k, v projection ``d x 3d`` and the output ``d x d``) and
  ``2 d f`` (the MLP's ``d x f`` and ``f x d``), and the LM head ``d V``
  (tied or not, its product is done); with gated attention, its gate's
  ``d x Hk`` (elementwise) or ``d x H`` (headwise) per layer. The embedding lookup, norms, biases,
  position encodings and softmax are not counted.
* ``4 T d`` per layer in attention: ``q k^T`` and ``a v`` are ``T d``
  multiply-adds each for a query over all T keys. The full ``T x T``
  product is counted, with no saving for the causal mask: this is the
  convention PaLM's MFU uses, and the product a dense backend computes.

So ``train_flops_per_token = 6 N + 12 L T d``. Example, ``d = 256``,
``L = 4``, ``f = 1024``, ``V = 257``, ``T = 256`` (bench/train_throughput's
model): ``N = 4 (4 * 256^2 + 2 * 256 * 1024) + 256 * 257 = 3,211,520``, so
``6 N = 19,269,120`` and ``12 L T d = 3,145,728``: 22,414,848 per token.

Per-layer settings (windows, sinks) do not change the count: it is the
model's work under the full causal mask at ``seq_len``, the MFU numerator,
not a measure of what a backend skips (``hardware_flops_per_token`` is).
"""

from __future__ import annotations

from typing import Any, Optional

from lmx import gpus
from lmx.model import gating

# Dense bfloat16 peak FLOP/s per chip, from the system-architecture pages of
# the Cloud TPU documentation (docs.cloud.google.com/tpu/docs/v5e, /v5p,
# /v6e). The NVIDIA GPUs' are in lmx.gpus.
TPU_PEAKS = {'v5e': 197e12, 'v5p': 459e12, 'v6e': 918e12}

# ``jax.Device.device_kind`` of each TPU generation above.
TPU_KINDS = {'TPU v5 lite': 'v5e', 'TPU v5e': 'v5e', 'TPU v5': 'v5p',
             'TPU v5p': 'v5p', 'TPU v6 lite': 'v6e', 'TPU v6e': 'v6e'}


def _get(m: Any, name: str) -> Any:
  """``m.name`` of a model config, or ``m[name]`` of a plain dict."""
  return m[name] if isinstance(m, dict) else getattr(m, name)


def _field(m: Any, name: str) -> int:
  return int(_get(m, name))


def matmul_params(m: Any) -> int:
  """N: the weights of the model's matmuls (module docstring), gated
  attention's ``W_theta`` included (``lmx.model.gating``)."""
  d, f = _field(m, 'd_model'), _field(m, 'mlp_dim')
  kind = m.get('attention_gate', gating.OFF)
  h = _field(m, 'num_heads') if kind != gating.OFF else 1
  gate = d * gating.gate_width(kind, h, d // h)
  return (_field(m, 'num_layers') * (4 * d * d + 2 * d * f + gate)
          + d * _field(m, 'vocab_size'))


def attention_flops_per_token(m: Any, seq_len: int) -> int:
  """Forward FLOPs per token of the attention products ``q k^T`` and
  ``a v`` over the full ``T x T``: ``4 L T d``."""
  return 4 * _field(m, 'num_layers') * int(seq_len) * _field(m, 'd_model')


def forward_flops_per_token(m: Any, seq_len: int) -> int:
  """Forward FLOPs per token (an evaluation's): ``2 N + 4 L T d``."""
  return 2 * matmul_params(m) + attention_flops_per_token(m, seq_len)


def train_flops_per_token(m: Any, seq_len: int) -> int:
  """Training FLOPs per token, forward and backward: three forwards,
  ``6 N + 12 L T d`` (PaLM's count; the module docstring)."""
  return 3 * forward_flops_per_token(m, seq_len)


def hardware_flops_per_token(m: Any, seq_len: int, dense_limit: int) -> float:
  """What the device computes per training token, against the model count
  of ``train_flops_per_token``: a tiled backend (``chunked``, ``flash``, and
  ``auto`` above ``dense_limit`` keys) skips the tiles the causal mask
  hides, about half the attention products, but recomputes their forward in
  the backward pass (4 passes of the half instead of 3 of the whole); under
  ``remat='full'`` the backward recomputes the forward of everything."""
  weights = 6 * matmul_params(m)
  attn = 3 * attention_flops_per_token(m, seq_len)
  attention, remat = str(_get(m, 'attention')), str(_get(m, 'remat'))
  tiled = attention in ('chunked', 'flash') or (
      attention == 'auto' and int(seq_len) > dense_limit)
  if tiled:
    attn = attn / 2 * 4 / 3
  if remat == 'full':
    weights = weights * 4 / 3
    if not tiled:
      attn = attn * 4 / 3
  return weights + attn


def device_peak(device) -> Optional[float]:
  """The dense bfloat16 peak FLOP/s of one ``jax.Device``, or None where
  none is known (a CPU, a GPU not in ``lmx.gpus.GPUS``): MFU is then not
  reported rather than guessed. A float32 model is still measured against
  the bfloat16 peak, as MaxText does."""
  kind = getattr(device, 'device_kind', '')
  for gpu in gpus.GPUS.values():
    if kind == gpu.name:
      return gpu.peak_flops
  tpu = TPU_KINDS.get(kind)
  return TPU_PEAKS[tpu] if tpu else None
