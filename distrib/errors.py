"""The exceptions `distrib` raises on purpose.

Every message says what was expected, what arrived, and how to fix it. The CLI prints
``str(error)`` as one line on stderr and exits non-zero; nothing else is caught there.
"""

from __future__ import annotations


class DistribError(Exception):
    """Base class of every error `distrib` raises on purpose."""


class ConfigError(DistribError, ValueError):
    """A setting is out of range or two settings contradict each other."""


class DataError(DistribError):
    """A data set, cache file or user array is missing, corrupt or of the wrong shape."""


class ClusterError(DistribError):
    """The Dask scheduler cannot be reached, or it has no workers."""


class OutputError(DistribError):
    """A run folder cannot be written, or a saved run or model cannot be read."""
