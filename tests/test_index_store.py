"""ShardedIndex.save/open and `shardwalk query` against an index on a real S3-compatible server (moto)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardwalk.core.errors import CorruptArtifactError
from shardwalk.core.storage import store

pytestmark = pytest.mark.ray


def _data(n: int = 300, d: int = 8) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)


def test_save_to_s3_and_open_from_s3_search_the_same(ray_local: None, s3_bucket: str, tmp_path: Path) -> None:
    from shardwalk.workers.sharded_index import ShardedIndex

    data = _data()
    uri = f"{s3_bucket}/indexes/demo"
    with ShardedIndex.build(data, shards=2, M=8, ef_construction=50) as index:
        assert index.save(uri) == uri
        want = index.search(data[:20], k=5, ef=64)
    c = store.find_committed(uri)  # every object verifies against the manifest written last
    assert c is not None and c.manifest["kind"] == "index" and "shard-00001.bin" in c.manifest["files"]
    for _ in range(2):  # the second open reuses the node cache
        with ShardedIndex.open(uri) as index:
            got = index.search(data[:20], k=5, ef=64)
        np.testing.assert_array_equal(got.ids, want.ids)

    queries = tmp_path / "q.parquet"
    pq.write_table(pa.table({"id": np.arange(5), "vector": pa.FixedSizeListArray.from_arrays(pa.array(data[:5].ravel()), 8)}), queries)
    from shardwalk.pipelines.cli import main

    assert main(["query", uri, "--queries", str(queries), "-k", "3", "--out", str(tmp_path / "hits.parquet")]) == 0
    hits = pq.read_table(tmp_path / "hits.parquet").to_pydict()
    assert hits["neighbors"] == want.ids[:5, :3].tolist()


def test_altered_shard_object_is_refused_naming_it(ray_local: None, s3_bucket: str) -> None:
    from shardwalk.workers.sharded_index import ShardedIndex

    uri = f"{s3_bucket}/indexes/flip"
    with ShardedIndex.build(_data(120), shards=2, M=8, ef_construction=50) as index:
        index.save(uri)
    c = store.find_committed(uri)
    obj = store.join(c.uri, "shard-00000.bin")
    data = bytearray(store.read_bytes(obj))
    data[-1] ^= 0xFF
    store.write_bytes(obj, bytes(data))
    with pytest.raises(CorruptArtifactError, match="shard-00000.bin: checksum"):
        ShardedIndex.open(uri).close()
