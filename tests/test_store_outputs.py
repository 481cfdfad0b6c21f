"""Object-store runs dirs: cache hits that read no object bodies, sealed manifests, exports and query answers."""

from __future__ import annotations

import concurrent.futures as cf
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from shardwalk.core.dag.runner import Pipeline, Runner, StageOptions
from shardwalk.core.storage import node_cache, sink, store
from shardwalk.core.storage.files import MANIFEST
from shardwalk.pipelines.export import MARKER as EXPORT_MARKER
from shardwalk.pipelines.export import export_location

BLOB = 2 << 20  # big enough that reading it back would dwarf every manifest
POOL = cf.ThreadPoolExecutor(2)


def _submit(fn: Any, args: tuple, options: StageOptions) -> cf.Future:
    return POOL.submit(fn, *args)


def blob(out: Path, *, seed: int) -> dict[str, Any]:
    (out / "blob.bin").write_bytes(bytes([seed % 256]) * BLOB)
    return {"bytes": BLOB}


def _pipeline() -> Pipeline:
    p = Pipeline("blobs")
    p.stage("blob", blob, params={"seed": 3})
    return p


@pytest.fixture
def node_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's own scratch and cache (not for tests on the session's Ray: its workers keep their env)."""
    monkeypatch.setenv("SHARDWALK_LOCAL_CACHE", str(tmp_path / "node-cache"))
    monkeypatch.setenv("SHARDWALK_SCRATCH", str(tmp_path / "scratch"))


def test_cache_hit_reads_manifests_not_objects_and_still_catches_an_altered_object(s3_bucket: str, node_dirs: None) -> None:
    runs = f"{s3_bucket}/sw"
    first = Runner(_pipeline(), runs, _submit).run()
    attempt = first.stages["blob"].attempt
    assert store.require_committed(attempt).manifest["files"]["blob.bin"]["etag"]  # the store's ETag, recorded
    before = store.bytes_read()
    second = Runner(_pipeline(), runs, _submit).run()
    assert second.stages["blob"].cache_hit and second.stages["blob"].attempt == attempt
    assert store.bytes_read() - before < 64 << 10  # manifests and the run record, not the 2 MiB object
    store.write_bytes(store.join(attempt, "blob.bin"), b"\x09" * BLOB)  # same size, other bytes
    third = Runner(_pipeline(), runs, _submit).run()
    assert third.stages["blob"].status == "done" and third.stages["blob"].attempt != attempt  # recomputed


def test_a_manifest_without_etags_is_verified_by_reading_the_objects(s3_bucket: str, tmp_path: Path, node_dirs: None) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.bin").write_bytes(b"a" * 1000)
    c, _ = store.upload_dir(out, f"{s3_bucket}/plain")
    manifest = {k: v for k, v in c.manifest.items() if k != "seal"}
    manifest["files"] = {rel: {k: v for k, v in e.items() if k != "etag"} for rel, e in manifest["files"].items()}
    store.write_json(store.join(c.uri, MANIFEST), store.seal(manifest))  # a store that gives no ETag
    before = store.bytes_read()
    assert store.find_committed(f"{s3_bucket}/plain").uri == c.uri
    assert store.bytes_read() - before >= 1000  # streamed and hashed
    store.write_bytes(store.join(c.uri, "a.bin"), b"b" * 1000)
    assert store.find_committed(f"{s3_bucket}/plain") is None


def test_a_damaged_manifest_is_not_committed(s3_bucket: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.bin").write_bytes(b"a")
    c, _ = store.upload_dir(out, f"{s3_bucket}/sealed")
    damaged = {**c.manifest, "rows": 41}  # the seal no longer matches
    store.write_json(store.join(c.uri, MANIFEST), damaged)
    assert store.committed_attempts(f"{s3_bucket}/sealed") == []


def test_a_path_on_another_nodes_disk_is_refused_and_copies_map_to_their_store_object(
        s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa

    from shardwalk.core.storage.sources import plan_shards

    other = tmp_path / "node1" / "cache"
    monkeypatch.setenv("SHARDWALK_LOCAL_CACHE", str(other))
    out = tmp_path / "out" / "sub"
    out.mkdir(parents=True)
    pq.write_table(pa.table({"id": [1, 2]}), out / "p.parquet")
    store.upload_dir(tmp_path / "out", f"{s3_bucket}/stage")
    copy, _ = node_cache.materialize(f"{s3_bucket}/stage")  # node1's verified copy, under its marked cache
    attempt = store.require_committed(f"{s3_bucket}/stage").uri
    assert sink.readable(copy / "sub") == f"{attempt}/sub" and sink.readable(copy) == attempt
    monkeypatch.setenv("SHARDWALK_LOCAL_CACHE", str(tmp_path / "node0" / "cache"))  # now we are node0
    with pytest.raises(sink.NodeLocalPathError, match="another node"):
        plan_shards(copy / "sub", 1)
    assert plan_shards(sink.readable(copy / "sub"), 1)[0].num_rows == 2  # the store object instead


INDEX = ["--set", "source=builtin:digits", "--set", "shards=2", "--set", "k=5", "--set", "recall_sample=100",
         "--set", "ef_construction=100", "--set", "knn_graph=false"]


@pytest.mark.ray
def test_export_and_query_answers_with_a_store_runs_dir(ray_local: None, s3_bucket: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from shardwalk.core.data.builtin import load_builtin
    from shardwalk.pipelines.cli import main

    runs = f"{s3_bucket}/sw"
    assert main(["run", "index", "--runs-dir", runs, *INDEX, "--export", str(tmp_path / "exported")]) == 0
    exported = tmp_path / "exported"
    assert (exported / "index" / "index.json").is_file() and (exported / "index" / MANIFEST).is_file()
    assert (exported / "report.html").is_file() and not any(p.name.startswith(".") for p in (exported / "index").iterdir())
    assert main(["export", "latest", f"{s3_bucket}/results", "--runs-dir", runs]) == 0
    where = export_location(f"{s3_bucket}/results")  # the version the pointer (written last) names
    assert store.read_json(f"{where}/{EXPORT_MARKER}")["run_id"] == store.read_json(f"{where}/run.json")["run_id"]

    queries = tmp_path / "q.parquet"
    pq.write_table(load_builtin("builtin:digits").slice(0, 40), queries)
    answers = f"{s3_bucket}/answers"
    assert main(["query", "latest", "--runs-dir", runs, "--queries", str(queries), "-k", "2", "--out", answers]) == 0
    committed = store.require_committed(answers)
    assert committed.manifest["kind"] == "query-answers" and committed.manifest["rows"] == 40
    hits = pq.read_table(node_cache.materialize(answers)[0]).to_pydict()  # verified against the manifest
    assert sorted(hits["id"]) == list(range(40)) and all(n[0] == i for i, n in zip(hits["id"], hits["neighbors"]))
    capsys.readouterr()
    again = ["query", f"{s3_bucket}/results/index", "--queries", str(queries), "-k", "2", "--out", answers]
    assert main(again) == 2 and "pass --overwrite" in capsys.readouterr().err  # an occupied --out is refused
    # the export's index, found through its pointer; blocks of 16 stream through Ray Data (40 rows went as one block)
    assert main([*again, "--overwrite", "--block-size", "16"]) == 0
    assert "streaming alone" in capsys.readouterr().out  # parts written, and hashed, by Ray's tasks
    fs, path = store.resolve(answers)
    assert pq.read_table(path, filesystem=fs).num_rows == 40  # exactly one result where the user reads

    capsys.readouterr()
    bad = "s3://no-such-bucket-s212/answers"
    assert main(["query", "latest", "--runs-dir", runs, "--queries", str(queries), "--out", bad]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and bad in err
