"""`query --out`: the location a user reads holds exactly one complete result (local dir and S3), no Ray."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from shardwalk.core.errors import ConfigError
from shardwalk.core.storage import store
from shardwalk.core.storage.files import MANIFEST
from shardwalk.workers import query_stream
from shardwalk.workers.query_stream import KIND, QuerySettings, check_out


def _answers(local: Path, ids: range) -> Path:
    """A query's answer parts in `local`, as Ray Data's write tasks leave them (unique part names per write)."""
    local.mkdir(parents=True)
    table = pa.table({"id": pa.array(list(ids), pa.int64()), "neighbors": [[i] for i in ids],
                      "distances": pa.array([[0.0]] * len(ids), pa.list_(pa.float32()))})
    pq.write_table(table, local / f"{uuid.uuid4().hex[:8]}_000000.parquet")
    return local


def _store_query(out: str, local: Path, ids: range, overwrite: bool) -> None:
    """What `_search_to_store` does once Ray Data has written the parts: check, commit an attempt, publish."""
    earlier = query_stream._store_out(out, overwrite)
    attempt = store.join(query_stream._staging(out), store.ATTEMPTS, store.new_attempt_id())
    committed, _ = store.upload_dir(_answers(local, ids), attempt.rsplit("/attempts/", 1)[0], {"kind": KIND}, attempt=attempt)
    query_stream._publish_answers(committed, out, earlier)


def _read(out: str) -> pa.Table:
    fs, path = store.resolve(out)
    return pads.dataset(path, filesystem=fs, format="parquet").to_table()


def test_two_store_queries_to_one_out_read_back_as_one_result(s3_bucket: str, tmp_path: Path) -> None:
    out = f"{s3_bucket}/ans/q"
    _store_query(out, tmp_path / "first", range(1000), overwrite=False)
    assert _read(out).num_rows == 1000
    with pytest.raises(ConfigError, match=f"{out}: holds an earlier query's answers; pass --overwrite"):
        check_out(out, overwrite=False)
    _store_query(out, tmp_path / "second", range(1000, 2000), overwrite=True)
    table = _read(out)  # today's main: 2,000 rows (two attempts under the user's prefix)
    assert table.num_rows == 1000 and sorted(table.column("id").to_pylist()) == list(range(1000, 2000))
    assert pq.read_table(store.resolve(out)[1], filesystem=store.resolve(out)[0]).num_rows == 1000
    committed = store.require_committed(out)  # the published manifest, verified
    assert committed.manifest["kind"] == KIND and committed.manifest["rows"] == 1000
    store.verify_attempt(committed)
    assert not store.list_dir(f"{s3_bucket}/ans/.q{query_stream.STAGING}")  # the attempt is dropped once published
    assert [i.base_name for i in store.list_dir(f"{s3_bucket}/ans")] == ["q"]


def test_an_interrupted_store_publish_is_recognised_and_replaced(s3_bucket: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out = f"{s3_bucket}/q"
    _store_query(out, tmp_path / "first", range(10), overwrite=False)
    copy = store.copy_object

    def interrupted(*args, **kwargs):
        copy(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "copy_object", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _store_query(out, tmp_path / "second", range(20, 40), overwrite=True)
    assert store.read_bytes(store.join(out, MANIFEST)) is None  # no manifest: `out` claims no complete result
    monkeypatch.setattr(store, "copy_object", copy)
    _store_query(out, tmp_path / "third", range(50, 55), overwrite=True)  # its parts are ours: replaced
    assert sorted(_read(out).column("id").to_pylist()) == list(range(50, 55))


def test_a_store_out_that_is_not_answers_or_a_bucket_root_is_refused(s3_bucket: str) -> None:
    store.write_bytes(f"{s3_bucket}/mine/notes.txt", b"mine")
    for out, why in ((f"{s3_bucket}/mine", "holds notes.txt, which is not an earlier query's answers"),
                     (s3_bucket, "a bucket root is never a query's --out")):
        for overwrite in (False, True):
            with pytest.raises(ConfigError, match=why):
                check_out(out, overwrite)
    assert store.read_bytes(f"{s3_bucket}/mine/notes.txt") == b"mine"
    check_out(f"{s3_bucket}/new", overwrite=False)


def test_a_local_out_is_refused_unless_it_holds_only_earlier_answers_and_overwrite_is_set(tmp_path: Path) -> None:
    out = tmp_path / "hits"
    tmp = _answers(tmp_path / ".tmp-hits", range(5))
    query_stream._commit(tmp, out, QuerySettings(), overwrite=False)
    assert json.loads((out / MANIFEST).read_text())["kind"] == KIND
    with pytest.raises(ConfigError, match="holds an earlier query's answers; pass --overwrite"):
        check_out(out, overwrite=False)  # today's main silently replaced them
    query_stream._commit(_answers(tmp_path / ".tmp-again", range(7)), out, QuerySettings(), overwrite=True)
    assert pq.read_table(out).num_rows == 7 and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an earlier query's answers"):
        check_out(out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
