"""Training: one step (loop), the loop (trainer), losses, the optimiser and its schedule."""
