from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from distrib.bench.bench import (
    PROJECTION_WORKERS,
    parse_workers,
    project,
    project_multinomial,
    simulate_schedule,
)
from distrib.errors import ConfigError

from .conftest import REPO, run_cli


def _numbers(node: object, path: str = "") -> list[tuple[str, float]]:
    if isinstance(node, bool) or node is None or isinstance(node, str):
        return []
    if isinstance(node, (int, float)):
        return [(path, float(node))]
    if isinstance(node, dict):
        return [n for k, v in node.items() for n in _numbers(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [n for i, v in enumerate(node) for n in _numbers(v, f"{path}[{i}]")]
    raise AssertionError(f"unexpected {type(node)} at {path}")


def test_bench_digits_one_and_two_workers(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = run_cli(
        "bench",
        "--dataset",
        "digits",
        "--workers",
        "1,2",
        "--strategy",
        "ovr,multinomial",
        "--repeat",
        "2",
        "--warmup",
        "0",
        "--no-commands",  # timed in their own test below
        "--no-targets",  # as are the times to the notebook's accuracy
        "--out",
        str(out),
        "--data-home",
        str(tmp_path / "home"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "[distrib ovr, 2 worker(s)] run 2/2" in proc.stderr  # a progress line per run
    assert "[distrib multinomial, 2 worker(s)] run 2/2" in proc.stderr
    assert "[estimator multinomial, dask, 2 worker(s)] run 2/2" in proc.stderr
    report = json.loads((out / "bench.json").read_text())

    assert set(report["distrib"]) == {"1", "2"}
    for k, entry in report["distrib"].items():
        assert entry["workers"] == int(k)
        assert len(entry["runs"]) == 2
        for run in entry["runs"]:
            assert run["wall"] >= run["fit"] > 0
            assert sorted(c["label"] for c in run["classes"]) == list(range(10))
            assert all(c["worker"].startswith("tcp://") for c in run["classes"])
            # the passes over the rows: each class's task's, and the busiest task's
            busiest = max(c["passes"] for c in run["classes"])
            assert run["solver"] == {"solver": "newton-cg", "passes": busiest}
        assert len(entry["worker_memory"]) == int(k)
        assert entry["median_wall"] == pytest.approx(
            sorted(r["wall"] for r in entry["runs"])[0] / 2
            + sorted(r["wall"] for r in entry["runs"])[1] / 2
        )
    for k in ("1", "2"):
        recorded = report["scaling"][k]["speedup_wall"]
        expected = report["distrib"]["1"]["median_wall"] / report["distrib"][k]["median_wall"]
        assert recorded == pytest.approx(expected)
        assert report["scaling"][k]["speedup_fit"] == pytest.approx(
            report["distrib"]["1"]["median_fit"] / report["distrib"][k]["median_fit"]
        )
    assert set(report["loky"]["dense"]) == {"1", "2"}
    assert len(report["serial"]["walls"]) == 2
    assert report["sklearn_ovr_solver"] == "lbfgs"  # scikit-learn's default, as its users run
    assert report["machine"]["cores"] >= 1 and report["machine"]["versions"]["scikit-learn"]

    numbers = _numbers(
        {
            k: report[k]
            for k in ("distrib", "scaling", "serial", "loky", "memory", "projection", "fit_vs_loky")
        }
    )
    assert numbers
    for where, value in numbers:
        assert math.isfinite(value), where
        may_be_zero = where.endswith(("label", "slowest_class", "per_task_overhead_seconds"))
        assert value > 0 or (may_be_zero and value == 0), (where, value)

    # the multinomial line: same worker counts, its blocks on every worker, sklearn's
    # multinomial fit as the reference, at the same accuracy
    assert set(report["multinomial"]) == {"1", "2"}
    for k, entry in report["multinomial"].items():
        for run in entry["runs"]:
            assert len({b["worker"] for b in run["blocks"]}) == int(k)
            assert all(b["copies"] == 1 for b in run["blocks"])
            assert all(b["calls"] == "direct channel" for b in run["blocks"])
            assert run["solver"]["n_evaluations"] >= run["solver"]["n_iter"] > 0
            # the evaluation log (--resume's checkpoint) is timed, and costs little
            assert 0 < run["checkpoint_share_of_fit"] < 0.2
        assert 0 < entry["median_checkpoint_share_of_fit"] < 0.2
    reference = report["sklearn_multinomial"]
    assert set(reference["fit_over_sklearn"]) == {"1", "2"}
    assert abs(report["multinomial"]["2"]["test_accuracy"] - reference["test_accuracy"]) < 0.01
    assert len(report["multinomial_projection"]["wall"]) == len(PROJECTION_WORKERS)
    # one relay level measured on the 2-worker cluster, and used by the projection
    assert "relay_level" not in report["multinomial"]["1"]
    level = report["multinomial"]["2"]["relay_level"]
    assert level["workers"] == 2 and level["relayed_coordination_seconds"] > 0
    assert report["multinomial_projection"]["relay_level_measured"]
    assert report["multinomial_projection"]["relay_level_seconds"] == level["level_seconds"]
    # the estimator with the matrix in memory and as a Dask array, against scikit-learn on it
    for k, entry in report["multinomial"].items():
        assert set(entry["estimator"]) == {"numpy", "csr", "dask"}
        for fits in entry["estimator"].values():
            assert len(fits["walls"]) == 2 and fits["median_fit"] > 0
            assert abs(fits["test_accuracy"] - reference["test_accuracy"]) < 0.01
        ratios = report["estimator_over_sklearn"][k]
        assert ratios["csr"] == pytest.approx(
            entry["estimator"]["csr"]["median_fit"] / reference["median_wall"]
        )

    image = matplotlib.image.imread(out / "bench.png")
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400

    # scripts/merge_bench.py (compose_bench.sh): one report per worker count -> the same
    # scaling and projections as the run that had both
    parts = []
    for k in ("1", "2"):
        part = {**report}
        for key in ("distrib", "memory", "multinomial", "multinomial_memory"):
            part[key] = {k: report[key][k]}
        (tmp_path / f"part{k}.json").write_text(json.dumps(part))
        parts.append(str(tmp_path / f"part{k}.json"))
    merged_dir = tmp_path / "merged"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "merge_bench.py"), str(merged_dir), *parts],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    merged = json.loads((merged_dir / "bench.json").read_text())
    for key in ("scaling", "multinomial_scaling", "projection", "multinomial_projection"):
        assert merged[key] == report[key], key
    assert (merged_dir / "bench.png").stat().st_size > 10_000


@pytest.mark.parametrize("text", ["0,1", "a,b", "", "-2"])
def test_bad_worker_lists(text: str) -> None:
    with pytest.raises(ConfigError, match="--workers takes"):
        parse_workers(text)


def test_cli_bad_worker_list_is_one_line(tmp_path: Path) -> None:
    proc = run_cli("bench", "--dataset", "digits", "--workers", "two", "--out", str(tmp_path))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: --workers takes")
    assert not (tmp_path / "bench.json").exists()


def test_schedule_simulation() -> None:
    assert simulate_schedule([3, 1, 1, 1], 1) == 6
    assert simulate_schedule([3, 1, 1, 1], 2) == 3
    assert simulate_schedule([1, 1, 1, 3], 2) == 4  # in dispatch order: the slow task last
    assert simulate_schedule([2.0] * 10, 32) == 2.0


def test_projection_saturates_at_the_class_count() -> None:
    classes = [{"label": i, "seconds": 1.0} for i in range(10)]
    measured = {1: {"median_wall": 12.0, "median_fit": 10.5, "runs": [{"classes": classes}]}}
    proj = project(measured)
    assert proj["fixed_overhead_seconds"] == pytest.approx(1.5)
    assert proj["per_task_overhead_seconds"] == pytest.approx(0.05)
    walls = dict(zip(proj["workers"], proj["wall"], strict=True))
    assert walls[1] == pytest.approx(12.0)
    assert walls[2] == pytest.approx(1.5 + 5 * 1.05)
    assert walls[10] == walls[32] == pytest.approx(1.5 + 1.05)
    assert proj["saturates_at_workers"] == 10


def test_multinomial_projection_divides_compute_and_adds_the_sum_trees_cost() -> None:
    c = 0.0002  # the driver's CPU per reply at 2 workers (two replies per evaluation)
    solver = {"n_evaluations": 100, "median_compute_seconds_all_blocks": 0.08,
              "median_coordination_seconds": 0.01, "seconds": 9.0,
              "median_driver_cpu_seconds_per_message": 0.0005}  # fmt: skip
    two = {"median_wall": 6.0, "median_fit": 5.0,
           "runs": [{"solver": {**solver, "median_driver_cpu_seconds_per_message": c}}],
           "relay_level": {"level_seconds": 0.003}}  # fmt: skip
    measured = {1: {"median_wall": 10.5, "median_fit": 9.5, "runs": [{"solver": solver}]}, 2: two}
    proj = project_multinomial(measured)
    walls = dict(zip(proj["workers"], proj["wall"], strict=True))
    groups = dict(zip(proj["workers"], proj["groups"], strict=True))
    assert (groups[1], groups[2], groups[8], groups[32]) == (1, 2, 3, 6)
    assert walls[1] == pytest.approx(1.0 + 0.5 + 100 * (0.08 + 0.01))
    # 2 workers: two groups of one host, one more reply for the driver, no relay level
    assert walls[2] == pytest.approx(1.5 + 100 * (0.04 + 0.01 + c))
    # 8 workers: 3 groups of up to 3 hosts: 2 more replies, a level, 2 relayed replies
    assert walls[8] == pytest.approx(1.5 + 100 * (0.01 + 0.01 + 2 * c + 0.003 + c))
    # 32 workers: 6 groups of up to 6: 5 more replies, a level, 5 relayed replies
    assert walls[32] == pytest.approx(1.5 + 100 * (0.0025 + 0.01 + 5 * c + 0.003 + 4 * c))
    assert walls[32] < walls[16] < walls[8], "the tree keeps the driver's share growing slowly"
    assert "From 6 workers" in proj["note"] and "measured" in proj["note"], proj["note"]
    solver_speedup = dict(zip(proj["workers"], proj["solver_speedup"], strict=True))
    assert solver_speedup[32] == pytest.approx((0.08 + 0.01) / (0.0025 + 0.013 + 9 * c))
    # without a measured relay level, one more base coordination is assumed
    del two["relay_level"]
    proj = project_multinomial(measured)
    assert not proj["relay_level_measured"] and proj["relay_level_seconds"] == 0.01
    walls = dict(zip(PROJECTION_WORKERS, proj["wall"], strict=True))
    assert walls[8] == pytest.approx(1.5 + 100 * (0.01 + 0.01 + 2 * c + 0.01 + c))


@pytest.mark.slow
def test_the_dask_ml_baseline_fits_one_vs_rest_on_the_cluster(cluster_client) -> None:
    """dask-ml's binary LogisticRegression, one class after another, on a persisted Dask
    array; a few iterations on digits keep it short (it takes minutes on MNIST)."""
    import dask.array as da
    import numpy as np
    from sklearn.datasets import load_digits

    from distrib.bench.bench import EstimatorInputs, _dask_ml_runs
    from distrib.config import TrainConfig

    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    inputs = EstimatorInputs(
        inputs={"dask": da.from_array(X[:1000], chunks=(500, -1))},
        y=y[:1000],
        X_test=X[1000:],
        y_test=y[1000:],
    )
    said: list[str] = []
    result = _dask_ml_runs(
        cluster_client, TrainConfig(dataset="digits", max_iter=5), inputs, 1, said.append
    )
    assert len(result["walls"]) == 1 and result["median_fit"] > 0
    assert 0.5 < result["test_accuracy"] <= 1.0, "ten binary fits that learned something"
    assert said and said[0].startswith("[dask-ml OneVsRest, 2 worker(s)] run 1/1")


def test_each_solver_s_time_to_the_notebook_s_accuracy(tmp_path: Path) -> None:
    """`distrib bench` steps ``max_iter`` (1, 2, 4, ...) for each of distrib's solvers until
    a fit reaches test accuracy 0.918, and records each step's fit time and passes."""
    out = tmp_path / "bench"
    proc = run_cli("bench", "--dataset", "digits", "--workers", "1", "--strategy",
                   "ovr,multinomial", "--repeat", "1", "--warmup", "0", "--no-baselines",
                   "--no-estimators", "--no-commands", "--out", str(out), "--data-home",
                   str(tmp_path / "home"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "bench.json").read_text())
    lines = {"distrib": "ovr", "multinomial": "multinomial"}  # as the summary names them
    for key, name in lines.items():
        run = report[key]["1"]
        assert set(run["time_to_target"]) == {"newton-cg", "lbfgs"}
        _check_time_to_target(run["time_to_target"], name, proc.stdout)


def _check_time_to_target(runs: dict, name: str, said: str) -> None:
    for solver, reached in runs.items():
        steps = reached["steps"]
        assert [s["max_iter"] for s in steps] == [1, 2, 4, 8, 16, 32, 64, 100][: len(steps)]
        assert reached["target"] == 0.918 and reached["reached"]  # digits: ~0.96
        assert all(s["test_accuracy"] < 0.918 for s in steps[:-1])
        assert reached["wall"] == steps[-1]["wall"] > 0
        assert reached["max_iter"] == steps[-1]["max_iter"]
        # a pass per evaluation: at least one per iteration, and the first
        assert all(s["passes"] >= 2 for s in steps)
        assert f"{name}, 1 worker(s), {solver}: 0.918 reached in" in said


def test_whole_commands_are_timed_beside_the_plain_scripts(tmp_path: Path) -> None:
    """`distrib bench` times `distrib train` processes and the plain scikit-learn scripts
    as a user times them (digits: one repeat, each strategy on 2 workers)."""
    from distrib import TrainConfig
    from distrib.bench.commands import time_commands

    lines: list[str] = []
    result = time_commands(
        TrainConfig(dataset="digits"),
        strategies=["ovr", "multinomial"],
        workers=[2],
        repeat=1,
        scratch=tmp_path,
        home=str(tmp_path / "home"),
        log=lines.append,
    )
    runs = result["runs"]
    assert sorted(runs) == ["distrib multinomial, 2 worker(s)", "distrib ovr, 2 worker(s)",
                            "script multinomial", "script ovr, 2 process(es)"]  # fmt: skip
    assert len(lines) == 4
    for key, run in runs.items():
        assert len(run["walls"]) == 1 and run["median_wall"] == run["walls"][0] > 0.3, key
        assert 0.9 < run["test_accuracy"] < 1.0, key
    # the plain scripts are scikit-learn's own fits: the strategies reach their accuracy
    assert runs["distrib ovr, 2 worker(s)"]["test_accuracy"] == pytest.approx(
        runs["script ovr, 2 process(es)"]["test_accuracy"], abs=0.01
    )
    assert runs["distrib multinomial, 2 worker(s)"]["test_accuracy"] == pytest.approx(
        runs["script multinomial"]["test_accuracy"], abs=0.01
    )
    assert runs["script ovr, 2 process(es)"]["argv"][-2:] == ["--data-home",
                                                            str(tmp_path / "home")]  # fmt: skip
    ratio = result["over_baseline"]["multinomial"]["2"]
    assert ratio == pytest.approx(
        runs["distrib multinomial, 2 worker(s)"]["median_wall"]
        / runs["script multinomial"]["median_wall"]
    )
    assert set(result["over_baseline"]["ovr"]) == {"2"}


@pytest.mark.slow
def test_spark_as_a_peer_on_the_digits(tmp_path: Path) -> None:
    """`distrib bench --peers spark`: Spark's LogisticRegression on local[1], the same split,
    the same objective and Spark's defaults, and the time to the notebook's accuracy."""
    pytest.importorskip("pyspark", reason='the spark extra: pip install -e ".[spark]"')
    out = tmp_path / "bench"
    proc = run_cli("bench", "--dataset", "digits", "--workers", "1", "--strategy", "ovr",
                   "--repeat", "1", "--warmup", "0", "--no-commands", "--no-baselines",
                   "--peers", "spark", "--out", str(out), "--data-home", str(tmp_path / "home"),
                   timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    spark = json.loads((out / "bench.json").read_text())["peers"]["spark"]["1"]
    assert spark["reg_param"] == pytest.approx(1 / (0.1 * 1347))
    assert set(spark["lines"]) == {"same objective", "spark defaults"}
    for line in spark["lines"].values():
        assert line["wall"] > 0 and 0 < line["iterations"] <= 100
        assert 0.85 < line["test_accuracy"] <= 1.0
    assert set(spark["time_to_target"]) == set(spark["lines"])
    for reached in spark["time_to_target"].values():
        assert reached["target"] == 0.918 and reached["steps"]
        assert reached["reached"] == (reached["steps"][-1]["test_accuracy"] >= 0.918)
        steps = [step["max_iter"] for step in reached["steps"]]
        assert steps == sorted(steps) and steps[0] == 10
    assert "spark local[1], same objective: fit" in proc.stdout
    said = [line for line in proc.stdout.splitlines() if line.startswith("spark local[1], ")]
    assert len(said) == 2
    for line, reached in zip(said, spark["time_to_target"].values(), strict=True):
        assert ("; 0.918 reached in" in line) == reached["reached"], line


def test_an_unknown_peer_is_refused_in_one_line(tmp_path: Path) -> None:
    proc = run_cli("bench", "--dataset", "digits", "--peers", "flink", "--out",
                   str(tmp_path / "b"))  # fmt: skip
    assert proc.returncode == 1
    assert "--peers takes a list of ('spark',), got ['flink']" in proc.stderr
    assert "Traceback" not in proc.stderr
