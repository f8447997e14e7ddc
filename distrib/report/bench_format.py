"""Where each strategy's results live in ``bench.json`` (written by `distrib.bench.bench`, read
by its plot, the CLI's summary and ``scripts/merge_bench.py``)."""

from __future__ import annotations

from dataclasses import dataclass

BENCH_FORMAT_VERSION = 1


@dataclass(frozen=True)
class StrategyKeys:
    """The top-level keys of one strategy's results."""

    runs: str  # worker count -> its runs and medians
    scaling: str  # worker count -> speedup and efficiency
    memory: str  # worker count -> peak worker memory
    projection: str  # simulated past the measured worker counts


STRATEGY_KEYS = {
    "ovr": StrategyKeys("distrib", "scaling", "memory", "projection"),
    "multinomial": StrategyKeys(
        "multinomial", "multinomial_scaling", "multinomial_memory", "multinomial_projection"
    ),
}
