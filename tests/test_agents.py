"""Agent graphs and data placement: every bad input of issue 4 that concerns graphs and data."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pyarrow as pa
import pytest

from shardwalk.core.errors import ConfigError, DataError, GraphError
from shardwalk.core.srrw.agents import (
    agent_blocks,
    build_graph,
    cut_edge_fraction,
    edges_table,
    partition,
    spread,
    standard_graph,
)


def _edges(pairs):
    arr = np.asarray(pairs, dtype=np.int64)
    return pa.table({"src": arr[:, 0], "dst": arr[:, 1]})


def test_build_graph_roundtrip_and_symmetric():
    g = build_graph(_edges([(0, 1), (1, 2), (2, 0), (2, 3)]))
    assert sorted(g.edges()) == [(0, 1), (0, 2), (1, 2), (2, 3)]
    assert nx.utils.graphs_equal(build_graph(edges_table(g)), g)
    both = build_graph(_edges([(0, 1), (1, 0), (1, 2), (2, 1)]), symmetric=True)
    assert both.number_of_edges() == 2


@pytest.mark.parametrize(
    ("pairs", "kwargs", "match"),
    [
        ([(0, 1), (1, 1)], {}, r"self-loop \(1, 1\) at row 1"),
        ([(0, 1), (1, 2), (0, 1)], {}, r"duplicate edge \(0, 1\) at row 2"),
        ([(0, 1), (1, 2), (1, 0)], {}, r"duplicate edge \(1, 0\) at row 2 repeats row 0"),
        ([(0, 1), (1, 0), (1, 2)], {"symmetric": True}, r"directed edge \(1, 2\)"),
        ([(0, 1), (2, 3), (3, 4)], {}, r"disconnected \(2 components: 3 agents"),
        ([(0, 1), (1, 2)], {"nodes": [0, 1, 2, 7]}, r"isolated agent.*\[7\]"),
    ],
)
def test_bad_graphs(pairs, kwargs, match):
    with pytest.raises(GraphError, match=match):
        build_graph(_edges(pairs), **kwargs)


def test_directed_networkx_graph_rejected():
    with pytest.raises(GraphError, match="directed"):
        build_graph(nx.DiGraph([(0, 1), (1, 0)]))


def test_standard_graphs():
    assert standard_graph("karate").number_of_nodes() == 34
    les = standard_graph("les_miserables")
    assert les.number_of_nodes() == 77 and sorted(les.nodes()) == list(range(77))
    ba = standard_graph("barabasi_albert", n=900, m=2, seed=1)
    assert ba.number_of_nodes() == 900 and nx.is_connected(ba)
    assert standard_graph("grid", rows=3, cols=4).number_of_nodes() == 12
    with pytest.raises(ConfigError, match="unknown graph"):
        standard_graph("petersen_typo")


def test_spread_iid_and_label_skew():
    ids = np.arange(100, 200)
    labels = np.repeat([0, 1], 50)
    table = spread(ids, labels, range(10), mode="iid", seed=3)
    counts = np.bincount(table.column("node").to_numpy())
    assert table.num_rows == 100 and (counts == 10).all()
    assert sorted(table.column("id").to_numpy()) == list(ids)
    skew = spread(ids, labels, range(10), mode="label_skew", seed=3)
    lab = labels[skew.column("id").to_numpy() - 100]
    per_node = [len(set(lab[skew.column("node").to_numpy() == k])) for k in range(10)]
    assert max(per_node) == 1  # 5 agents per class, each pure
    assert spread(ids, labels, range(10), seed=3).equals(table)  # seeded
    with pytest.raises(ConfigError, match="at least one"):
        spread(ids[:5], None, range(10))


def test_agent_blocks_and_bad_assignments():
    g = nx.path_graph(3)
    ids = np.array([10, 11, 12, 13])
    x = np.arange(8, dtype=float).reshape(4, 2)
    y = np.array([0, 1, 0, 1])
    ok = pa.table({"node": [0, 1, 2, 2], "id": [13, 10, 11, 12]})
    blocks = agent_blocks(ok, ids, x, y, g)
    np.testing.assert_array_equal(blocks[2][0], x[[1, 2]])
    np.testing.assert_array_equal(blocks[0][1], [1])
    with pytest.raises(DataError, match=r"no data, e.g. \[2\]"):
        agent_blocks(pa.table({"node": [0, 1], "id": [10, 11]}), ids, x, y, g)
    with pytest.raises(DataError, match="data id 99 at row 1 is not in the dataset"):
        agent_blocks(pa.table({"node": [0, 1, 2], "id": [10, 99, 11]}), ids, x, y, g)
    with pytest.raises(GraphError, match=r"agent\(s\) \[5\] hold data but have no edge"):
        agent_blocks(pa.table({"node": [0, 1, 2, 5], "id": [10, 11, 12, 13]}), ids, x, y, g)
    bad = x.copy()
    bad[1, 0] = np.nan
    with pytest.raises(DataError, match="data id 11 has NaN"):
        agent_blocks(ok, ids, bad, y, g)


@pytest.mark.parametrize("parts", [1, 2, 3, 4])
def test_partition_balanced_with_few_cut_edges(parts):
    g = standard_graph("les_miserables")
    part = partition(g, parts, seed=0)
    sizes = np.bincount(list(part.values()), minlength=parts)
    assert sorted(part) == sorted(g.nodes()) and len(sizes) == parts
    assert sizes.max() - sizes.min() <= parts  # balanced up to rounding of recursive halves
    frac = cut_edge_fraction(g, part)
    if parts == 1:
        assert frac == 0.0
    else:
        rnd = np.random.default_rng(0).permutation(np.arange(g.number_of_nodes()) % parts)
        assert frac < cut_edge_fraction(g, dict(enumerate(rnd)))  # better than a random balanced split
    with pytest.raises(ConfigError):
        partition(g, 0)
