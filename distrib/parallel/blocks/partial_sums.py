"""Block results added up in one fixed order, wherever they are computed.

A multinomial evaluation adds one loss and one gradient per row block. Floating-point
addition is not associative, so the order of that sum is fixed once per fit by a *sum tree*
(`sum_tree`): the blocks in groups, the groups in order. Any process that holds every block
of a group (a worker's host, a host relaying for others, or the driver) adds them in the
group's order; the driver adds the groups in the tree's order (`total`). The result is the
same, bit for bit, whichever worker computed which block and whichever way the results
travelled: a fit that loses a worker reaches the same model.

A group is also the unit of relaying: the host of a group's first block forwards the
evaluation to the group's other hosts and sends the driver one sum for all of them, so the
driver handles one message per group instead of one per worker.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: A block (its index) or a group of blocks (their indices, in the order they are added).
Node = int | tuple[int, ...]
#: The groups of a fit, in the order their sums are added.
SumTree = tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Timing:
    """When and where one block was evaluated."""

    worker: str
    started: float  # wall clock (time.time) at the start
    seconds: float
    read_bytes: int = 0  # read from disk (a streamed block), and
    read_wait: float = 0.0  # the seconds its kernel waited for them


@dataclass(frozen=True)
class PartialSum:
    """The loss and gradient summed over some blocks, and each block's timing."""

    loss: float
    grad: np.ndarray  # (n_classes, n_features + 1): coefficients, then the intercept
    timings: tuple[Timing, ...]


def add_in_order(parts: Sequence[PartialSum]) -> PartialSum:
    """``parts[0] + parts[1] + ...``, left to right (a fresh gradient array)."""
    if not parts:
        raise ValueError("nothing to add")
    loss, grad = parts[0].loss, parts[0].grad.copy()
    for part in parts[1:]:
        loss += part.loss
        grad += part.grad
    return PartialSum(loss, grad, tuple(t for part in parts for t in part.timings))


def sum_tree(placement: Sequence[str], n_groups: int | None = None) -> SumTree:
    """Group the blocks by the workers that hold them.

    Parameters
    ----------
    placement : sequence of str
        The worker holding each block.
    n_groups : int, optional
        Groups to make; default ``ceil(sqrt(workers))``, which keeps both the messages the
        driver handles and those each relaying host handles near ``sqrt(workers)``.

    Returns
    -------
    SumTree
        The workers, in the order of their first block, cut into ``n_groups`` contiguous
        runs of nearly equal length; each group holds those workers' blocks in index order.
    """
    workers = list(dict.fromkeys(placement))
    if not workers:
        return ()
    n_groups = math.ceil(math.sqrt(len(workers))) if n_groups is None else n_groups
    n_groups = max(1, min(n_groups, len(workers)))
    edges = np.linspace(0, len(workers), n_groups + 1).round().astype(int)
    runs = [set(workers[a:b]) for a, b in itertools.pairwise(edges)]
    return tuple(tuple(i for i, w in enumerate(placement) if w in run) for run in runs)


def blocks_of(node: Node) -> tuple[int, ...]:
    """The blocks a node covers."""
    return node if isinstance(node, tuple) else (node,)


def covered(parts: Iterable[Node]) -> set[int]:
    """Every block covered by these nodes."""
    return {i for node in parts for i in blocks_of(node)}


def combine(tree: SumTree, parts: Mapping[Node, PartialSum]) -> dict[Node, PartialSum]:
    """Replace the blocks of every group held whole by the group's sum; keep the rest."""
    out = dict(parts)
    for group in tree:
        if group not in out and all(i in out for i in group):
            out[group] = add_in_order([out.pop(i) for i in group])
    return out


def total(tree: SumTree, parts: Mapping[Node, PartialSum]) -> PartialSum:
    """The sum over every block: the groups' sums added in the tree's order."""
    whole = combine(tree, parts)
    missing = sorted(set(range(sum(map(len, tree)))) - covered(whole))
    if missing:
        raise ValueError(f"no result for blocks {missing}")
    return add_in_order([whole[group] for group in tree])


def relay_routes(
    tree: SumTree, by_worker: Mapping[str, Sequence[int]], reachable: Iterable[str]
) -> dict[str, list[str]]:
    """Who relays an evaluation to whom: relaying worker -> the workers it forwards to.

    Per group of ``tree``, the ``reachable`` workers holding its pending blocks
    (``by_worker``: worker -> its pending blocks) are taken in the order of those blocks: the
    first relays for the others. A worker appears once (under the first group it holds a
    pending block of); as the tree covers every block, so does every reachable worker with
    pending blocks.
    """
    reachable = set(reachable)
    holder = {i: w for w, indices in by_worker.items() if w in reachable for i in indices}
    routes: dict[str, list[str]] = {}
    placed: set[str] = set()
    for group in tree:
        holders = dict.fromkeys(holder[i] for i in group if i in holder)
        workers = [w for w in holders if w not in placed]
        if workers:
            routes[workers[0]] = workers[1:]
            placed.update(workers)
    return routes
