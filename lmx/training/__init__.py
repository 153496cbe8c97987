"""Training: the train state under the mesh, the jitted step, the loop, checkpoints and metrics."""
