"""Pure tests of core/index/hnsw.py: validation, merging, exact search, partitioning, manifests (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import hnswlib
import numpy as np
import pytest

from shardwalk.core.data.builtin import synthetic
from shardwalk.core.errors import ConfigError, CorruptArtifactError, DataError
from shardwalk.core.index import hnsw


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x, _ = synthetic(n=1500, d=16, seed=1)
    return x, np.arange(len(x), dtype=np.int64) * 7 - 100  # includes negative ids


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"space": "hamming"}, "unknown space 'hamming'"),
        ({"M": 1}, "M must be"),
        ({"ef_construction": 0}, "ef_construction must be"),
        ({"random_seed": -1}, "random_seed"),
        ({"dim": 0}, "dim must be"),
    ],
)
def test_validate_params_rejects(kwargs: dict, fragment: str) -> None:
    args = {"dim": 8, **kwargs}
    with pytest.raises(ConfigError, match=fragment):
        hnsw.validate_params(**args)


def test_validate_params_accepts_every_space() -> None:
    for space in hnsw.SPACES:
        assert hnsw.validate_params(dim=4, space=space).space == space


@pytest.mark.parametrize("k", [0, -3, 2.5, True])
def test_k_must_be_positive_integer(k: object) -> None:
    with pytest.raises(ConfigError, match="k must be"):
        hnsw.validate_search(k, 64, live=100)


def test_k_larger_than_index() -> None:
    with pytest.raises(ConfigError, match="larger than the index"):
        hnsw.validate_search(11, 64, live=10)


def test_nprobe_bounds() -> None:
    assert hnsw.validate_search(5, 10, 100, None, shards=4) == (5, 10, 4)
    with pytest.raises(ConfigError, match="nprobe"):
        hnsw.validate_search(5, 10, 100, 5, shards=4)
    with pytest.raises(ConfigError, match="ef must be"):
        hnsw.validate_search(5, 0, 100)


def test_layout_validation() -> None:
    with pytest.raises(ConfigError, match="partition"):
        hnsw.validate_layout(shards=2, partition="range")
    with pytest.raises(ConfigError, match="shards"):
        hnsw.validate_layout(shards=0)
    with pytest.raises(ConfigError, match="replicas"):
        hnsw.validate_layout(shards=2, replicas=0)


def test_queries_nan_and_dimension() -> None:
    q = np.zeros((3, 4), np.float32)
    q[2, 1] = np.nan
    with pytest.raises(DataError, match="NaN or inf at row 2"):
        hnsw.validate_queries(q, 4)
    with pytest.raises(DataError, match="dimension 5 differs from the index dimension 4"):
        hnsw.validate_queries(np.zeros((2, 5)), 4)
    with pytest.raises(DataError, match="0 rows"):
        hnsw.validate_queries(np.zeros((0, 4)), 4)
    assert hnsw.validate_queries(np.ones(4), 4).shape == (1, 4)


# ----------------------------------------------------------------------------- merging


def test_merge_orders_dedups_and_pads() -> None:
    a = (np.array([[1, 2, 3]]), np.array([[0.1, 0.2, np.inf]], np.float32))
    b = (np.array([[2, 5, 9]]), np.array([[0.2, 0.05, 0.1]], np.float32))
    ids, d = hnsw.merge_results([a, b], 6)
    assert ids.tolist() == [[5, 1, 9, 2, -1, -1]]  # tie 0.1: id 1 before id 9; duplicate 2 once
    assert d.dtype == np.float32 and np.isinf(d[0, 4:]).all()


def test_merge_keeps_smallest_distance_of_duplicates() -> None:
    a = (np.array([[7, 8]]), np.array([[0.5, 0.6]], np.float32))
    b = (np.array([[7, 3]]), np.array([[0.4, 0.9]], np.float32))
    ids, d = hnsw.merge_results([a, b], 3)
    assert ids.tolist() == [[7, 8, 3]]
    assert d[0, 0] == pytest.approx(0.4)


def test_merge_matches_global_sort(data: tuple[np.ndarray, np.ndarray]) -> None:
    rng = np.random.default_rng(0)
    ids = rng.permutation(1000)[:60].reshape(2, 30)
    d = rng.random((2, 30)).astype(np.float32)
    parts = [(ids[:, i : i + 10], d[:, i : i + 10]) for i in range(0, 30, 10)]
    got, _ = hnsw.merge_results(parts, 5)
    expect = np.take_along_axis(ids, np.argsort(d, axis=1), axis=1)[:, :5]
    assert (got == expect).all()


def test_drop_self() -> None:
    ids = np.array([[4, 1, 2], [5, 6, 7]])
    d = np.array([[0.0, 0.1, 0.2], [0.1, 0.2, 0.3]], np.float32)
    out, od = hnsw.drop_self(np.array([4, 9]), ids, d, 2)
    assert out.tolist() == [[1, 2], [5, 6]]  # row 2: self missing, so the farthest is dropped
    assert od.shape == (2, 2)


# ----------------------------------------------------------------------------- exact search


@pytest.mark.parametrize("space", hnsw.SPACES)
def test_exact_search_matches_hnswlib_convention(space: str, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, ids = data
    q = x[:40] + 0.05
    got_ids, got_d = hnsw.exact_search(q, x, ids, 10, space, query_block=13, data_block=200)
    index = hnswlib.Index(space=space, dim=x.shape[1])
    index.init_index(len(x), M=16, ef_construction=200)
    index.add_items(x, ids.view(np.uint64))
    index.set_ef(400)
    labels, dists = index.knn_query(q, k=10)
    assert hnsw.recall_at_k(got_ids, labels.view(np.int64)) >= 0.99
    np.testing.assert_allclose(np.sort(dists, axis=1), got_d, rtol=1e-4, atol=1e-4)


def test_exact_search_pads_when_k_exceeds_data() -> None:
    x = np.eye(3, dtype=np.float32)
    ids, d = hnsw.exact_search(x[:1], x, np.array([10, 11, 12]), 5, "l2")
    assert ids.tolist() == [[10, 11, 12, -1, -1]]
    assert d[0, 0] == 0 and np.isinf(d[0, 3:]).all()


def test_recall() -> None:
    truth = np.array([[1, 2, 3, -1]])
    assert hnsw.recall_at_k(np.array([[1, 3, 9, 8]]), truth) == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- partitioning


def test_hash_shard_stable_and_balanced() -> None:
    ids = np.arange(20000)
    owner = hnsw.hash_shard(ids, 8)
    assert (owner == hnsw.hash_shard(ids[::-1], 8)[::-1]).all()  # order/layout independent
    sizes = np.bincount(owner, minlength=8)
    assert sizes.min() > 0.9 * sizes.mean() and sizes.max() < 1.1 * sizes.mean()


def test_kmeans_router_balanced_and_routes_to_own_cell(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = data
    router = hnsw.train_router(x, 6, "l2", seed=3)
    cells = router.assign(x)
    assert hnsw.shard_sizes_ok(np.bincount(cells, minlength=6))
    probes = router.probe(x[:50], 2)
    assert probes.shape == (50, 2)
    assert (probes[:, 0] == cells[:50]).all()  # the nearest probe is the cell the vector was put in
    again = hnsw.Router.from_json(json.loads(json.dumps(router.to_json())))
    assert (again.assign(x) == cells).all()


def test_balance_offsets_fix_a_skewed_sample() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (900, 2)), rng.normal(5, 0.1, (100, 2))]).astype(np.float32)
    router = hnsw.train_router(x, 4, "l2")
    assert hnsw.shard_sizes_ok(np.bincount(router.assign(x), minlength=4))


def test_kmeans_needs_enough_vectors() -> None:
    with pytest.raises(DataError, match="at least 4 vectors"):
        hnsw.train_router(np.zeros((3, 2), np.float32), 4, "l2")


def test_shard_sizes_ok() -> None:
    assert hnsw.shard_sizes_ok([10, 10, 19])
    assert not hnsw.shard_sizes_ok([1, 1, 10])


# ----------------------------------------------------------------------------- manifests


def _write_shard(tmp_path: Path, x: np.ndarray, ids: np.ndarray) -> hnsw.HnswParams:
    params = hnsw.validate_params(dim=x.shape[1])
    index = hnswlib.Index(space="l2", dim=x.shape[1])
    index.init_index(len(x))
    index.add_items(x, ids.view(np.uint64))
    index.save_index(str(tmp_path / hnsw.shard_file(0)))
    manifest = hnsw.build_shard_manifest(tmp_path, 0, params, count=len(x), live_ids=ids, deleted=0)
    (tmp_path / hnsw.shard_manifest_file(0)).write_text(json.dumps(manifest))
    return params


def test_shard_manifest_roundtrip(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, ids = data
    params = _write_shard(tmp_path, x[:100], ids[:100])
    manifest, loaded = hnsw.load_shard_manifest(tmp_path, 0)
    assert loaded == params
    assert manifest["live"] == 100 and manifest["id_min"] == int(ids[:100].min())


def test_shard_checksum_mismatch(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, ids = data
    _write_shard(tmp_path, x[:100], ids[:100])
    path = tmp_path / hnsw.shard_file(0)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptArtifactError, match="checksum does not match"):
        hnsw.load_shard_manifest(tmp_path, 0)


def test_missing_shard_manifest(tmp_path: Path) -> None:
    with pytest.raises(CorruptArtifactError, match="shard manifest is missing"):
        hnsw.load_shard_manifest(tmp_path, 3)


def test_not_an_index(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a shardwalk index"):
        hnsw.read_index_manifest(tmp_path)
    (tmp_path / hnsw.INDEX_FILE).write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match="not a shardwalk index manifest"):
        hnsw.read_index_manifest(tmp_path)
    with pytest.raises(DataError, match="not a directory"):
        hnsw.read_index_manifest(tmp_path / "nope")


def test_batches() -> None:
    assert hnsw.batches(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert hnsw.batches(0, 4) == []
    assert hnsw.threads_for(0.5) == 1 and hnsw.threads_for(2.0) == 2


def test_route_chunks_bounds() -> None:
    assert hnsw.route_chunks(0) == hnsw.route_chunks(1) == hnsw.route_chunks(hnsw.ROUTE_CHUNK_MIN_ROWS) == 1
    assert hnsw.route_chunks(hnsw.ROUTE_CHUNK_MIN_ROWS + 1) == 2
    assert hnsw.route_chunks(10**12) == hnsw.ROUTE_MAX_CHUNKS
