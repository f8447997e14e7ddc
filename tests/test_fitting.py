"""The fit engine's callback interface (what `distrib train` builds checkpoints and progress
on), in this process: no cluster needed."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from distrib.config import TrainConfig
from distrib.parallel.dispatch import BinaryFit
from distrib.parallel.fitting import FitHooks
from distrib.parallel.rows import InMemoryArrays
from distrib.parallel.strategies import fit_training_data


@pytest.fixture(scope="module")
def digits() -> InMemoryArrays:
    X, y = load_digits(return_X_y=True)
    return InMemoryArrays((X / 16).astype(np.float32), y)


def test_ovr_reports_each_fit_and_skips_the_classes_already_done(digits) -> None:
    config = TrainConfig(dataset="digits")
    labels = np.arange(10)
    arrived: list[BinaryFit] = []
    first = fit_training_data(digits, labels, config, hooks=FitHooks(on_binary_fit=arrived.append))
    assert sorted(f.label for f in arrived) == list(range(10))
    assert not any(r["from_checkpoint"] for r in first.records)

    done = {f.label: f for f in arrived if f.label in (0, 4, 7)}
    again: list[BinaryFit] = []
    hooks = FitHooks(on_binary_fit=again.append, done=done)
    resumed = fit_training_data(digits, labels, config, hooks=hooks)
    assert sorted(f.label for f in again) == [1, 2, 3, 5, 6, 8, 9], "done classes not refit"
    assert [r["label"] for r in resumed.records if r["from_checkpoint"]] == [0, 4, 7]
    np.testing.assert_array_equal(resumed.coef, first.coef)
    np.testing.assert_array_equal(resumed.intercept, first.intercept)
    # Newton-CG by default: each class's model the same bits whichever classes share its
    # task; ``passes`` the most any task made (five classes of digits, ~10)
    passes = max(r["passes"] for r in resumed.records)
    assert resumed.solver == {"strategy": "ovr", "transfer": "here", "backups": [],
                              "solver": "newton-cg", "passes": passes}  # fmt: skip
    assert 0 < passes <= 20


@pytest.mark.parametrize(
    ("solver", "name", "shown"), [("lbfgs", "L-BFGS", 10), ("auto", "Newton-CG", 1)]
)
def test_multinomial_logs_its_progress_and_returns_its_blocks_and_solver(
    digits, solver: str, name: str, shown: int
) -> None:
    lines: list[str] = []
    max_iter = 3 if name == "Newton-CG" else 30
    config = TrainConfig(dataset="digits", strategy="multinomial", max_iter=max_iter, solver=solver)
    outcome = fit_training_data(digits, np.arange(10), config, hooks=FitHooks(log=lines.append))
    assert lines[0].startswith("1 row block(s) on 1 worker(s)")
    assert name in lines[0]
    assert any(line.startswith(f"[{shown}/{max_iter}] {name} iteration") for line in lines)
    assert lines[-1].startswith(f"{name} stopped before convergence"), lines[-1]
    assert outcome.coef.shape == (10, 64) and outcome.n_iter.tolist() == [max_iter]
    assert outcome.records == [
        {"start": 0, "rows": 1797, "worker": "local", "copies": 1, "calls": "in process"}
    ]
    assert outcome.solver["n_iter"] == max_iter and not outcome.solver["converged"]
    assert outcome.solver["passes"] == outcome.solver["n_evaluations"] >= max_iter + 1
