"""bench/profile_step.py's reading of a trace: the optimized HLO parsed into
instructions, each given a kind of work, and trace events summed per step.
(The trace itself needs xprof, which the suite does not install.)"""

import jax
import jax.numpy as jnp
import pytest

from bench import profile_step


@pytest.fixture(scope='module')
def hlo():
  def f(x_NxD, w_DxF, q_BxHxTxK):
    dense = jnp.dot(x_NxD, w_DxF)
    logits = jnp.einsum('bhtk,bhsk->bhts', q_BxHxTxK, q_BxHxTxK)
    return dense, jax.nn.softmax(logits, axis=-1), jnp.transpose(x_NxD)
  args = (jnp.ones((64, 32)), jnp.ones((32, 48)), jnp.ones((2, 3, 16, 8)))
  return profile_step.parse_hlo(jax.jit(f).lower(*args).compile().as_text())


def test_the_products_and_the_softmax_get_their_kinds(hlo):
  by_kind = {}
  for instr in hlo.values():
    by_kind.setdefault(profile_step.kind(instr), []).append(instr)
  (dense,) = by_kind['dense GEMM']
  assert dense.shape == 'f32[64,48]'
  assert [i.shape for i in by_kind['attention GEMM']] == ['f32[2,3,16,16]']
  assert any('exponential' in i.ops for i in by_kind['softmax / exp'])
  assert all(k in profile_step.KINDS for k in by_kind)


def test_events_are_summed_per_step_and_instruction(hlo):
  dense = next(n for n, i in hlo.items()
               if profile_step.kind(i) == 'dense GEMM')
  other = next(n for n, i in hlo.items()
               if profile_step.kind(i) == 'attention GEMM')
  events = [
      {'ph': 'X', 'name': dense, 'dur': 3000.0},
      {'ph': 'X', 'name': dense, 'dur': 1000.0},
      {'ph': 'X', 'name': other, 'dur': 500.0},
      # Not instructions of the module, or not complete events: left out.
      {'ph': 'X', 'name': 'ThunkExecutor::Execute', 'dur': 1e6},
      {'ph': 'M', 'name': dense},
  ]
  s = profile_step.summarize(events, hlo, steps=2)
  assert s['total_ms'] == pytest.approx(2.25)
  assert s['kinds']['dense GEMM'] == pytest.approx(2.0)
  assert s['kinds']['attention GEMM'] == pytest.approx(0.25)
  assert [r['name'] for r in s['ops']] == [dense, other]
  assert sum(s['kinds'].values()) == pytest.approx(s['total_ms'])


def test_the_peers_aten_operations_get_the_same_kinds():
  from bench import train_throughput
  kind = train_throughput.torch_kind
  assert kind('aten::addmm') == kind('aten::mm') == 'dense GEMM'
  assert kind('aten::bmm') == 'attention GEMM'
  assert kind('aten::_scaled_dot_product_flash_attention_for_cpu') == (
      'attention GEMM')
  assert kind('aten::_softmax_backward_data') == 'softmax / exp'
  assert kind('aten::copy_') == 'transpose / copy'
  assert kind('aten::_foreach_norm') == 'reduction'
  assert kind('aten::mul_') == kind('aten::gelu_backward') == 'elementwise'
  assert kind('autograd::engine::evaluate_function: MmBackward0') == 'other'
  kinds = {k for k, _ in train_throughput.TORCH_KINDS}
  assert kinds | {'elementwise', 'other'} == set(profile_step.KINDS)
