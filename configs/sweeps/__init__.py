"""Sweep declarations: ``get_sweep(arg)`` per file, run by sweep.py."""
