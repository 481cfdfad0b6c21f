"""The store layer against a real S3-compatible server (moto on 127.0.0.1): URIs, commit protocol, local cache."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from shardwalk.core.errors import ConfigError, CorruptArtifactError, DataError
from shardwalk.core.storage import node_cache, store


def _output(tmp_path: Path, name: str = "out", rows: int = 5) -> Path:
    d = tmp_path / name
    d.mkdir()
    pq.write_table(pa.table({"id": list(range(rows))}), d / "part-0.parquet")
    (d / "sub").mkdir()
    (d / "sub" / "meta.json").write_text(json.dumps({"rows": rows}))
    return d


@pytest.mark.parametrize("uri, words", [
    ("ftp://host/x", "unknown storage scheme"),
    ("s3://bucket/a/../b", "'..'"),
    ("s3://", "no bucket"),
])
def test_bad_uris_are_config_errors_naming_the_uri(uri: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as err:
        store.check_runs_dir(uri)
    assert uri in str(err.value)


def test_missing_bucket_and_file_runs_dir_are_refused(s3_bucket: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bucket 'no-such-bucket-x' does not exist"):
        store.check_runs_dir("s3://no-such-bucket-x/runs")
    store.write_bytes(f"{s3_bucket}/afile", b"x")
    with pytest.raises(ConfigError, match="is an object"):
        store.check_runs_dir(f"{s3_bucket}/afile")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        store.check_runs_dir(str(tmp_path / "f"))
    assert store.check_runs_dir(f"{s3_bucket}/runs/") == f"{s3_bucket}/runs"


def test_commit_is_visible_only_after_the_manifest(s3_bucket: str, tmp_path: Path) -> None:
    dest = f"{s3_bucket}/cache/stage-abc"
    # a killed writer: objects uploaded, no manifest
    store.write_bytes(f"{dest}/attempts/dead/part-0.parquet", b"partial")
    assert store.find_committed(dest) is None
    assert store.uncommitted_attempts(dest) == [f"{dest}/attempts/dead"]
    committed, sent = store.upload_dir(_output(tmp_path), dest, {"key": "k"})
    assert sent > 0 and committed.manifest["rows"] == 5
    found = store.find_committed(dest)
    assert found is not None and found.uri == committed.uri
    assert store.uncommitted_attempts(dest) == [f"{dest}/attempts/dead"]


def test_racing_writers_both_commit_and_readers_agree(s3_bucket: str, tmp_path: Path) -> None:
    dest = f"{s3_bucket}/cache/stage-race"
    a, _ = store.upload_dir(_output(tmp_path, "a"), dest)
    b, _ = store.upload_dir(_output(tmp_path, "b"), dest)
    assert {c.uri for c in store.committed_attempts(dest)} == {a.uri, b.uri}
    assert a.manifest["files"] == b.manifest["files"]
    assert store.find_committed(dest).uri == b.uri  # newest committed wins, and both hold the same files


def test_altered_object_is_detected_and_never_trusted_again(s3_bucket: str, tmp_path: Path) -> None:
    dest = f"{s3_bucket}/cache/stage-flip"
    c, _ = store.upload_dir(_output(tmp_path), dest)
    store.write_bytes(f"{c.uri}/sub/meta.json", b'{"rows": 6}')  # same size, other bytes
    with pytest.raises(CorruptArtifactError, match="sub/meta.json: checksum"):
        store.verify_attempt(c)
    assert store.find_committed(dest) is None
    assert store.committed_attempts(dest) == []  # uncommitted on detection: gc removes it


def test_materialize_verifies_reuses_and_refuses_corruption(s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDWALK_LOCAL_CACHE", str(tmp_path / "cache"))
    dest = f"{s3_bucket}/idx"
    c, _ = store.upload_dir(_output(tmp_path), dest)
    local, fetched = node_cache.materialize(dest)
    assert fetched > 0 and pq.read_table(local / "part-0.parquet").num_rows == 5
    assert node_cache.source_of(local) == (local, c.uri)  # what this process downloaded, from where
    again, fetched = node_cache.materialize(dest)
    assert again == local and fetched == 0  # reused, nothing downloaded
    store.write_bytes(f"{c.uri}/part-0.parquet", b"garbage")
    (local / "part-0.parquet").unlink()
    with pytest.raises(CorruptArtifactError, match=f"{c.uri}/part-0.parquet"):
        node_cache.materialize(dest)
    assert not (local / "part-0.parquet").exists()  # nothing unverified lands in the cache
    with pytest.raises(DataError, match="no committed output"):
        node_cache.materialize(f"{s3_bucket}/nothing")


def test_local_cache_is_bounded(s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDWALK_LOCAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SHARDWALK_LOCAL_CACHE_BYTES", "1")
    store.upload_dir(_output(tmp_path, "a", rows=3), f"{s3_bucket}/one")
    store.upload_dir(_output(tmp_path, "b", rows=4), f"{s3_bucket}/two")
    with node_cache.holding():  # in use only inside the block
        first, _ = node_cache.materialize(f"{s3_bucket}/one")
    second, _ = node_cache.materialize(f"{s3_bucket}/two")
    assert second.is_dir() and not first.exists()  # the older entry, no longer in use, was evicted


def test_store_down_is_a_one_line_error_naming_the_uri(tmp_path: Path) -> None:
    from moto.server import ThreadedMotoServer

    from tests.conftest import _free_port

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True, region="us-east-1")
    fs.create_dir("downbucket")
    server.stop()
    uri = f"s3://downbucket/x?endpoint_override={endpoint.replace('http://', '')}&scheme=http"
    with pytest.raises(store.StoreUnavailableError, match="downbucket") as err:
        store.read_bytes(uri)
    assert "\n" not in str(err.value)


def test_a_torn_read_of_a_rewritten_object_is_read_again_and_lasting_garbage_is_corrupt(monkeypatch) -> None:
    """pyarrow sizes an S3 object, then reads that many bytes: a longer new version in between comes back cut."""
    import pytest

    from shardwalk.core.errors import CorruptArtifactError

    reads = iter([b'{"status": "runn', b'{"status": "running", "stages": {}}'])
    monkeypatch.setattr(store, "read_bytes", lambda uri: next(reads))
    assert store.read_json("s3://b/runs/r/run.json") == {"status": "running", "stages": {}}
    monkeypatch.setattr(store, "read_bytes", lambda uri: b"{not json")
    with pytest.raises(CorruptArtifactError, match="not valid JSON"):
        store.read_json("s3://b/runs/r/run.json")


class _FlakyStore:
    """A filesystem whose first `failures` GETs fail mid-body, as the AWS SDK does on an object rewritten under it."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    def open_input_stream(self, path: str) -> pa.BufferReader:
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError("AWS Error INTERNAL_FAILURE during GetObject operation: Failed to flush response stream")
        return pa.BufferReader(b'{"ok": 1}')


def test_a_get_that_fails_mid_body_is_tried_again_and_a_lasting_failure_is_store_unavailable(monkeypatch) -> None:
    monkeypatch.setattr(store.time, "sleep", lambda s: None)
    flaky = _FlakyStore(failures=store.READ_TRIES - 1)
    monkeypatch.setattr(store, "resolve", lambda uri: (flaky, "b/lease"))
    assert store.read_json("s3://b/lease") == {"ok": 1} and flaky.calls == store.READ_TRIES
    down = _FlakyStore(failures=store.READ_TRIES)
    monkeypatch.setattr(store, "resolve", lambda uri: (down, "b/lease"))
    with pytest.raises(store.StoreUnavailableError, match="s3://b/lease.*Failed to flush"):
        store.read_bytes("s3://b/lease")
    assert down.calls == store.READ_TRIES
