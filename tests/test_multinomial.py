"""The multinomial fit's parts: time accounting per evaluation, blocks on a cluster."""

from __future__ import annotations

import numpy as np
import pytest
from distributed import Client
from sklearn.datasets import load_digits

from distrib.parallel.block_hosts import ClusterBlocks
from distrib.parallel.multinomial import (
    BlockResult,
    block_loss_grad,
    busiest_worker_seconds,
    load_block,
)
from distrib.parallel.transfer import InMemoryArrays


def _result(worker: str, started: float, seconds: float) -> BlockResult:
    return BlockResult(0.0, np.zeros((2, 3)), seconds, worker, started)


def test_busiest_worker_spans_its_blocks_one_after_another_or_at_once() -> None:
    results = [
        _result("a", 100.0, 0.010),  # a: two blocks one after another -> 0.025 s
        _result("a", 100.010, 0.015),
        _result("b", 100.0, 0.020),  # b: two blocks at once on two threads -> 0.021 s
        _result("b", 100.001, 0.020),
    ]
    assert busiest_worker_seconds(results) == pytest.approx(0.025)
    assert busiest_worker_seconds(results[2:]) == pytest.approx(0.021)
    assert busiest_worker_seconds([]) == 0.0


def test_cluster_blocks_give_the_same_results_over_channels_and_over_dask(
    cluster_client: Client,
) -> None:
    """Each block's loss and gradient are the same whether the driver calls its host over the
    direct channel or through distributed's RPC, and equal to evaluating its rows here."""
    X, y = load_digits(return_X_y=True)
    data = InMemoryArrays(X.astype(np.float32), y)
    rng = np.random.default_rng(0)
    coef, intercept = rng.normal(size=(10, 64)) * 0.01, rng.normal(size=10)
    expected = [
        block_loss_grad(load_block(data, a, b, np.arange(10)), coef, intercept, None)
        for a, b in ((0, 898), (898, len(y)))
    ]
    for direct in (True, False):
        runner = ClusterBlocks.from_training_data(cluster_client, data, np.arange(10))
        runner.direct = direct
        try:
            results = runner.evaluate(coef, intercept, None)
            calls = {b["calls"] for b in runner.describe()}
            assert calls == {"direct channel" if direct else "dask rpc"}
        finally:
            runner.release()
        assert [r.loss for r in results] == [r.loss for r in expected]
        for ours, theirs in zip(results, expected, strict=True):
            np.testing.assert_array_equal(ours.grad, theirs.grad)
