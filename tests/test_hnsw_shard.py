"""ShardedIndex on the session's local Ray: build, search, filters, updates, persistence, failures."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from benchmarks.faultkit import add_node
from shardwalk.core.data.builtin import synthetic
from shardwalk.core.data.schema import from_numpy, validate_knn_graph
from shardwalk.core.errors import ConfigError, CorruptArtifactError, DataError, ShardUnavailableError
from shardwalk.core.index import hnsw
from shardwalk.workers.sharded_index import ShardedIndex

pytestmark = pytest.mark.ray

N, D = 2000, 16
FAST = {"M": 8, "ef_construction": 64}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x, _ = synthetic(n=N, d=D, seed=2)
    return x, np.arange(N, dtype=np.int64)


@pytest.fixture(scope="module")
def queries(data: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    rng = np.random.default_rng(5)
    return data[0][rng.choice(N, 100, replace=False)] + rng.normal(scale=0.05, size=(100, D)).astype(np.float32)


@pytest.fixture(scope="module")
def hash_index(_ray_module: None, data: tuple[np.ndarray, np.ndarray]) -> Iterator[ShardedIndex]:
    """Shared by the read-only tests (and the restart test, which leaves it as it found it)."""
    index = ShardedIndex.build(data[0], shards=3, **FAST)
    yield index
    index.close()


@pytest.fixture(scope="module")
def _ray_module() -> None:
    """Module-scoped twin of `ray_local` (same session Ray) so the shared index can be module-scoped."""
    import ray as _ray

    from shardwalk.pipelines.runtime import connect

    if not _ray.is_initialized():
        connect(num_cpus=2)


def _truth(x: np.ndarray, q: np.ndarray, k: int = 10, space: str = "l2", ids: np.ndarray | None = None) -> np.ndarray:
    return hnsw.exact_search(q, x, np.arange(len(x)) if ids is None else ids, k, space)[0]


def test_build_search_recall_and_shapes(hash_index: ShardedIndex, data, queries) -> None:
    ids, dists = hash_index.search(queries, k=10, ef=64)
    assert ids.shape == dists.shape == (100, 10)
    assert ids.dtype == np.int64 and dists.dtype == np.float32
    assert hnsw.recall_at_k(ids, _truth(data[0], queries)) >= 0.95
    assert (np.diff(dists, axis=1) >= 0).all()
    stats = hash_index.stats()
    assert stats["live"] == N and sum(stats["shard_sizes"]) == N and stats["balanced_within_2x"]
    # hash routing is stable: shard j holds exactly the ids that hash to j
    assert stats["shard_sizes"] == np.bincount(hnsw.hash_shard(data[1], 3), minlength=3).tolist()


def test_a_build_streamed_in_many_chunks_is_complete_and_deterministic(
    _ray_module: None, monkeypatch: pytest.MonkeyPatch, data, queries
) -> None:
    """Readers route their parts in chunks (here 10 of 100 rows each): every id lands once, builds repeat."""
    monkeypatch.setattr(hnsw, "ROUTE_CHUNK_MIN_ROWS", 100)
    assert hnsw.route_chunks(N // 2) == 10
    results = []
    for _ in range(2):
        with ShardedIndex.build(data[0], shards=2, cpus_per_actor=0, **FAST) as index:  # 1 thread: deterministic
            stats = index.stats()
            assert stats["live"] == N
            assert stats["shard_sizes"] == np.bincount(hnsw.hash_shard(data[1], 2), minlength=2).tolist()
            results.append(index.search(queries, k=10, ef=64))
    assert hnsw.recall_at_k(results[0].ids, _truth(data[0], queries)) >= 0.95
    np.testing.assert_array_equal(results[0].ids, results[1].ids)
    np.testing.assert_array_equal(results[0].dists, results[1].dists)


def test_batches_and_ef_per_request(hash_index: ShardedIndex, queries) -> None:
    a = hash_index.search(queries, k=5, ef=200, batch_size=7)
    b = hash_index.search(queries, k=5, ef=200, batch_size=1000)
    assert (a.ids == b.ids).all()
    low = hash_index.search(queries, k=5, ef=5)
    assert low.ids.shape == (100, 5) and low.coverage == 1.0


@pytest.mark.parametrize("space", ["ip", "cosine"])
def test_other_spaces(ray_local: None, data, queries, space: str) -> None:
    with ShardedIndex.build(data[0], shards=2, space=space, **FAST) as index:
        ids, dists = index.search(queries, k=10, ef=100)
        assert hnsw.recall_at_k(ids, _truth(data[0], queries, space=space)) >= 0.9
        exact_ids, exact_d = hnsw.exact_search(queries, data[0], data[1], 10, space)
        same = ids[:, 0] == exact_ids[:, 0]  # same neighbour => same distance convention as exact search
        assert same.mean() >= 0.9
        np.testing.assert_allclose(dists[same, 0], exact_d[same, 0], rtol=1e-4, atol=1e-4)


def test_kmeans_partition_balanced_and_routed(ray_local: None, data, queries) -> None:
    with ShardedIndex.build(data[0], shards=4, partition="kmeans", **FAST) as index:
        stats = index.stats()
        assert stats["partition"] == "kmeans" and stats["balanced_within_2x"]
        truth = _truth(data[0], queries)
        r1 = hnsw.recall_at_k(index.search(queries, k=10, nprobe=1)[0], truth)
        r4 = hnsw.recall_at_k(index.search(queries, k=10, nprobe=4)[0], truth)
        assert r4 >= 0.95 and r1 <= r4


def test_filtered_search_small_and_large_allowed_sets(hash_index: ShardedIndex, data, queries) -> None:
    allowed = np.arange(0, N, 3)
    truth = _truth(data[0][allowed], queries, ids=allowed)
    exact = hash_index.search(queries, k=10, allow_ids=allowed)  # small per shard: brute force
    assert hnsw.recall_at_k(exact.ids, truth) == 1.0
    assert np.isin(exact.ids, allowed).all()
    hash_index.exact_threshold = 0  # force hnswlib's filter callable
    try:
        approx = hash_index.search(queries, k=10, ef=100, allow_ids=allowed)
    finally:
        hash_index.exact_threshold = ShardedIndex.exact_threshold
    assert np.isin(approx.ids, allowed).all()
    assert hnsw.recall_at_k(approx.ids, truth) >= 0.9
    tiny = hash_index.search(queries[:3], k=10, allow_ids=[5, 7])  # fewer allowed than k: padded
    assert (tiny.ids[:, 2:] == -1).all() and set(tiny.ids[:, :2].ravel()) == {5, 7}


def test_add_and_delete(ray_local: None, data, queries) -> None:
    x, ids = data
    with ShardedIndex.build(from_numpy(x[:1500], ids=ids[:1500]), shards=2, **FAST) as index:
        assert index.add(from_numpy(x[1500:], ids=ids[1500:])) == 500
        assert len(index) == N
        found = index.search(x[1500:1510], k=1, ef=50)[0][:, 0]
        assert (found == ids[1500:1510]).mean() >= 0.9
        assert index.delete([1500, 1501, 999_999]) == 2
        assert len(index) == N - 2
        got = index.search(x[1500:1502], k=5)[0]
        assert not np.isin([1500, 1501], got).any()
        with pytest.raises(DataError, match="id 3 is already in the index"):
            index.add(from_numpy(x[:2] + 1, ids=[3, 100_000]))
        with pytest.raises(DataError, match="duplicate value 7"):
            index.add(from_numpy(x[:2], ids=[7, 7]))
        index.add(from_numpy(x[1500:1501], ids=[1500]))  # a deleted id may come back
        assert index.search(x[1500:1501], k=1, ef=50)[0][0, 0] == 1500
        assert len(index) == N - 1


def test_save_open_roundtrip_and_knn_graph(hash_index: ShardedIndex, data, queries, tmp_path: Path) -> None:
    before = hash_index.search(queries, k=10)
    path = hash_index.save(tmp_path / "idx")
    assert (path / "_SUCCESS").is_file() and (path / hnsw.INDEX_FILE).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with ShardedIndex.open(path) as again:
        after = again.search(queries, k=10)
        assert hnsw.recall_at_k(after.ids, before.ids) >= 0.99
        info = again.knn_graph(tmp_path / "graph", k=5, ef=64)
    assert info["rows"] == N
    table = validate_knn_graph(pq.read_table(tmp_path / "graph"))
    assert table.num_rows == N and sorted(table.column("id").to_pylist()) == list(range(N))
    nbrs = np.array(table.column("neighbors").to_pylist())
    assert nbrs.shape == (N, 5) and not (nbrs == table.column("id").to_numpy()[:, None]).any()
    truth = hnsw.drop_self(np.arange(N), *hnsw.exact_search(data[0], data[0], np.arange(N), 6, "l2"), 5)[0]
    order = np.argsort(table.column("id").to_numpy())
    assert hnsw.recall_at_k(nbrs[order], truth) >= 0.9
    hash_index.save(path)  # saving over an existing index replaces it
    assert (path / "_SUCCESS").is_file()


# ----------------------------------------------------------------------------- bad input


def test_bad_input_at_build(ray_local: None, data, tmp_path: Path) -> None:
    x = data[0][:50].copy()
    x[17, 3] = np.nan
    with pytest.raises(DataError, match="NaN or inf at row 17"):
        ShardedIndex.build(x, shards=2, workdir=tmp_path, **FAST)
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    with pytest.raises(DataError, match="empty"):
        ShardedIndex.build(np.zeros((0, 4), np.float32), shards=2)
    with pytest.raises(ConfigError, match="unknown space 'l3'"):
        ShardedIndex.build(data[0][:10], space="l3")
    dup = pa.table({"id": [1, 2, 1, 4], "vector": pa.array([[0.0, 1.0]] * 4, pa.list_(pa.float32(), 2))})
    with pytest.raises(DataError, match="duplicate value 1"):
        ShardedIndex.build(dup, shards=2, **FAST)
    with pytest.raises(DataError, match="duplicate value 1"):
        ShardedIndex.build(dup, shards=2, partition="kmeans", **FAST)


def test_dimension_differs_between_shards(ray_local: None, tmp_path: Path) -> None:
    pq.write_table(from_numpy(np.ones((5, 3)), ids=range(5)), tmp_path / "a.parquet")
    pq.write_table(from_numpy(np.ones((5, 4)), ids=range(5, 10)), tmp_path / "b.parquet")
    with pytest.raises(DataError, match="dimension differs between shards"):
        ShardedIndex.build(str(tmp_path), shards=2, **FAST)


def test_bad_queries_k_and_add_dimension(hash_index: ShardedIndex, data) -> None:
    with pytest.raises(DataError, match="dimension 3 differs"):
        hash_index.search(np.zeros((2, 3)), k=1)
    q = data[0][:2].copy()
    q[1, 0] = np.inf
    with pytest.raises(DataError, match="NaN or inf at row 1"):
        hash_index.search(q, k=1)
    with pytest.raises(ConfigError, match="k must be"):
        hash_index.search(data[0][:2], k=0)
    with pytest.raises(ConfigError, match="larger than the index"):
        hash_index.search(data[0][:2], k=N + 1)
    with pytest.raises(DataError, match="dimension 8, expected 16"):
        hash_index.add(from_numpy(np.ones((3, 8)), ids=[N, N + 1, N + 2]))


def test_corrupt_shard_and_not_an_index(hash_index: ShardedIndex, tmp_path: Path) -> None:
    path = hash_index.save(tmp_path / "idx")
    shard = path / hnsw.shard_file(1)
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 3] ^= 0x55
    shard.write_bytes(bytes(raw))
    with pytest.raises(CorruptArtifactError, match="checksum does not match"):
        ShardedIndex.open(path)
    with pytest.raises(DataError, match="not a shardwalk index"):
        ShardedIndex.open(tmp_path)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a shardwalk index; refusing"):
        hash_index.save(tmp_path / "junk")
    assert (tmp_path / "junk" / "file.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- failures and replicas


def test_restarted_shard_reloads_itself(hash_index: ShardedIndex, queries) -> None:
    before = hash_index.search(queries, k=10).ids
    victim = hash_index.actors[1][0]
    pid = ray.get(victim.stats.remote())["pid"]
    ray.kill(victim, no_restart=False)
    deadline = time.time() + 60
    while True:  # calls made while the actor is restarting fail; once back it has reloaded its file
        try:
            stats = ray.get(victim.stats.remote())
            if stats["pid"] != pid:
                break
        except ray.exceptions.RayActorError:
            pass
        assert time.time() < deadline, "actor did not restart"
        time.sleep(0.2)
    assert stats["reconstructed"] and stats["live"] > 0
    assert hnsw.recall_at_k(hash_index.search(queries, k=10).ids, before) >= 0.99


def test_dead_shard_fails_or_reports_partial(ray_local: None, data, queries) -> None:
    with ShardedIndex.build(data[0], shards=2, **FAST) as index:
        ray.kill(index.actors[0][0], no_restart=True)
        with pytest.raises(ShardUnavailableError, match="shard 0"):
            index.search(queries, k=5)
        partial = index.search(queries, k=5, allow_partial=True)
        assert partial.coverage == pytest.approx(0.5)
        owner = hnsw.hash_shard(partial.ids.ravel(), 2)
        assert (owner == 1).all()


def test_replicas_take_over_a_dead_replica(ray_local: None, data, queries) -> None:
    with ShardedIndex.build(data[0], shards=2, replicas=2, **FAST) as index:
        assert [len(row) for row in index.actors] == [2, 2]
        full = index.search(queries, k=5, batch_size=10)
        ray.kill(index.actors[1][0], no_restart=True)
        again = index.search(queries, k=5, batch_size=10)
        assert again.coverage == 1.0
        assert hnsw.recall_at_k(again.ids, full.ids) >= 0.95
        assert json.loads((index.workdir / hnsw.INDEX_FILE).read_text())["replicas"] == 2


@pytest.mark.multinode
@pytest.mark.slow
def test_replicas_on_different_nodes_survive_a_node_loss(ray_cluster, data, queries) -> None:
    """Two 1-CPU nodes: the two replicas of a shard land on different nodes; losing one node keeps search up."""
    with ShardedIndex.build(data[0], shards=1, replicas=2, **FAST) as index:
        placed = index.stats()["actors"]
        nodes = {a["node_id"] for a in placed}
        assert len(nodes) == 2
        full = index.search(queries, k=5)
        primary_node = next(a["node_id"] for a in placed if a["replica"] == 0)
        victim = next(n for n in ray_cluster.worker_nodes if n.node_id == primary_node)
        ray_cluster.remove_node(victim, allow_graceful=False)
        index.replica_timeout = 10.0
        after = index.search(queries, k=5)
        assert after.coverage == 1.0
        assert hnsw.recall_at_k(after.ids, full.ids) >= 0.95
    add_node(ray_cluster)  # the cluster is shared: give back the lost node's CPU
