"""Layer 2, the model: linear coefficients, their files, and the softmax loss kernel."""
