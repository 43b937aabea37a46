"""Training, evaluation and refinement: losses, metrics, sharded steps, checkpoints, loops."""
