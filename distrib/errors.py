"""The exceptions `distrib` raises on purpose.

Each is also the built-in exception it means, so a caller's ``except ValueError`` (bad
settings or data), ``except ConnectionError`` (the cluster) or ``except OSError`` (files)
catches distrib's too; ``except DistribError`` catches exactly distrib's. Every message says
what was expected, what arrived, and how to fix it. The CLI prints ``str(error)`` as one line
on stderr and exits non-zero; nothing else is caught there.
"""

from __future__ import annotations


class DistribError(Exception):
    """Base class of every error `distrib` raises on purpose."""


class ConfigError(DistribError, ValueError):
    """A setting is out of range or two settings contradict each other."""


class DataError(DistribError, ValueError):
    """A data set, cache file or user array is missing, corrupt or of the wrong shape."""


class ClusterError(DistribError, ConnectionError):
    """The Dask scheduler cannot be reached or was lost, it has no workers, or its workers
    keep dying under the same work."""


class OutputError(DistribError, OSError):
    """A run folder cannot be written, or a saved run or model cannot be read."""
