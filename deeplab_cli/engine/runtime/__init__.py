"""What a run needs around the model: checkpoints, torch.distributed, precision, signals, SLURM."""
