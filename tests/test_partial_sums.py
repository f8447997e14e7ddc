"""Sums of block results in a fixed order: pure functions, no cluster."""

from __future__ import annotations

import numpy as np
import pytest

from distrib.parallel.blocks.partial_sums import (
    PartialSum,
    Timing,
    combine,
    covered,
    relay_routes,
    sum_tree,
    total,
)


def _parts(n: int, seed: int = 0) -> dict[int, PartialSum]:
    """Block results whose sums depend on the order of addition (mixed magnitudes)."""
    rng = np.random.default_rng(seed)
    return {
        i: PartialSum(
            float(rng.normal() * 10.0 ** rng.integers(-8, 8)),
            rng.normal(size=(3, 5)) * 10.0 ** rng.integers(-8, 8, size=(3, 5)),
            (Timing(f"w{i}", 100.0 + i, 0.01),),
        )
        for i in range(n)
    }


def test_sum_tree_groups_workers_in_block_order_about_sqrt_of_them() -> None:
    assert sum_tree(["a", "b"]) == ((0,), (1,))
    assert sum_tree([f"w{i:02d}" for i in range(9)]) == ((0, 1, 2), (3, 4, 5), (6, 7, 8))
    assert len(sum_tree([f"w{i:02d}" for i in range(32)])) == 6
    # a worker's blocks stay in one group, in index order
    assert sum_tree(["a", "b", "a", "b", "c", "c"], n_groups=2) == ((0, 1, 2, 3), (4, 5))
    assert sum_tree(["a", "b", "c"], n_groups=1) == ((0, 1, 2),)
    assert sum_tree(["a", "b"], n_groups=5) == ((0,), (1,))
    assert sum_tree([]) == ()


def test_the_total_is_the_same_bits_whoever_summed_which_blocks() -> None:
    parts = _parts(12)
    tree = sum_tree([f"w{i // 2}" for i in range(12)], n_groups=3)  # groups of 4 blocks
    expected = total(tree, parts)
    rng = np.random.default_rng(1)
    for _ in range(20):  # blocks spread over "hosts" at random; each combines what it holds
        owner = rng.integers(0, 4, size=12)
        received: dict = {}
        for host in range(4):
            held = {i: parts[i] for i in range(12) if owner[i] == host}
            received.update(combine(tree, held))
        got = total(tree, received)
        assert got.loss == expected.loss
        np.testing.assert_array_equal(got.grad, expected.grad)
        assert sorted(t.worker for t in got.timings) == sorted(f"w{i}" for i in range(12))
    # the order is really fixed: a plain left-to-right sum differs in the last bits
    flat = parts[0].grad.copy()
    for i in range(1, 12):
        flat += parts[i].grad
    assert not np.array_equal(flat, expected.grad)


def test_combine_sums_whole_groups_only_and_total_names_missing_blocks() -> None:
    parts = _parts(4)
    tree = ((0, 1), (2, 3))
    combined = combine(tree, {0: parts[0], 1: parts[1], 2: parts[2]})
    assert set(combined) == {(0, 1), 2}
    assert covered(combined) == {0, 1, 2}
    with pytest.raises(ValueError, match=r"no result for blocks \[3\]"):
        total(tree, combined)


def test_relay_routes_one_relay_per_group_each_worker_once() -> None:
    tree = ((0, 1, 2), (3, 4, 5))
    by_worker = {f"w{i}": [i] for i in range(6)}
    reachable = list(by_worker)
    assert relay_routes(tree, by_worker, reachable) == {
        "w0": ["w1", "w2"],
        "w3": ["w4", "w5"],
    }
    # w1 died: its block moved to w4, which now holds blocks of both groups
    moved = {"w0": [0], "w2": [2], "w3": [3], "w4": [1, 4], "w5": [5]}
    assert relay_routes(tree, moved, list(moved)) == {"w0": ["w4", "w2"], "w3": ["w5"]}
    # a worker that cannot be relayed to (or has no channel) is left to the caller
    assert relay_routes(tree, by_worker, ["w1", "w2", "w4"]) == {"w1": ["w2"], "w4": []}
    # only pending blocks count: a finished group needs no relay
    assert relay_routes(tree, {"w4": [4], "w5": [5]}, reachable) == {"w4": ["w5"]}
