"""The all-points kNN graph: exact shape and determinism, bounded batches, and a shard actor lost mid-graph
(issue 17, item 2: the graph used to fail with ShardUnavailableError although the shards were saved)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray

from shardwalk.core.data.builtin import synthetic
from shardwalk.core.errors import ConfigError, ShardUnavailableError

pytestmark = pytest.mark.ray

N, D = 1500, 16
FAST: dict[str, Any] = {"M": 8, "ef_construction": 64, "cpus_per_actor": 0}


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return synthetic(n=N, d=D, seed=11)[0]


@pytest.fixture(scope="module")
def _ray_module() -> None:
    from shardwalk.pipelines.runtime import connect

    if not ray.is_initialized():
        connect(num_cpus=2)


@pytest.fixture(scope="module")
def index(_ray_module: None, data: np.ndarray) -> Iterator[Any]:
    from shardwalk.workers.sharded_index import ShardedIndex

    with ShardedIndex.build(data, shards=2, **FAST) as built:
        yield built


@pytest.fixture(scope="module")
def clean(index: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The fault-free graph every other run must reproduce exactly."""
    out = tmp_path_factory.mktemp("clean")
    index.knn_graph(out, k=5, ef=64, batch_size=100)
    return _table(out)


def _table(directory: Path) -> Any:
    return pq.read_table(directory).sort_by("id")


def test_graph_covers_every_point_once_without_self(clean: Any) -> None:
    ids = clean.column("id").to_numpy()
    assert np.array_equal(ids, np.arange(N))
    nbrs = np.array(clean.column("neighbors").to_pylist())
    assert nbrs.shape == (N, 5) and not (nbrs == ids[:, None]).any()
    dists = np.array(clean.column("distances").to_pylist())
    assert (np.diff(dists, axis=1) >= 0).all()


def test_batch_size_and_batches_in_flight_do_not_change_the_graph(index: Any, clean: Any, tmp_path: Path) -> None:
    stats = index.knn_graph(tmp_path, k=5, ef=64, batch_size=512, in_flight=1)
    assert stats["rows"] == N and stats["parts"] == len(list(tmp_path.glob("part-*.parquet")))
    assert _table(tmp_path).equals(clean)
    assert not list(tmp_path.glob(".*")), "a temporary part was left behind"


def test_points_read_from_the_built_from_parts_give_the_same_graph(index: Any, clean: Any, data: np.ndarray,
                                                                   tmp_path: Path) -> None:
    """The pipeline's path: batches are row ranges of the ingest parts, not hnswlib get_items copies."""
    from shardwalk.core.data.schema import from_numpy
    from shardwalk.core.storage.files import write_parquet

    table = from_numpy(data)
    for i, (a, b) in enumerate([(0, 700), (700, 1100), (1100, N)]):  # ranges that straddle the files
        write_parquet(table.slice(a, b - a), tmp_path / "built" / f"part-{i:05d}.parquet")
    stats = index.knn_graph(tmp_path / "graph", k=5, ef=64, batch_size=256, built_from=tmp_path / "built")
    assert stats["rows"] == N and stats["parts"] == 6
    assert _table(tmp_path / "graph").equals(clean)
    with pytest.raises(ConfigError, match=r"part-00000.parquet: holds 700 rows but the index holds 1,500"):
        index.knn_graph(tmp_path / "g2", k=5, built_from=tmp_path / "built" / "part-00000.parquet")
    assert not (tmp_path / "g2").exists()


@pytest.mark.parametrize("batch_size", [0, -3, 2.5])
def test_a_bad_batch_size_is_refused(index: Any, tmp_path: Path, batch_size: Any) -> None:
    with pytest.raises(ConfigError, match="batch_size must be an integer >= 1"):
        index.knn_graph(tmp_path, k=5, batch_size=batch_size)


def _kill_when_graph_waits(monkeypatch: pytest.MonkeyPatch, victim: Any, no_restart: bool) -> list[int]:
    """Kill `victim` the first time the driver waits for graph results (ray.wait or ray.get), once.

    The victim is first kept busy by one long search, so the graph calls sent to it are queued when it dies.
    """
    real_get, real_wait, killed = ray.get, ray.wait, []
    pid = real_get(victim.stats.remote())["pid"]
    blocker = np.random.default_rng(0).normal(size=(40_000, D)).astype(np.float32)
    victim.search.remote(blocker, 10, 400)

    def kill_once() -> None:
        if not killed:
            killed.append(pid)
            ray.kill(victim, no_restart=no_restart)

    def get(*args: Any, **kwargs: Any) -> Any:
        kill_once()
        return real_get(*args, **kwargs)

    def wait(*args: Any, **kwargs: Any) -> Any:
        kill_once()
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(ray, "get", get)
    monkeypatch.setattr(ray, "wait", wait)
    return killed


def test_shard_actor_killed_during_knn_graph_restarts_and_the_graph_is_identical(
    index: Any, clean: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17 item 2: the killed actor restarts, reloads its saved shard, and its batches are redone."""
    killed = _kill_when_graph_waits(monkeypatch, index.actors[1][0], no_restart=False)
    stats = index.knn_graph(tmp_path, k=5, ef=64, batch_size=100)
    monkeypatch.undo()
    assert killed, "the fault was not injected"
    assert ray.get(index.actors[1][0].stats.remote())["reconstructed"]
    assert stats["rows"] == N
    assert _table(tmp_path).equals(clean)
    assert not list(tmp_path.glob(".*")), "a temporary part was left behind"


def test_a_shard_that_never_comes_back_fails_the_graph_with_a_typed_error(
    _ray_module: None, data: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shardwalk.workers.sharded_index import ShardedIndex

    with ShardedIndex.build(data[:400], shards=2, **FAST) as small:
        _kill_when_graph_waits(monkeypatch, small.actors[0][0], no_restart=True)
        with pytest.raises(ShardUnavailableError, match="shard"):
            small.knn_graph(tmp_path / "g", k=5, batch_size=100)


def test_a_build_without_shards_is_sized_to_the_cluster(_ray_module: None, data: np.ndarray) -> None:
    """Local Ray = one node with CPUs: one shard whose actor runs the free CPUs as hnswlib threads."""
    from shardwalk.core.plan.sizing import Node, plan
    from shardwalk.workers.cluster import cluster_nodes
    from shardwalk.workers.sharded_index import ShardedIndex

    nodes = cluster_nodes()
    assert nodes == [Node(2.0, nodes[0].memory_bytes)]
    free = ray.available_resources().get("CPU", 0.0)
    with ShardedIndex.build(data[:300], M=8, ef_construction=32) as built:
        stats = built.stats()
    assert stats["shards"] == plan(nodes, 300, D, 8).shards == 1
    assert stats["actors"][0]["threads"] == max(1, int(min(2.0, free)))
