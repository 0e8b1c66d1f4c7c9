"""Training: data sets, the loss, EMA, checkpoints, the loop and distributed set-up."""
