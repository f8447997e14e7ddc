"""``distrib data make``: a split's training rows, grown if asked, written once as a row
store (`distrib.parallel.row_store`) by the cluster's workers: the data set a streamed fit
reads (``distrib train --rows disk`` with the same settings finds it made).

The default makes mnist8m's size: 135 infinite-MNIST-style variants of each of MNIST's
60,000 training images (elastic deformations, `distrib.data.grow`), 8.1 million rows; the
test rows stay MNIST's own 10,000.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from distrib.config import TrainConfig
from distrib.data.arrays import load_arrays
from distrib.data.datasets import data_home, load_dataset
from distrib.data.grow import check_grow
from distrib.data.split import compact_labels, split_arrays
from distrib.errors import ConfigError
from distrib.parallel.prepared import (
    prepare_row_store,
    row_store_folder,
    split_key,
    workers_blind_to_paths,
)
from distrib.parallel.row_store import open_row_store


def make_training_rows(
    config: TrainConfig,
    client: Any,
    home: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write ``config``'s training rows (data set, split, scale, grow, deform) as a row
    store under the data home, made on ``client``'s workers; reused where made already.

    Returns
    -------
    dict
        The store's folder, rows, columns, stored entries, bytes on disk, digest, the
        seconds it took, and whether it was made now (``made``) or found.
    """
    say = log or (lambda _msg: None)
    dataset = (
        load_arrays(config.data)
        if config.data is not None
        else load_dataset(config.dataset, home, log=log)
    )
    check_grow(config.grow, dataset.image_shape, config.deform)
    if config.grow > 1:
        blind = workers_blind_to_paths(client, list(dataset.files))
        if blind:
            raise ConfigError(
                f"the rows are made on the workers from {os.path.dirname(dataset.files[0])}, "
                f"which worker(s) {', '.join(blind[:3])} cannot see as this client does: "
                "mount that folder at the same path on every worker"
            )
    parts = split_arrays(dataset, config.split, config.scale, config.grow, config.deform)
    y_train = compact_labels(parts.y_train.compute(scheduler="threads"))
    n_rows = len(y_train)
    say(f"making {n_rows:,} training rows ({config.grow} variant(s) of each of "
        f"{n_rows // config.grow:,} images, {config.deform}) on the cluster")  # fmt: skip
    started = time.perf_counter()
    key = split_key(dataset, config.split, config.scale)
    found = open_row_store(row_store_folder(parts, data_home(home), key)) is not None
    store = prepare_row_store(parts, y_train, data_home(home), key, client=client, log=say)
    seconds = time.perf_counter() - started
    return {
        "folder": store.folder,
        "rows": store.shape[0],
        "columns": store.shape[1],
        "nnz": int(store.key()["nnz"]),
        "bytes": store.nbytes(),
        "digest": store.digest(),
        "seconds": seconds,
        "made": not found,
    }
