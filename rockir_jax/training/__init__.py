"""The training core: losses, the optimiser, sharded steps, branch parallelism, checkpoints, metrics logs."""
