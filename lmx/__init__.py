"""lmx: length-extrapolation research on small JAX/Flax Transformers."""

__version__ = '0.1.0'
