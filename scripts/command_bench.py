"""Whole commands as a user times them: `distrib train` processes beside the plain scripts.

The same measurement `distrib bench` makes (its `commands` entry), alone: for each repeat,
`distrib train` for each strategy and worker count, then the plain scikit-learn scripts
(`python -m distrib.bench.plain_sklearn`), one after another. Writes a JSON report.

    python scripts/command_bench.py --workers 1,2 --repeat 5 \
        --out scripts/results/commands-2cores.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from distrib import TrainConfig
from distrib.bench.bench import machine, parse_workers
from distrib.bench.commands import time_commands
from distrib.files import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--strategy", default="ovr,multinomial")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-home", default=None)
    parser.add_argument("--out", default="commands.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="distrib-commands-") as scratch:
        result = time_commands(
            TrainConfig(dataset=args.dataset),
            strategies=[s.strip() for s in args.strategy.split(",") if s.strip()],
            workers=parse_workers(args.workers),
            repeat=args.repeat,
            scratch=Path(scratch),
            home=args.data_home,
            log=print,
        )
    report = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), **result}
    write_json(args.out, report)
    for strategy, ratios in result["over_baseline"].items():
        for k, ratio in ratios.items():
            print(f"distrib train --strategy {strategy}, {k} worker(s): {ratio:.2f}x "
                  f"{result['baselines'][strategy]}")  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
