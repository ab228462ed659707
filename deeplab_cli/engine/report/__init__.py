"""What a run shows: TensorBoard and console logging, figures, the pictures of an evaluation."""
