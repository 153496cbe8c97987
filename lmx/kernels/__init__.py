"""Accelerator kernels, each in a module of its own (see ARCHITECTURE.md:
kernels for one accelerator are chosen by platform, and no other platform
pays for them).

* ``flash``: a fused Pallas attention (forward and backward) that computes
  the position bias inside the kernel from the position tiles.
"""
