"""Code that serves one experiment (a sweep declared in configs/sweeps/),
kept out of the library."""
