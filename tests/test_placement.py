"""Which worker holds which block (`distrib.parallel.blocks.placement`): plain state, tested
without a cluster."""

from __future__ import annotations

from distrib.parallel.blocks.placement import Placement, slots_of


def test_slots_interleave_the_workers_threads() -> None:
    assert slots_of({"b": 1, "a": 2, "c": 0}) == ["a", "b", "a"]
    assert slots_of({}) == []


def test_blocks_are_dealt_to_the_slots_in_turn_and_listed_by_worker() -> None:
    placement = Placement(5, ["a", "b"])
    assert [placement[i] for i in range(5)] == ["a", "b", "a", "b", "a"]
    assert placement.by_worker() == {"a": [0, 2, 4], "b": [1, 3]}
    assert placement.by_worker(skip={0, 1}) == {"a": [2, 4], "b": [3]}
    assert "a" in placement and "z" not in placement
    unplaced = Placement(2)  # chunks of a Dask array: placed where they are computed
    assert unplaced.workers == ["", ""]
    unplaced.place(1, "b")
    assert unplaced[1] == "b"


def test_a_lost_worker_s_blocks_move_to_the_least_loaded_live_worker() -> None:
    placement = Placement(6, ["a", "b", "c"])  # a: 0, 3; b: 1, 4; c: 2, 5
    placement.place(5, "b")  # b holds three, c one
    lost, too_often = placement.lose("a", allowed=3)
    assert (lost, too_often) == ([0, 3], None)
    placement.reassign(lost, ["b", "c"])
    assert placement.by_worker() == {"c": [0, 2, 3], "b": [1, 4, 5]}
    assert "a" not in placement
    assert placement.losses == {0: 1, 3: 1}


def test_a_block_lost_more_often_than_allowed_is_named() -> None:
    placement = Placement(2, ["a", "b"])
    for _ in range(2):
        lost, too_often = placement.lose("a", allowed=1)
        placement.reassign(lost, ["a"])  # the same worker came back
    assert (lost, too_often) == ([0], 0)


def test_chunks_go_to_the_worker_with_the_fewest_rows_so_far() -> None:
    placement = Placement(4)
    placement.place(0, "a")  # block 0 (100 rows) is on a already
    rows = {0: 100, 1: 60, 2: 60, 3: 60}
    targets = placement.chunk_targets([1, 2, 3], ["a", "b"], rows)
    assert targets == {1: "b", 2: "b", 3: "a"}  # b: 0 -> 60 -> 120; a: 100 -> 160
    assert placement.chunk_targets([1], [], rows) == {1: None}


def test_a_given_up_worker_is_recorded_with_why_and_when() -> None:
    placement = Placement(2, ["a", "b"])
    placement.give_up("b", "given up: no answer in 3.0 s", evaluation=7, now=12.5)
    assert placement.given_up == {
        "b": {"worker": "b", "time": 12.5, "evaluation": 7, "why": "given up: no answer in 3.0 s"}
    }
