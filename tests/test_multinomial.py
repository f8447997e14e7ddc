"""Pure parts of the multinomial fit: time accounting per evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from distrib.multinomial import BlockResult, busiest_worker_seconds


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
