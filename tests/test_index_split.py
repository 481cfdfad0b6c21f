"""The split index modules without Ray: the shard actor's class in-process, the manifest value, merges."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shardwalk.core.errors import ShardStateError
from shardwalk.core.index import hnsw, hnsw_results
from shardwalk.core.index.index_meta import IndexMeta
from shardwalk.core.index.row_chunks import RowChunks
from shardwalk.workers.hnsw_actor import LocalHnswShard

D = 8


def _shard(tmp_path: Path, n: int = 300) -> tuple[LocalHnswShard, np.ndarray]:
    """A built single shard (in-process, no Ray) over n seeded vectors with ids 0..n-1."""
    x = np.random.default_rng(0).normal(size=(n, D)).astype(np.float32)
    shard = LocalHnswShard(0, 0, str(tmp_path), 1.0)
    shard.begin_build(n, asdict(hnsw.HnswParams(dim=D, M=8, ef_construction=32)))
    shard.add_pieces((np.arange(n, dtype=np.int64), x))
    shard.finish_build("test")
    return shard, x


SEARCH_ONLY = """
import sys
from dataclasses import asdict
import numpy as np
from shardwalk.core.index import hnsw
from shardwalk.workers.hnsw_actor import LocalHnswShard
x = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
built = LocalHnswShard(0, 0, sys.argv[1], 1.0)
built.begin_build(300, asdict(hnsw.HnswParams(dim=8, M=8, ef_construction=32)))
built.add_pieces((np.arange(300, dtype=np.int64), x))
built.finish_build("test")
opened = LocalHnswShard(0, 0, sys.argv[1], 1.0, load=True)
assert opened.search(x[:3], 5, 16)[0][:, 0].tolist() == [0, 1, 2]
print("pandas" in sys.modules)
baseline = opened.rss0
opened.delete(np.arange(10))  # persists the deleted ids as Parquet: an Arrow conversion
print("pandas" in sys.modules, opened.rss0 - baseline > 1_000_000)
"""


def test_a_replica_that_only_loads_and_searches_never_imports_pandas(tmp_path: Path) -> None:
    """pyarrow imports pandas for its numpy conversions (~0.3 CPU-s a process): only a replica that converts
    Arrow data pays for it, and the memory it takes joins the baseline rather than the per-vector figures."""
    done = subprocess.run([sys.executable, "-c", SEARCH_ONLY, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "True", "True"]


class _Failing:
    """An hnswlib index whose knn_query raises `error` (every other call goes to the real index)."""

    def __init__(self, index: Any, error: RuntimeError) -> None:
        self._index, self._error = index, error

    def knn_query(self, *args: Any, **kwargs: Any) -> Any:
        raise self._error

    def __getattr__(self, name: str) -> Any:
        return getattr(self._index, name)


def test_filtered_search_falls_back_to_exact_only_when_hnswlib_finds_too_few(tmp_path: Path) -> None:
    shard, x = _shard(tmp_path)
    allow = np.array([3, 7, 11], np.int64)
    truth = hnsw.exact_search(x[:4], x[allow], allow, 5, "l2")
    # hnswlib's own "too few allowed neighbours" error: the exact search answers instead
    ids, dists = shard.search(x[:4], 5, 16, allow=allow, exact_threshold=0)
    np.testing.assert_array_equal(ids, truth[0])
    np.testing.assert_allclose(dists, truth[1], rtol=1e-5, atol=1e-4)
    # anything else hnswlib raises is a real failure: it propagates
    shard.index = _Failing(shard.index, RuntimeError("index is corrupted"))
    with pytest.raises(RuntimeError, match="corrupted"):
        shard.search(x[:4], 5, 16, allow=allow, exact_threshold=0)
    shard.index = _Failing(shard.index._index, RuntimeError(f"{'Cannot return the results in a contiguous 2D array'}. x"))
    np.testing.assert_array_equal(shard.search(x[:4], 5, 16, allow=allow, exact_threshold=0)[0], truth[0])


def test_calls_out_of_order_raise_a_typed_error_not_an_assert(tmp_path: Path) -> None:
    """Production invariants survive `python -O`: a typed ShardStateError names the missing step."""
    shard = LocalHnswShard(0, 0, str(tmp_path), 1.0)
    with pytest.raises(ShardStateError, match="read_part"):
        shard.route_chunk(0, 1)
    with pytest.raises(ShardStateError, match="read_part"):
        shard.assign(2, None)
    with pytest.raises(ShardStateError, match="begin_build"):
        shard.add_pieces((np.arange(2), np.zeros((2, D), np.float32)))
    with pytest.raises(ShardStateError, match="load_from"):
        shard.search(np.zeros((1, D), np.float32), 1, 10)


def test_one_routing_path_keeps_or_returns_my_own_piece(tmp_path: Path) -> None:
    """assign + route_chunk: a build keeps the reader's own piece local; an add returns every piece."""
    x = np.random.default_rng(1).normal(size=(50, D)).astype(np.float32)
    ids = np.arange(50, dtype=np.int64)
    target = hnsw.hash_shard(ids, 2)
    for keep_local in (True, False):
        shard = LocalHnswShard(0, 0, str(tmp_path), 1.0)
        shard.staged = RowChunks.of(ids, x)
        counts, buckets = shard.assign(2, None)
        assert counts == np.bincount(target, minlength=2).tolist() and buckets == []
        pieces = shard.route_chunk(0, 1, keep_local=keep_local)
        mine = shard.local_piece if keep_local else pieces[0]
        assert (pieces[0] is None) == keep_local
        np.testing.assert_array_equal(mine[0], ids[target == 0])
        np.testing.assert_array_equal(pieces[1][0], ids[target == 1])
        assert shard.staged is None and shard.targets is None


@pytest.mark.parametrize("partition", ["hash", "kmeans"])
def test_index_meta_writes_the_manifest_keys_earlier_versions_wrote(partition: str) -> None:
    """A manifest saved by the dict-based index reads back and re-serialises to the same bytes."""
    legacy: dict[str, Any] = {
        "shards": 2, "replicas": 1, "partition": partition, "space": "l2", "dim": 4,
        "params": asdict(hnsw.HnswParams(dim=4)), "build_seconds": 1.5, "shard_sizes": [3, 4], "live": 7,
        "format": hnsw.FORMAT,
    }
    if partition == "kmeans":
        legacy["router"] = {"centroids": [[0.0] * 4, [1.0] * 4], "offsets": [0.0, 0.1], "space": "l2"}
    meta = IndexMeta.from_json(json.loads(json.dumps(legacy)))
    assert json.dumps(meta.to_json(), sort_keys=True) == json.dumps(legacy, sort_keys=True)
    with pytest.raises(Exception, match="frozen|cannot assign"):
        meta.live = 8  # type: ignore[misc]


def test_merge_batches_places_each_shard_answer_and_merges_per_batch() -> None:
    # batch [0, 2): shard A answers both rows, shard B only row 1; batch [2, 3): nobody answered
    a = (np.array([[5, 6], [7, 8]]), np.array([[0.1, 0.4], [0.2, 0.3]], np.float32))
    b = (np.array([[9, 5]]), np.array([[0.05, 0.5]], np.float32))
    ids, dists = hnsw_results.merge_batches(3, 2, [(0, 2, np.array([0, 1]), a), (0, 2, np.array([1]), b)])
    np.testing.assert_array_equal(ids, [[5, 6], [9, 7], [-1, -1]])
    np.testing.assert_allclose(dists[:2], [[0.1, 0.4], [0.05, 0.2]], rtol=1e-6)
    assert np.isinf(dists[2]).all()


def test_one_shard_answer_is_taken_in_order_as_a_merge_would_give_it() -> None:
    """The single-answer fast path: ties ordered by id, out-of-order rows sorted, padding normalised."""
    rng = np.random.default_rng(3)
    ids = np.stack([rng.permutation(50)[:6] for _ in range(40)]).astype(np.int64)
    dists = np.sort(rng.integers(0, 8, size=(40, 6)).astype(np.float32), axis=1)  # many ties
    dists[5] = dists[5][::-1].copy()  # a row out of order
    dists[7, 4:], ids[7, 4:] = np.inf, 3  # padding with a stray id
    dists[9, 2] = np.nan  # a non-finite entry mid-row
    got = hnsw_results.in_order(ids, dists)
    want = hnsw.merge_results([(ids, dists)], 6)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    whole = hnsw_results.merge_batches(45, 6, [(0, 40, np.arange(40), (ids, dists))])
    np.testing.assert_array_equal(whole[0][:40], want[0])
    assert (whole[0][40:] == -1).all()


def test_answers_travel_with_narrow_ids_only_when_every_id_fits() -> None:
    dists = np.zeros((2, 2), np.float32)
    small = hnsw_results.narrow_ids(np.array([[-1, 5], [2**31 - 1, -(2**31)]], np.int64), dists)[0]
    assert small.dtype == np.int32 and small[1, 0] == 2**31 - 1 and small[0, 0] == -1
    wide = hnsw_results.narrow_ids(np.array([[2**31, 5], [1, 2]], np.int64), dists)[0]
    assert wide.dtype == np.int64 and wide[0, 0] == 2**31
    merged = hnsw_results.merge_batches(2, 2, [(0, 2, np.arange(2), (small, dists))])[0]
    assert merged.dtype == np.int64


def test_search_batch_gives_each_replica_one_share_unless_told() -> None:
    assert hnsw.search_batch(10_000, 1) == 10_000
    assert hnsw.search_batch(10_000, 3) == 3334
    assert hnsw.search_batch(10_000, 1, 4096) == 4096
    assert hnsw.search_batch(10**6, 1) == hnsw.SEARCH_BATCH_MAX
    assert hnsw.search_batch(1, 4) == 1


def test_labels_padding_and_piece_concatenation() -> None:
    ids, dists = hnsw_results.labels_as_ids(np.array([[2, 3]], np.uint64), np.array([[0.5, 1.0]]), 4)
    np.testing.assert_array_equal(ids, [[2, 3, -1, -1]])
    assert ids.dtype == np.int64 and dists.dtype == np.float32 and np.isinf(dists[0, 2:]).all()
    one = (np.arange(3), np.ones((3, 2), np.float32))
    got = hnsw_results.concat_pieces([one, (np.empty(0, np.int64), np.empty((0, 2), np.float32))], 2)
    assert np.shares_memory(got[1], one[1]), "a single non-empty piece is used in place"
    got = hnsw_results.concat_pieces([one, one], 2)
    assert got[1].shape == (6, 2) and got[0].dtype == np.int64


def test_a_dead_rank_probe_pings_instead_of_re_reading_the_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    """`summary()` re-reads a rank's rows over its state; the liveness probe must not call it."""
    import ray

    from shardwalk.workers import scorer

    calls: list[str] = []

    class _Method:
        def __init__(self, name: str) -> None:
            self.name = name

        def remote(self) -> str:
            calls.append(self.name)
            return self.name

    class _Rank:
        summary, ping = _Method("summary"), _Method("ping")

    monkeypatch.setattr(ray, "get", lambda ref, timeout=None: ref)
    scorer._raise_if_a_rank_died([_Rank(), _Rank()])
    assert calls == ["ping", "ping"]


def test_row_chunks_view_route_and_release_batches_front_to_back() -> None:
    import pyarrow as pa

    from shardwalk.core.data.schema import from_numpy

    x = np.arange(10 * D, dtype=np.float32).reshape(10, D)
    table = pa.concat_tables([from_numpy(x[:4], ids=np.arange(4)), from_numpy(x[4:], ids=np.arange(4, 10))])
    rows = RowChunks.from_table(table, D)
    assert len(rows) == 10 and rows.all_ids().tolist() == list(range(10))
    ids, vecs = rows.rows(1, 3)
    assert np.shares_memory(vecs, rows.batches()[0][1]), "rows inside one batch are views"
    ids, vecs = rows.rows(2, 7)  # across the two batches: a copy of just this span
    assert ids.tolist() == [2, 3, 4, 5, 6]
    np.testing.assert_array_equal(vecs, x[2:7])
    np.testing.assert_array_equal(rows.take(np.array([0, 5, 9])), x[[0, 5, 9]])
    assert rows.release_before(7) == 1 and len(rows.batches()) == 1
    np.testing.assert_array_equal(rows.rows(7, 10)[1], x[7:])
    with pytest.raises(IndexError, match="released"):
        rows.rows(0, 2)
    assert rows.rows(3, 3)[1].shape == (0, D)
