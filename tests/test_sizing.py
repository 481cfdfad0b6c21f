"""Cluster-sized defaults (core/plan/sizing.py) on simulated clusters: pure, no Ray."""

from __future__ import annotations

import pytest

from shardwalk.core.errors import ConfigError
from shardwalk.core.plan.sizing import (
    GIB,
    Node,
    bytes_per_row,
    index_bytes,
    plan,
    replicate_fits,
    walk_data_bytes,
)

ROWS, DIM, M = 1_000_000, 128, 16


def test_one_shard_per_cpu_node_using_all_its_cpus() -> None:
    layout = plan([Node(2, 24 * GIB)], ROWS, DIM, M)
    assert (layout.shards, layout.cpus_per_actor, layout.threads) == (1, 2.0, 2)
    four = plan([Node(8, 64 * GIB)] * 4, ROWS, DIM, M)
    assert (four.shards, four.threads) == (4, 8)


def test_a_cpu_less_head_holds_no_shard() -> None:
    layout = plan([Node(0, 8 * GIB), Node(1, 8 * GIB), Node(1, 8 * GIB)], ROWS, DIM, M)
    assert (layout.shards, layout.threads) == (2, 1)


def test_a_small_node_splits_the_index_into_more_shards() -> None:
    need = index_bytes(ROWS, DIM, M)
    layout = plan([Node(4, int(need * 1.6)), Node(4, int(need * 0.6))], ROWS, DIM, M)
    assert layout.shards == 4  # shards of a half would not fit the small node (budget 0.3 of the index)
    assert layout.cpus_per_actor == 2.0  # two actors per node share its 4 CPUs


def test_bigger_nodes_take_more_of_the_smaller_shards() -> None:
    need = index_bytes(ROWS, DIM, M)
    layout = plan([Node(4, int(need * 1.6)), Node(4, int(need * 0.5))], ROWS, DIM, M)
    assert layout.shards == 4  # three on the big node, one on the small one
    assert layout.bytes_per_shard <= int(need * 0.25) + 1
    assert plan([Node(4, int(need * 1.2))] * 2, ROWS, DIM, M).shards == 2  # equal nodes holding their share


def test_an_explicit_shard_count_wins() -> None:
    layout = plan([Node(2, 24 * GIB)], ROWS, DIM, M, shards=4)
    assert (layout.shards, layout.cpus_per_actor, layout.threads) == (4, 0.5, 1)
    replicated = plan([Node(4, 24 * GIB)] * 2, ROWS, DIM, M, replicas=2)
    assert (replicated.shards, replicated.cpus_per_actor) == (2, 2.0)  # 4 actors on 2 nodes of 4 CPUs


def test_bytes_per_row_counts_vector_and_links() -> None:
    assert bytes_per_row(128, 16) > 128 * 4 + 2 * 16 * 4
    assert bytes_per_row(128, 32) > bytes_per_row(128, 16)


@pytest.mark.parametrize(
    ("nodes", "kwargs", "message"),
    [
        ([Node(2, GIB)], {"shards": 1}, "shards=1: each shard needs"),
        ([Node(2, GIB)], {}, "no number of shards fits"),
        ([Node(0, 64 * GIB)], {}, "no node with a CPU"),
        ([Node(2, 64 * GIB)], {"memory_fraction": 0}, "memory_fraction must be in"),
        ([Node(2, 64 * GIB)], {"shards": 0}, "shards must be an integer"),
    ],
)
def test_layouts_that_cannot_fit_are_refused(nodes: list[Node], kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan(nodes, ROWS, DIM, M, **kwargs)


def test_walkers_replicate_only_when_every_node_holds_its_copies() -> None:
    data = walk_data_bytes(1_000_000, 40)  # 328 MB per copy
    assert data == 1_000_000 * 41 * 8
    assert replicate_fits(data, 2, [Node(2, 24 * GIB)])  # two copies on one node: 656 MB <= 6 GiB
    assert not replicate_fits(data, 2, [Node(2, 2 * GIB)])  # 656 MB > a quarter of 2 GiB
    assert replicate_fits(data, 2, [Node(0, 1 * GIB), Node(1, 2 * GIB), Node(1, 2 * GIB)])  # one copy a CPU node
    assert not replicate_fits(data, 2, [Node(1, 2 * GIB), Node(1, GIB)])  # the smaller node cannot hold its copy
    assert not replicate_fits(data, 1, [Node(2, 24 * GIB)])  # one actor: nothing to replicate
    assert not replicate_fits(data, 2, [Node(0, 24 * GIB)])  # no CPU node: nothing known
