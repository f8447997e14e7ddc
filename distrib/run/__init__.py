"""Layer 6, runs: the training pipeline (checkpoints, resume, evaluation) and prediction from
saved models."""
