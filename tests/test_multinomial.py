"""The multinomial fit's parts: time accounting per evaluation, blocks on a cluster."""

from __future__ import annotations

import numpy as np
import pytest
from distributed import Client
from sklearn.datasets import load_digits

from distrib.linear.multinomial import busiest_worker_seconds
from distrib.parallel.blocks.block import block_loss_grad, load_block
from distrib.parallel.blocks.partial_sums import Timing, total
from distrib.parallel.blocks.runner import ClusterBlocks
from distrib.parallel.rows import InMemoryArrays


def _result(worker: str, started: float, seconds: float) -> Timing:
    return Timing(worker, started, seconds)


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


def test_cluster_blocks_give_the_same_sum_over_channels_relays_and_dask(
    cluster_client: Client,
) -> None:
    """The sum over the blocks is the same, bit for bit, whether the driver calls each host
    over its direct channel, lets one host relay for the other, or calls them through
    distributed's RPC; and equal to evaluating the same blocks here, summed the same way."""
    X, y = load_digits(return_X_y=True)
    data = InMemoryArrays(X.astype(np.float32), y)
    rng = np.random.default_rng(0)
    coef, intercept = rng.normal(size=(10, 64)) * 0.01, rng.normal(size=10)
    blocks = [load_block(data, a, b, np.arange(10)) for a, b in ((0, 898), (898, len(y)))]
    here = {i: block_loss_grad(block, coef, intercept, None) for i, block in enumerate(blocks)}
    expected = total(((0, 1),), here)
    for direct, relay, calls, relayed in (
        (True, False, "direct channel", 0),
        (True, True, "direct channel", 1),
        (False, True, "dask rpc", 0),
    ):
        runner = ClusterBlocks.from_training_data(
            cluster_client, data, np.arange(10), direct=direct, relay=relay, groups=1
        )
        try:
            evaluation = runner.evaluate(coef, intercept, None)
            assert {b["calls"] for b in runner.describe()} == {calls}
        finally:
            runner.release()
        assert runner.tree == ((0, 1),)
        assert evaluation.relayed == relayed
        assert evaluation.messages == (0 if calls == "dask rpc" else 2 - relayed)
        assert evaluation.total.loss == expected.loss
        np.testing.assert_array_equal(evaluation.total.grad, expected.grad)
        assert len({t.worker for t in evaluation.total.timings}) == 2


@pytest.mark.parametrize(
    ("n_classes", "solver"), [(10, "newton-cg"), (10, "lbfgs"), (2, "newton-cg")]
)
def test_a_path_of_cs_warm_started_reaches_each_cold_fit_s_optimum_in_fewer_iterations(
    n_classes: int, solver: str
) -> None:
    """`fit_multinomial_configs`: the blocks made once, each C started from the one before
    (two classes: the binomial row split into the symmetric two-row start) reaches the
    optimum of a fit started from zero, in fewer iterations all told."""
    from distrib.config import TrainConfig
    from distrib.parallel.fitting import fit_multinomial_configs

    X, y = load_digits(n_class=n_classes, return_X_y=True)
    X = X / 16.0
    configs = [TrainConfig(strategy="multinomial", C=C, tol=1e-8, solver=solver, max_iter=500)
               for C in (0.1, 1.0, 10.0)]  # fmt: skip
    path = fit_multinomial_configs(X, y.astype(np.int64), n_classes, configs, client=None)
    cold = [fit_multinomial_configs(X, y.astype(np.int64), n_classes, [config], client=None)[0]
            for config in configs]  # fmt: skip
    for warm, alone in zip(path, cold, strict=True):
        np.testing.assert_allclose(warm.coef, alone.coef, atol=1e-3)  # L-BFGS: its ftol stop
        np.testing.assert_allclose(warm.intercept, alone.intercept, atol=1e-3)
    assert path[0].n_iter[0] == cold[0].n_iter[0]  # the first starts from zero too
    warm_iterations = sum(int(o.n_iter[0]) for o in path[1:])
    assert warm_iterations < sum(int(o.n_iter[0]) for o in cold[1:])
    other = TrainConfig(strategy="multinomial", C=1.0, tol=1e-4, solver=solver)
    with pytest.raises(ValueError, match="shares every setting but C"):
        fit_multinomial_configs(X, y.astype(np.int64), n_classes, [configs[0], other], client=None)
