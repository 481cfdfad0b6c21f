"""Readers of a stored index use one committed attempt, resolved once; nothing redirects reads but the caller."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.faultkit import CountingServer
from shardwalk.core.errors import InvariantError
from shardwalk.core.index import hnsw, index_store
from shardwalk.core.index.index_meta import IndexMeta
from shardwalk.core.storage import sink, store
from shardwalk.core.storage.files import MANIFEST
from shardwalk.core.storage.sources import plan_shards
from shardwalk.workers.hnsw_actor import LocalHnswShard

D = 8


def _shard(workdir: Path, ids: np.ndarray, x: np.ndarray, space: str) -> LocalHnswShard:
    """A built single shard (in-process, no Ray) over `x` with `ids`."""
    shard = LocalHnswShard(0, 0, str(workdir), 1.0)
    shard.begin_build(len(ids), asdict(hnsw.HnswParams(dim=D, space=space, M=8, ef_construction=32)))
    shard.add_pieces((ids, x))
    shard.finish_build("test")
    return shard


def _save(workdir: Path, uri: str, ids: np.ndarray, x: np.ndarray, space: str) -> str:
    """Save a one-shard index to `uri` as a new committed attempt (what ShardedIndex.save does); return it."""
    shard = _shard(workdir, ids, x, space)
    meta = IndexMeta(1, 1, "hash", space=space, dim=D, params=shard.params, shard_sizes=(len(ids),), live=len(ids))
    attempt = index_store.new_attempt(uri)
    return index_store.commit_index(attempt, meta.to_json(), [shard.upload_to(attempt)]).uri


def _versions() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    xa, xb = rng.normal(size=(200, D)).astype(np.float32), rng.normal(size=(150, D)).astype(np.float32)
    return np.arange(200, dtype=np.int64), xa, np.arange(1000, 1150, dtype=np.int64), xb


def test_a_save_committing_between_open_and_shard_load_does_not_mix_versions(
        s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDWALK_LOCAL_CACHE", str(tmp_path / "cache"))
    uri, (ids_a, xa, ids_b, xb) = f"{s3_bucket}/idx", _versions()
    first = _save(tmp_path / "a", uri, ids_a, xa, "l2")
    attempt, local = index_store.open_attempt(uri)  # the driver: resolves the attempt once, reads its JSON
    driver_meta = hnsw.read_index_manifest(local)
    newer = _save(tmp_path / "b", uri, ids_b, xb, "ip")  # another save commits meanwhile
    assert attempt == first and store.require_committed(uri).uri == newer
    shard = LocalHnswShard(0, 0, str(tmp_path / "w"), 1.0)
    stats = shard.load_from(attempt)  # the shard actor, handed the driver's attempt
    ids, _ = shard.search(xa[:5], 3, 32)
    assert driver_meta["space"] == shard.params.space == "l2" and stats["live"] == driver_meta["live"] == 200
    np.testing.assert_array_equal(ids[:, 0], ids_a[:5])  # answers from the version the driver opened
    with pytest.raises(InvariantError, match="the attempt its driver opened"):
        index_store.fetch_shard(uri, 0)  # "the newest attempt" is never resolved again in a shard


def test_query_of_a_run_uses_the_attempt_its_build_stage_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    from shardwalk.pipelines import index, runs_view

    stage = {"status": "cached", "output": "s3://b/runs/cache/build-k", "attempt": "s3://b/runs/cache/build-k/attempts/t1"}
    monkeypatch.setattr(runs_view, "load_run_ref", lambda runs_dir, ref: {"run_id": "r", "config": {"ef": 32},
                                                                         "stages": {"build": stage}})
    assert index.resolve_index("latest", "s3://b/runs") == (stage["attempt"], {"ef": 32})


# ----------------------------------------------------------------------------- no `.origin` redirection


def test_a_planted_origin_file_redirects_nothing(s3_bucket: str, tmp_path: Path,
                                                  second_server: CountingServer) -> None:
    endpoint, seen = f"127.0.0.1:{second_server.port}", second_server.requests
    planted = f"s3://planted/runs?endpoint_override={endpoint}&scheme=http"
    runs = tmp_path / "team" / "runs"
    parts = runs / "cache" / "ingest-abc"
    parts.mkdir(parents=True)
    pq.write_table(pa.table({"id": np.arange(3), "vector": [[0.0] * D] * 3}), parts / "part-0.parquet")
    for folder in (tmp_path, tmp_path / "team", runs):  # ancestors of the runs directory
        (folder / ".origin").write_text(planted)
    assert sink.readable(parts) == str(parts) and sink.readable(parts / "part-0.parquet") == str(parts / "part-0.parquet")
    assert plan_shards(sink.readable(parts), 1)[0].num_rows == 3  # the local parts, not the planted ones
    ids_a, xa, _, _ = _versions()
    index_dir = tmp_path / "index"  # a local saved index with a planted `.origin` inside
    index_dir.mkdir()
    _shard(tmp_path / "w0", ids_a, xa, "l2").save_to(str(index_dir))
    (index_dir / MANIFEST).write_text("{}")
    (index_dir / ".origin").write_text(planted)
    assert index_store.store_uri_of(index_dir) is None
    loaded = LocalHnswShard(0, 0, str(tmp_path / "w1"), 1.0)
    assert loaded.load_from(str(index_dir))["live"] == 200
    np.testing.assert_array_equal(loaded.search(xa[:3], 1, 32)[0][:, 0], ids_a[:3])
    assert seen == []  # the second server received no request at all
    store.read_bytes(f"s3://planted/x?endpoint_override={endpoint}&scheme=http")
    assert seen  # (and it does count the requests it gets)


@pytest.mark.ray
def test_sharded_index_open_loads_the_attempt_the_driver_read(ray_local: None, s3_bucket: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from shardwalk.workers import sharded_index
    from shardwalk.workers.sharded_index import ShardedIndex

    uri, (ids_a, xa, ids_b, xb) = f"{s3_bucket}/ray-idx", _versions()
    first = _save(tmp_path / "a", uri, ids_a, xa, "l2")
    other = store.require_committed(_save(tmp_path / "b", f"{s3_bucket}/other", ids_b, xb, "ip"))
    real = sharded_index.IndexMeta.from_json

    def commit_meanwhile(*args: object, **kwargs: object) -> IndexMeta:
        """Between the driver reading index.json and the shards loading: another save of `uri` commits."""
        attempt = index_store.new_attempt(uri)
        for rel in other.manifest["files"]:
            store.copy_object(other, rel, store.join(attempt, rel))
        store.write_json(store.join(attempt, MANIFEST), {**other.manifest, "attempt": attempt, "committed_at": time.time()})
        return real(*args, **kwargs)

    monkeypatch.setattr(sharded_index.IndexMeta, "from_json", commit_meanwhile)
    with ShardedIndex.open(uri, cpus_per_actor=0) as index:
        ids, _ = index.search(xa[:5], k=3, ef=32)
        assert index.meta.space == "l2" and len(index) == 200
    assert store.require_committed(uri).uri != first  # the other version did commit meanwhile
    np.testing.assert_array_equal(ids[:, 0], ids_a[:5])


def test_a_local_index_saved_again_between_open_and_shard_load_is_refused_not_mixed(tmp_path: Path) -> None:
    from shardwalk.core.errors import CorruptArtifactError
    from shardwalk.core.storage.files import build_manifest, write_json_atomic
    from shardwalk.workers.sharded_index import _shard_digests

    ids_a, xa, ids_b, xb = _versions()
    index_dir = tmp_path / "index"
    index_dir.mkdir()

    def save(ids: np.ndarray, x: np.ndarray, workdir: str) -> None:
        _shard(tmp_path / workdir, ids, x, "l2").save_to(str(index_dir))
        write_json_atomic(index_dir / MANIFEST, build_manifest(index_dir, {"kind": "index"}))

    save(ids_a, xa, "a")
    [opened] = _shard_digests(index_dir, 1)  # what the driver read
    save(ids_b, xb, "b")  # saved again before the shard loads
    with pytest.raises(CorruptArtifactError, match="shard 0 changed after the index was opened"):
        LocalHnswShard(0, 0, str(tmp_path / "w1"), 1.0).load_from(str(index_dir), opened)
    [current] = _shard_digests(index_dir, 1)
    shard = LocalHnswShard(0, 0, str(tmp_path / "w2"), 1.0)
    assert shard.load_from(str(index_dir), current)["live"] == len(ids_b)
