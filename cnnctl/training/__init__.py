"""Training: the loop (engine), run assembly and its directory, hooks, optimizers and schedules, checkpoints,
torchrun, the run lock, the recorders and the learning-rate finder."""
