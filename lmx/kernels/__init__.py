"""Accelerator kernels, each in a module of its own (see ARCHITECTURE.md:
kernels for one accelerator are chosen by platform, and no other platform
pays for them).

* ``flash``: a fused Pallas attention (forward and backward) that computes
  the position bias inside the kernel from the position tiles (TPU,
  Mosaic).
* ``flash_gpu``: the same kernel for GPUs (Pallas lowered through Triton).
* ``tiles``: what the two share: the visited tiles, a tile's mask, bias
  and scores, the online softmax, the backward's tile gradients.
* ``gpu_targets``: GPU target configs for compiling without a GPU.
"""
