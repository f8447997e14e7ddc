"""distrib: one-vs-rest logistic regression on MNIST, trained across a Dask cluster."""

from __future__ import annotations

from distrib._version import __version__
from distrib.config import ClusterConfig, TrainConfig
from distrib.data.datasets import Dataset, fetch_mnist, load_dataset
from distrib.errors import ClusterError, ConfigError, DataError, DistribError, OutputError
from distrib.estimator import DaskLogisticRegression
from distrib.linear.model import LinearModel
from distrib.run.train import RunResult, train

__all__ = [
    "ClusterConfig",
    "ClusterError",
    "ConfigError",
    "DaskLogisticRegression",
    "DataError",
    "Dataset",
    "DistribError",
    "LinearModel",
    "OutputError",
    "RunResult",
    "TrainConfig",
    "__version__",
    "fetch_mnist",
    "load_dataset",
    "train",
]
