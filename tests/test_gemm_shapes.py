"""bench/gemm_shapes.py: the products are the workloads' shapes, each
jitted product (and torch's, where torch is installed) computes the product
it names, and the timing and the table work without torch."""

import json
import math
import os

import numpy as np
import pytest

from bench import gemm_shapes

# name -> (batch, m, n, k, stack), from the benchmarks' models: 4,096 rows
# of width 256 and MLP 1024; 64 = 16 x 4 heads of T = 256, head dim 64; the
# 64k evaluation's tiles: 4 heads of 32, 512 x 512, 16 per call.
EXPECTED = {
    'MLP up: y = x W': (1, 4096, 1024, 256, 1),
    'MLP up: dx = g W^T': (1, 4096, 256, 1024, 1),
    'MLP up: dW = x^T g': (1, 256, 1024, 4096, 1),
    'MLP down: y = x W': (1, 4096, 256, 1024, 1),
    'MLP down: dx = g W^T': (1, 4096, 1024, 256, 1),
    'MLP down: dW = x^T g': (1, 1024, 256, 4096, 1),
    'qkv-sized: y = x W': (1, 4096, 256, 256, 1),
    'qkv-sized: dx = g W^T': (1, 4096, 256, 256, 1),
    'qkv-sized: dW = x^T g': (1, 256, 256, 4096, 1),
    'scores s = q k^T': (64, 256, 256, 64, 1),
    'values o = p v': (64, 256, 64, 256, 1),
    'dV = p^T dO': (64, 256, 64, 256, 1),
    'dP = dO v^T': (64, 256, 256, 64, 1),
    'dQ = dS k': (64, 256, 64, 256, 1),
    'dK = dS^T q': (64, 256, 64, 256, 1),
    'tile scores s = q k^T': (4, 512, 512, 32, 16),
    'tile values o = p v': (4, 512, 32, 512, 16),
}


def _t(x):
  return np.swapaxes(x, -1, -2)


# name (after any 'layer: ') -> the product in numpy, of the operands as
# stored ([rows, d] activations, [d_in, d_out] weights, [B, T, K] attention).
NUMPY = {
    'y = x W': lambda x, w: x @ w,
    'dx = g W^T': lambda g, w: g @ w.T,
    'dW = x^T g': lambda x, g: x.T @ g,
    'scores s = q k^T': lambda q, k: q @ _t(k),
    'values o = p v': lambda p, v: p @ v,
    'dV = p^T dO': lambda p, do: _t(p) @ do,
    'dP = dO v^T': lambda do, v: do @ _t(v),
    'dQ = dS k': lambda ds, k: ds @ k,
    'dK = dS^T q': lambda ds, q: _t(ds) @ q,
    'tile scores s = q k^T': lambda q, k: q @ _t(k),
    'tile values o = p v': lambda p, v: p @ v,
}

# Every size different, so a product of the wrong axes fails.
TINY = dict(rows=7, width=3, mlp=5, attn_batch=2, seq=6, head_dim=4,
            tile_heads=3, tile=5, tile_head_dim=2, stack=2)


def _numpy(p, a, b):
  return NUMPY[p.name.split(': ')[-1]](a.astype(np.float64),
                                       b.astype(np.float64))


def test_the_products_have_the_workloads_shapes_and_flops():
  got = {p.name: p for p in gemm_shapes.PRODUCTS}
  assert list(got) == list(EXPECTED)
  groups = [p.group for p in gemm_shapes.PRODUCTS]
  assert groups == (['train dense'] * 9 + ['train attention'] * 6
                    + ['eval 64k tile'] * 2)
  for name, (batch, m, n, k, stack) in EXPECTED.items():
    p = got[name]
    assert (p.batch, p.m, p.n, p.k, p.stack) == (batch, m, n, k, stack), name
    assert p.flops == 2 * batch * m * n * k, name
    # The operands as stored hold m x k and k x n (per batch entry).
    a, b = p.shapes
    size_a, size_b = math.prod(a), math.prod(b)
    assert (size_a, size_b) == (batch * m * k, batch * k * n), name
    if batch > 1:
      assert a[0] == b[0] == batch, name
  assert got['MLP up: y = x W'].flops == 2_147_483_648
  assert got['MLP up: y = x W'].shape == '[4096,256]@[256,1024]'
  assert got['dK = dS^T q'].flops == 536_870_912
  assert got['scores s = q k^T'].shape == '[64,256,64]@[64,64,256]'
  assert got['tile values o = p v'].flops == 67_108_864
  # The stored layouts: weights [d_in, d_out], attention [B, T, K].
  assert got['MLP down: dx = g W^T'].shapes == ((4096, 256), (1024, 256))
  assert got['dV = p^T dO'].shapes == ((64, 256, 256), (64, 256, 64))
  assert got['tile scores s = q k^T'].shapes == ((4, 512, 32), (4, 512, 32))


@pytest.mark.parametrize('dtype', gemm_shapes.DTYPES)
def test_each_jitted_product_computes_the_product_it_names(dtype):
  products = gemm_shapes.make_products(**TINY)
  assert [p.name for p in products] == list(EXPECTED)
  for i, p in enumerate(products):
    arrays = gemm_shapes.operands(p, dtype, seed=i)
    out = gemm_shapes.jax_fn(p)(*gemm_shapes.jax_operands(arrays, dtype))
    want = _numpy(p, *arrays)
    lead = ((p.stack,) if p.stack > 1 else ()) + (
        (p.batch,) if p.batch > 1 else ())
    assert out.shape == lead + (p.m, p.n) == want.shape, p.name
    assert out.dtype == np.float32, p.name   # float32 accumulation
    # bfloat16: the operands are bfloat16 values, exact in float32, and
    # the products accumulate in float32.
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5,
                               err_msg=p.name)


def test_the_torch_products_compute_the_same():
  pytest.importorskip('torch')
  for i, p in enumerate(gemm_shapes.make_products(**TINY)):
    arrays = gemm_shapes.operands(p, seed=i)
    out = gemm_shapes.torch_fn(p)(*gemm_shapes.torch_operands(arrays))
    np.testing.assert_allclose(gemm_shapes._torch_numpy(out),
                               _numpy(p, *arrays), rtol=1e-5, atol=1e-5,
                               err_msg=p.name)


def test_the_timing_is_of_single_calls_and_positive():
  p = gemm_shapes.make_products(**TINY)[0]
  args = gemm_shapes.jax_operands(gemm_shapes.operands(p))
  seconds, first, load = gemm_shapes.time_jax(gemm_shapes.jax_fn(p), args, 3)
  assert load is None or (math.isfinite(load) and load >= 0.0)
  assert len(seconds) == 3
  assert all(math.isfinite(s) and s > 0 for s in seconds)
  np.testing.assert_allclose(np.asarray(first),
                             _numpy(p, *gemm_shapes.operands(p)), rtol=1e-5)


def test_other_load_is_the_busy_time_not_this_process_s():
  cores = os.cpu_count()
  # 2 busy CPU seconds in 1 s, 1.5 of them this process's own.
  assert gemm_shapes.other_load((0.0, 10.0, 1.0), (1.0, 12.0, 2.5)) == (
      pytest.approx(0.5 / cores))
  # Tick rounding may make this process's time exceed the machine's.
  assert gemm_shapes.other_load((0.0, 10.0, 1.0), (1.0, 10.5, 1.7)) == 0.0
  assert gemm_shapes.other_load(None, (1.0, 10.5, 1.7)) is None
  reading = gemm_shapes.cpu_seconds()
  if reading is not None:   # Linux
    wall, busy, own = reading
    assert wall > 0 and busy >= 0 and own > 0


def test_a_run_without_torch_reports_jax_alone():
  products = gemm_shapes.make_products(**TINY)
  products = [products[0], products[-1]]   # one plain, one stacked
  r = gemm_shapes.run(products, 2, warmup_s=0.01, log=lambda _: None)
  assert not r['torch'] and r['machine']['cores'] >= 1
  plain, stacked = r['rows']
  for row, p in zip(r['rows'], products):
    assert row['flops'] == p.flops and 'torch' not in row
    assert len(row['jax']['seconds']) == 2
    median = float(np.median(row['jax']['seconds'])) / p.stack
    assert row['jax']['median_ms'] == pytest.approx(1e3 * median)
    assert row['jax']['gflops'] == pytest.approx(p.flops / median / 1e9)
  assert stacked['stack'] == 2 and plain['stack'] == 1
  text = gemm_shapes.table(r)
  assert 'torch not available: JAX only' in text
  assert 'torch ms' not in text and '| train dense | MLP up: y = x W |' in text
  assert '(per item of 2)' in text
  assert json.loads(json.dumps(r)) == r
  # A row timed while other processes were busy is marked.
  plain['jax']['other_load'] = 0.0
  stacked['jax']['other_load'] = gemm_shapes.LOAD_LIMIT + 0.1
  assert not gemm_shapes.loaded(plain) and gemm_shapes.loaded(stacked)
  lines = gemm_shapes.table(r).splitlines()
  assert [line.endswith('(!) |') for line in lines if '(per item' in line
          or 'y = x W' in line] == [False, True]
  assert lines[-1].startswith('(!) 1 row(s): other processes')
