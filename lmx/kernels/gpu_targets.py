"""GPU compile targets for ahead-of-time compilation without a GPU.

XLA compiles for a GPU it does not see from a ``GpuTargetConfigProto``
(the text format of XLA's ``xla/backends/gpu/target_config/specs/*.txtpb``):
``jax.experimental.topologies.get_topology_desc(platform='cuda',
target_config=<text>, topology='1x1x1')`` gives devices to compile for,
with JAX itself on the CPU (``JAX_PLATFORMS=cpu``, and
``JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1`` where no CUDA driver is installed).
Needs jax[cuda12] (the CUDA plugin and its compiler); no GPU.

``H100_SXM`` is a minimal config written from NVIDIA's published figures
for the H100 SXM5 80 GB (132 SMs, compute capability 9.0, 1.98 GHz boost
clock, 50 MB L2, 3.35 TB/s, 228 KB shared memory per SM): what the
compiler needs to pick code and tile sizes, not a measured device
description.
"""

from __future__ import annotations

H100_SXM = """
gpu_device_info {
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: 84942979072
  shared_memory_per_block_optin: 232448
  cuda_compute_capability {
    major: 9
    minor: 0
  }
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info {
  major: 9
  minor: 8
}
device_description_str: "NVIDIA H100 80GB HBM3"
"""

TARGETS = {'h100': H100_SXM}


def devices(target: str = 'h100'):
  """The compile-only devices of one GPU of ``target`` (a key of
  ``TARGETS``). Raises where jax[cuda12] is not installed."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  topo = topologies.get_topology_desc(
      platform='cuda', target_config=TARGETS[target], topology='1x1x1')
  return topo.devices
