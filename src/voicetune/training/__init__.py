"""Training: the loop, step engine, optimizers, schedules, sampler, checkpoints and resume."""
