"""Token-level distillation from a teacher's top-k logprobs: alignment to the student's tokens and targets."""
