"""Layer 1, data: the MNIST and digits caches as Dask arrays, and the train/test split."""
