"""Layer 6, runs: the training pipeline (checkpoints, resume, evaluation), prediction from
saved models, and the benchmark."""
