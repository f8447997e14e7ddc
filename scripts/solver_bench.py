"""The solvers side by side: passes over the rows, fit and whole-command time.

For each repeat, interleaved: `distrib train --strategy S --solver newton-cg`, the same
with `--solver lbfgs`, and the plain scikit-learn script a user would write instead
(`python -m distrib.bench.plain_sklearn --model S`: the multinomial fit, or one-vs-rest
with loky), each a process timed from outside. For the multinomial fit, then one long run
of each solver at a tight `--tol`, whose objective per pass gives the passes each needs to
come within 1e-6 (relative) of the optimum (the lowest objective any run reached). For
one-vs-rest, the passes are the most any lockstep task made. Writes a JSON report.

    python scripts/solver_bench.py --workers 2 --repeat 3 \
        --out scripts/results/solvers-2cores.json
    python scripts/solver_bench.py --strategy ovr --workers 2 --repeat 3 \
        --out scripts/results/ovr-solvers-2cores.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from distrib.bench.bench import machine
from distrib.files import write_json

SOLVERS = ("newton-cg", "lbfgs")
HESSIAN_KEYS = ("hessian_rows", "hessian_products", "hessian_passes_worth", "hessian_seconds")


def _timed(args: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, timeout=1800, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return wall, done.stdout + done.stderr


def _train(
    strategy: str, solver: str, workers: int, out: Path, home: str | None, *extra: str
) -> dict[str, Any]:
    args = [sys.executable, "-m", "distrib", "train", "--strategy", strategy, "--solver",
            solver, "--workers", str(workers), "--dashboard-address", ":0", "--out", str(out),
            *extra]  # fmt: skip
    if home:
        args += ["--data-home", home]
    wall, _ = _timed(args)
    metrics = json.loads((out / "metrics.json").read_text())
    solver_record = metrics["solver"]
    if strategy == "ovr":  # each class's fit; the passes of the busiest task
        return {
            "wall": wall,
            "fit_seconds": metrics["timings"]["fit"],
            "passes": solver_record["passes"],
            "n_iter": [f["n_iter"] for f in metrics["fits"]],
            "converged": all(f["converged"] for f in metrics["fits"]),
            "test_accuracy": metrics["test_accuracy"],
        }
    return {
        "wall": wall,
        "fit_seconds": metrics["timings"]["fit"],
        "solver_seconds": solver_record["seconds"],
        "passes": solver_record["passes"],
        "n_iter": solver_record["n_iter"],
        "objective": solver_record["objective"],
        "grad_max": solver_record["grad_max"],
        "converged": solver_record["converged"],
        "test_accuracy": metrics["test_accuracy"],
        "losses": solver_record["per_evaluation"]["loss"],
        **{k: solver_record[k] for k in HESSIAN_KEYS if k in solver_record},
    }


def _script(strategy: str, home: str | None) -> tuple[float, float]:
    args = [sys.executable, "-m", "distrib.bench.plain_sklearn", "--model", strategy]
    if home:
        args += ["--data-home", home]
    wall, output = _timed(args)
    accuracy = float(output.split("test accuracy")[-1].split()[0].strip(":="))
    return wall, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--strategy", choices=("multinomial", "ovr"), default="multinomial")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tight-tol", type=float, default=1e-8)
    parser.add_argument("--data-home", default=None)
    parser.add_argument("--out", default="solvers.json")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SOLVERS}
    script: list[tuple[float, float]] = []
    tight: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="distrib-solvers-") as scratch:
        for r in range(args.repeat):
            for solver in SOLVERS:
                out = Path(scratch) / f"{solver}-{r}"
                run = _train(args.strategy, solver, args.workers, out, args.data_home)
                runs[solver].append(run)
                print(f"[{r + 1}/{args.repeat}] {solver}: {run['wall']:.2f} s, fit "
                      f"{run['fit_seconds']:.2f} s, {run['passes']} passes, test "
                      f"{run['test_accuracy']:.4f}", flush=True)  # fmt: skip
            script.append(_script(args.strategy, args.data_home))
            print(f"[{r + 1}/{args.repeat}] plain scikit-learn script: {script[-1][0]:.2f} s, "
                  f"test {script[-1][1]:.4f}", flush=True)  # fmt: skip
        for solver in SOLVERS if args.strategy == "multinomial" else ():
            tight[solver] = _train(args.strategy, solver, args.workers,
                                   Path(scratch) / f"{solver}-tight", args.data_home, "--tol",
                                   str(args.tight_tol), "--max-iter", "1000")  # fmt: skip
            print(f"tol {args.tight_tol:g}, {solver}: {tight[solver]['passes']} passes, "
                  f"objective {tight[solver]['objective']:.9f}", flush=True)  # fmt: skip
    optimum = min(min(t["losses"]) for t in tight.values()) if tight else None
    for t in tight.values():
        within = [i + 1 for i, f in enumerate(t["losses"]) if (f - optimum) / optimum <= 1e-6]
        t["passes_to_1e-6"] = within[0] if within else None
    script_wall = statistics.median(w for w, _ in script)
    summary = {}
    for solver, rs in runs.items():
        summary[solver] = {
            "median_wall": statistics.median(r["wall"] for r in rs),
            "median_fit_seconds": statistics.median(r["fit_seconds"] for r in rs),
            "passes": rs[0]["passes"],
            "test_accuracy": rs[0]["test_accuracy"],
        }
        if optimum is not None:
            summary[solver]["objective_above_optimum"] = (rs[0]["objective"] - optimum) / optimum
            summary[solver]["passes_to_1e-6"] = tight[solver]["passes_to_1e-6"]
        summary[solver]["wall_over_script"] = summary[solver]["median_wall"] / script_wall
    newton, lbfgs = summary["newton-cg"], summary["lbfgs"]
    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "command": " ".join(sys.argv),
        "strategy": args.strategy,
        "workers": args.workers,
        "optimum_objective": optimum,
        "summary": summary,
        "newton_fit_over_lbfgs_fit": newton["median_fit_seconds"] / lbfgs["median_fit_seconds"],
        "plain_script": {
            "median_wall": script_wall,
            "walls": [w for w, _ in script],
            "test_accuracy": script[0][1],
        },
        "runs": {
            s: [{k: v for k, v in r.items() if k != "losses"} for r in rs] for s, rs in runs.items()
        },
        "tight": tight,
    }
    write_json(args.out, report)
    for solver, s in summary.items():
        print(f"{solver}: {s['passes']} passes, fit {s['median_fit_seconds']:.2f} s, command "
              f"{s['median_wall']:.2f} s = {s['wall_over_script']:.2f}x the plain script "
              f"({script_wall:.2f} s), test {s['test_accuracy']:.4f}, "
              f"{s.get('passes_to_1e-6', '-')} passes to 1e-6")  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
