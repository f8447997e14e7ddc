"""distrib: logistic regression on MNIST, trained across a Dask cluster.

``import distrib`` loads only the settings and errors; the estimator, the data sets, the
model and the training job (and scikit-learn, Dask arrays...) load on first use of their
names, so the command line starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from distrib._version import __version__
from distrib.config import ClusterConfig, TrainConfig
from distrib.errors import ClusterError, ConfigError, DataError, DistribError, OutputError

if TYPE_CHECKING:
    from distrib.data.datasets import Dataset, fetch_mnist, load_dataset
    from distrib.estimator import DaskLogisticRegression
    from distrib.estimator_cv import DaskLogisticRegressionCV
    from distrib.linear.model import LinearModel
    from distrib.run.train import RunResult, train

# name -> the module that defines it, imported when the name is first used
_LAZY = {
    "Dataset": "distrib.data.datasets",
    "fetch_mnist": "distrib.data.datasets",
    "load_dataset": "distrib.data.datasets",
    "DaskLogisticRegression": "distrib.estimator",
    "DaskLogisticRegressionCV": "distrib.estimator_cv",
    "LinearModel": "distrib.linear.model",
    "RunResult": "distrib.run.train",
    "train": "distrib.run.train",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later uses skip this function
        return value
    raise AttributeError(f"module 'distrib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ClusterConfig",
    "ClusterError",
    "ConfigError",
    "DaskLogisticRegression",
    "DaskLogisticRegressionCV",
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
