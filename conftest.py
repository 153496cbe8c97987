"""pytest setup shared by every test: the repo root is importable (configs/),
and JAX runs on the CPU."""

import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
