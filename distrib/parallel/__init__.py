"""Layer 3, the cluster: connecting, moving the training rows, one-vs-rest tasks through
joblib, row blocks held by worker actors for the multinomial fit."""
