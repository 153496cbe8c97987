"""lmx.flops: the one model FLOPs count, by hand and against XLA's."""

import jax
import jax.numpy as jnp
import pytest

from lmx import flops
from lmx import gpus
from lmx.training import run_state
from lmx.training import trainer


def _small(m):
  m.d_model, m.num_layers, m.mlp_dim, m.vocab_size = 2, 1, 4, 3


def test_counts_by_hand(tiny_config):
  m = tiny_config('alibi').model
  _small(m)
  # d = 2, L = 1, f = 4, V = 3, T = 5.
  # N: per layer 4 d^2 = 16 (q, k, v and output projections) plus
  # 2 d f = 16 (the MLP), and the head d V = 6: N = 38.
  assert flops.matmul_params(m) == 38
  # Attention forward: 4 L T d = 4 x 1 x 5 x 2 = 40 (q k^T and a v over the
  # full 5 x 5, 2 FLOPs per multiply-add).
  assert flops.attention_flops_per_token(m, 5) == 40
  # Forward: 2 N + 40 = 76 + 40 = 116.
  assert flops.forward_flops_per_token(m, 5) == 116
  # Training, three forwards: 6 N + 12 L T d = 228 + 120 = 348.
  assert flops.train_flops_per_token(m, 5) == 348
  # A plain dict is counted the same.
  assert flops.train_flops_per_token(
      dict(d_model=2, num_layers=1, mlp_dim=4, vocab_size=3), 5) == 348


def test_hardware_flops_add_what_remat_and_tiles_recompute(tiny_config):
  m = tiny_config('alibi').model
  _small(m)
  m.attention, m.remat = 'dense', 'off'
  # Dense computes the model count: 228 + 120.
  assert flops.hardware_flops_per_token(m, 5, dense_limit=512) == 348
  # Tiles skip the causal half of the attention products (120 -> 60) but
  # recompute their forward in the backward (60 x 4 / 3 = 80).
  m.attention = 'chunked'
  assert flops.hardware_flops_per_token(m, 5, dense_limit=512) == 228 + 80
  # auto is tiled above the dense limit only.
  m.attention = 'auto'
  assert flops.hardware_flops_per_token(m, 5, dense_limit=512) == 348
  assert flops.hardware_flops_per_token(m, 5, dense_limit=4) == 228 + 80
  # Full remat recomputes the weight products' forward: 228 -> 304, and the
  # dense attention's: 120 -> 160.
  m.attention, m.remat = 'dense', 'full'
  assert flops.hardware_flops_per_token(m, 5, dense_limit=512) == 304 + 160


def test_train_count_is_near_xla_cost_analysis(tiny_config):
  """XLA's count of a compiled dense train step on the CPU is within a
  factor of two of the model count: it adds elementwise work (softmax,
  norms, AdamW) and the embedding's scatter, the model count leaves them
  out."""
  c = tiny_config('none', **{'model.attention': 'dense'})
  c.model.d_model, c.model.num_layers, c.model.num_heads = 64, 2, 2
  c.model.mlp_dim, c.train.seq_len, c.train.batch_size = 256, 64, 2
  tx = run_state.make_optimizer(c.train)
  graphdef, params = run_state.init_model(c)
  state = run_state.init_state(c, params, tx)
  step = trainer.make_train_step(graphdef, tx, c)
  t = c.train.seq_len
  tokens = jnp.zeros((c.train.batch_size, t), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(t), tokens.shape)
  batch = {'inputs': tokens, 'targets': tokens, 'positions': positions}
  cost = step.lower(state, batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  model = flops.train_flops_per_token(c.model, t) * c.train.batch_size * t
  assert 0.5 * model <= cost['flops'] <= 2 * model, (cost['flops'], model)


@pytest.mark.parametrize('kind,peak', [
    (gpus.GPUS['h100'].name, 989e12), ('TPU v5 lite', 197e12),
    ('TPU v6 lite', 918e12), ('cpu', None), ('NVIDIA H100 PCIe', None)])
def test_device_peaks_are_the_published_ones_or_none(kind, peak):
  class Device:
    device_kind = kind
  assert flops.device_peak(Device()) == peak


def test_a_cpu_has_no_peak():
  assert flops.device_peak(jax.devices('cpu')[0]) is None
