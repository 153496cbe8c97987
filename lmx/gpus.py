"""What XLA's GPU compiler is told about an NVIDIA GPU that is not attached,
and the per-GPU peaks the ahead-of-time report divides by (``lmx.aot``).

The CUDA plugin of ``jax[cuda12]`` (the ``[gpu]`` extra) compiles for a GPU
described by a ``GpuTargetConfigProto`` in text form (the message of
``xla/stream_executor/device_description.proto``; XLA keeps examples under
``xla/backends/gpu/target_config/specs``): the device's limits (SM count,
clock, shared memory and registers per SM and per block, memory size and
bandwidth, L2) and its compute capability, which picks the code the
compiler emits (``sm_90a`` for Hopper, say). ``target_config`` writes that
text from the figures below; nothing here needs a GPU.

Sources of the figures, per GPU (the ``source`` field): NVIDIA's product
datasheets for the memory, its bandwidth and the dense BF16 Tensor Core
peak (the datasheets print the peak with 2:4 sparsity; dense is half);
the architecture whitepapers for the SM count, boost clock and L2; the
CUDA C++ Programming Guide's table of features per compute capability
("Technical Specifications per Compute Capability") for the shared memory,
registers and threads per SM and per block. Capacities are taken in
decimal units as printed (80 GB = 80e9 bytes), which is a little under what
a device reports (80 GiB), so a "fits" here is on the safe side.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Gpu:
  name: str               # as the driver names it
  peak_flops: float       # dense BF16 Tensor Core FLOP/s
  hbm_bytes: float
  hbm_bandwidth: float    # bytes/s
  sm_count: int
  clock_ghz: float        # boost clock
  l2_bytes: int
  fp32_per_sm: int        # FP32 lanes per SM
  capability: tuple[int, int]
  accelerated: bool       # the 'a' targets (sm_90a, sm_100a)
  smem_per_sm: int        # shared memory per SM, bytes
  smem_per_block: int     # the most one block may opt in to
  source: str


KIB = 1024
MIB = 1024 * KIB

# Per compute capability, the CUDA C++ Programming Guide (Technical
# Specifications per Compute Capability): 8.0 has 164 KB of shared memory
# per SM and 163 KB per block; 9.0 and 10.0 have 228 KB and 227 KB. All
# three: 64K 32-bit registers per SM and per block, 2,048 threads per SM,
# 1,024 per block, 48 KB of shared memory per block without opting in.
GPUS = {
    # NVIDIA A100 Tensor Core GPU datasheet (A100 80GB SXM: 312 TFLOP/s
    # BF16 dense, 80 GB HBM2e at 2,039 GB/s); NVIDIA A100 Tensor Core GPU
    # Architecture whitepaper (108 SMs, 1,410 MHz boost, 40 MB L2, 64 FP32
    # cores per SM).
    'a100': Gpu('NVIDIA A100-SXM4-80GB', 312e12, 80e9, 2039e9, 108, 1.41,
                40 * MIB, 64, (8, 0), False, 164 * KIB, 163 * KIB,
                'A100 datasheet; A100 architecture whitepaper'),
    # NVIDIA H100 Tensor Core GPU datasheet (H100 SXM: 1,979 TFLOP/s BF16
    # with sparsity, so 989 dense; 80 GB at 3.35 TB/s); NVIDIA H100 Tensor
    # Core GPU Architecture whitepaper (132 SMs on the SXM5 part, 50 MB L2,
    # 128 FP32 cores per SM; 1,830 MHz, the clock the 989 TFLOP/s assume:
    # 132 SMs x 4,096 BF16 FLOP per clock).
    'h100': Gpu('NVIDIA H100 80GB HBM3', 989e12, 80e9, 3.35e12, 132, 1.83,
                50 * MIB, 128, (9, 0), True, 228 * KIB, 227 * KIB,
                'H100 datasheet; Hopper architecture whitepaper'),
    # NVIDIA H200 Tensor Core GPU datasheet (H200 SXM: the same 989
    # TFLOP/s dense BF16 as the H100 SXM, 141 GB of HBM3e at 4.8 TB/s); the
    # same GH100 chip, so the H100's SMs, clock and L2.
    'h200': Gpu('NVIDIA H200', 989e12, 141e9, 4.8e12, 132, 1.83, 50 * MIB,
                128, (9, 0), True, 228 * KIB, 227 * KIB,
                'H200 datasheet; Hopper architecture whitepaper'),
    # NVIDIA HGX B200 datasheet (per GPU: 4.5 PFLOP/s FP16/BF16 with
    # sparsity, so 2.25 dense; 180 GB of HBM3e at 8 TB/s); NVIDIA's CUDA
    # GPUs list (compute capability 10.0). The SM count (148), clock and L2
    # (126 MB) are what the CUDA device query reports for a B200: NVIDIA's
    # Blackwell technical brief prints none of them.
    'b200': Gpu('NVIDIA B200', 2.25e15, 180e9, 8e12, 148, 1.965,
                126 * MIB, 128, (10, 0), True, 228 * KIB, 227 * KIB,
                'HGX B200 datasheet; CUDA compute capability table'),
}

# Topology names: a GPU alone, or ':8' for one host of eight (an HGX or
# DGX board).
TOPOLOGIES = ('h100', 'h100:8', 'a100', 'a100:8', 'h200', 'h200:8',
              'b200', 'b200:8')


def parse(topology: str) -> tuple[Gpu, int]:
  """``'h100:8'`` -> (the H100, 8). The name must be in ``TOPOLOGIES``."""
  name, _, count = topology.partition(':')
  return GPUS[name], int(count or 1)


def target_config(gpu: Gpu) -> str:
  """The ``GpuTargetConfigProto`` text that describes ``gpu`` to XLA."""
  major, minor = gpu.capability
  ext = 'ACCELERATED_FEATURES' if gpu.accelerated else 'NONE'
  suffix = 'a' if gpu.accelerated else ''
  fields = [
      ('threads_per_block_limit', 1024),
      ('threads_per_warp', 32),
      ('shared_memory_per_block', 48 * KIB),
      ('shared_memory_per_core', gpu.smem_per_sm),
      ('threads_per_core_limit', 2048),
      ('core_count', gpu.sm_count),
      ('fpus_per_core', gpu.fp32_per_sm),
      ('block_dim_limit_x', 2**31 - 1),
      ('block_dim_limit_y', 65535),
      ('block_dim_limit_z', 65535),
      ('memory_bandwidth', int(gpu.hbm_bandwidth)),
      ('l2_cache_size', gpu.l2_bytes),
      ('clock_rate_ghz', gpu.clock_ghz),
      ('device_memory_size', int(gpu.hbm_bytes)),
      ('shared_memory_per_block_optin', gpu.smem_per_block),
  ]
  lines = ['gpu_device_info {']
  lines += [f'  {k}: {v}' for k, v in fields]
  lines += ['  cuda_compute_capability {', f'    major: {major}',
            f'    minor: {minor}', f'    feature_extension: {ext}', '  }',
            '  registers_per_core_limit: 65536',
            '  registers_per_block_limit: 65536',
            '  thread_dim_limit_x: 1024', '  thread_dim_limit_y: 1024',
            '  thread_dim_limit_z: 64',
            '  device_vendor: "NVIDIA Corporation"',
            f'  platform_version: "Compute Capability {major}.{minor}'
            f'{suffix}"',
            f'  name: "{gpu.name}"', '}',
            'platform_name: "CUDA"',
            # The oldest cuDNN the plugin of jax[cuda12] 0.10.2 accepts
            # (nvidia-cudnn-cu12>=9.8): the fused attention the compiler
            # may emit depends on it.
            'dnn_version_info {', '  major: 9', '  minor: 8', '}',
            f'device_description_str: "{gpu.name}"']
  return '\n'.join(lines) + '\n'
