"""The node cache without Ray: entries in use are pinned, every use is verified, the root is private, no symlink is followed."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardwalk.core.storage import node_cache, sink, store


def _upload(tmp_path: Path, uri: str, name: str, rows: int = 50) -> store.Committed:
    """A committed attempt holding one Parquet part and a small JSON file."""
    local = tmp_path / f"src-{name}"
    local.mkdir()
    pq.write_table(pa.table({"id": list(range(rows))}), local / "part-0.parquet")
    (local / "_labels.json").write_text('{"0": "cat", "1": "dog"}')
    return store.upload_dir(local, uri)[0]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("SHARDWALK_LOCAL_CACHE", str(root))
    return root


def test_entries_in_use_survive_a_tiny_budget_with_a_warning(s3_bucket: str, tmp_path: Path, cache: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("SHARDWALK_LOCAL_CACHE_BYTES", "1")
    one, two = _upload(tmp_path, f"{s3_bucket}/one", "a"), _upload(tmp_path, f"{s3_bucket}/two", "b")
    with node_cache.holding(), caplog.at_level(logging.WARNING, logger="shardwalk"):
        first, _ = node_cache.fetch(one)
        second, _ = node_cache.fetch(two)  # over budget: the first is still in use, so it stays
        assert (first / "_labels.json").is_file() and (second / "part-0.parquet").is_file()
        assert "over its budget" in caplog.text
    # another live process's pin keeps an entry too; a dead process's pin does not
    pins = cache / node_cache.PINS
    live = pins / f"{first.name}@{socket.gethostname()}@{os.getppid()}"
    live.touch()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (pins / f"{second.name}@{socket.gethostname()}@{int(dead.stdout)}").touch()
    assert node_cache.evict() == [second] and first.is_dir() and not second.exists()
    live.unlink()
    assert node_cache.evict() == [first]


def test_an_edited_same_size_file_is_downloaded_again_never_served(s3_bucket: str, tmp_path: Path, cache: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    c = _upload(tmp_path, f"{s3_bucket}/labels", "l")
    with node_cache.holding():
        entry, fetched = node_cache.fetch(c)
    assert fetched > 0
    hashed: list[Path] = []
    real = node_cache.sha256_file
    monkeypatch.setattr(node_cache, "sha256_file", lambda p: hashed.append(Path(p)) or real(p))
    with node_cache.holding():
        assert node_cache.fetch(c) == (entry, 0) and hashed == []  # unchanged since verified: not hashed again
    labels = entry / "_labels.json"
    original, info = labels.read_bytes(), labels.stat()
    labels.write_bytes(original.replace(b"cat", b"cow"))  # same size, mtime put back: only the bytes differ
    os.utime(labels, ns=(info.st_atime_ns, info.st_mtime_ns))
    with node_cache.holding():
        _, fetched = node_cache.fetch(c)
    assert fetched == len(original) and labels.read_bytes() == original
    with labels.open("r+b") as handle:  # partial (truncated) and missing files are fetched again as well
        handle.truncate(5)
    (entry / "part-0.parquet").unlink()
    with node_cache.holding():
        _, fetched = node_cache.fetch(c)
    assert labels.read_bytes() == original and pq.read_table(entry / "part-0.parquet").num_rows == 50


def test_a_symlinked_root_is_refused_and_its_target_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / "Documents").mkdir(parents=True)
    (home / "Documents" / "thesis.txt").write_text("years of work")
    (tmp_path / "link").symlink_to(home)
    monkeypatch.setenv("SHARDWALK_LOCAL_CACHE", str(tmp_path / "link"))
    monkeypatch.setenv("SHARDWALK_LOCAL_CACHE_BYTES", "1")
    with pytest.raises(node_cache.NodeCacheError, match=f"{tmp_path / 'link'}: the node cache root is a symlink"):
        node_cache.evict()
    assert (home / "Documents" / "thesis.txt").read_text() == "years of work"
    assert sorted(p.name for p in home.iterdir()) == ["Documents"]  # not even marked


def test_eviction_never_follows_an_entry_symlink_and_a_symlinked_entry_is_refused(
        s3_bucket: str, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDWALK_LOCAL_CACHE_BYTES", "1")
    victim = tmp_path / "photos"
    victim.mkdir()
    (victim / "a.jpg").write_bytes(b"x" * 1000)
    c = _upload(tmp_path, f"{s3_bucket}/linked", "k")
    node_cache.cache_root()
    (cache / c.digest[:32]).symlink_to(victim, target_is_directory=True)
    (cache / ("f" * 32)).symlink_to(victim, target_is_directory=True)
    assert node_cache.evict() == []
    with pytest.raises(node_cache.NodeCacheError, match=f"{cache / c.digest[:32]}: a node cache entry is a symlink"):
        node_cache.fetch(c)
    assert (victim / "a.jpg").read_bytes() == b"x" * 1000 and len(list(victim.iterdir())) == 1


def test_the_root_is_created_private_and_a_foreign_or_group_writable_root_is_refused(
        tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert node_cache.cache_root() == cache and cache.stat().st_mode & 0o777 == 0o700
    cache.chmod(0o770)
    with pytest.raises(node_cache.NodeCacheError, match=f"{cache}: the node cache root is writable by group"):
        node_cache.cache_root()
    cache.chmod(0o700)
    monkeypatch.setattr(node_cache.os, "getuid", lambda: os.stat(cache).st_uid + 1)  # as seen by another user
    with pytest.raises(node_cache.NodeCacheError, match=f"{cache}: the node cache root belongs to uid"):
        node_cache.cache_root()


def test_a_stage_holds_its_inputs_until_it_ends_and_knows_their_attempts(
        s3_bucket: str, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every input of a running stage stays (the kNN graph's index was evicted by its other input before);
    helpers are pointed at the attempts the stage downloaded, not at a file on disk."""
    from shardwalk.core.dag import stage_store

    monkeypatch.setenv("SHARDWALK_LOCAL_CACHE_BYTES", "1")
    build, ingest = _upload(tmp_path, f"{s3_bucket}/build", "b"), _upload(tmp_path, f"{s3_bucket}/ingest", "i")
    seen: dict[str, object] = {}

    def stage(out: Path, build: Path, ingest: Path) -> dict:
        node_cache.evict()
        seen.update(files=[p.name for p in (build / "part-0.parquet", ingest / "_labels.json") if p.is_file()],
                    readable=(sink.readable(build), sink.readable(ingest / "part-0.parquet")))
        (out / "done.txt").write_text("ok")
        return {}

    stage_store.execute_remote(stage, f"{s3_bucket}/cache/graph-k", {"build": build.uri, "ingest": ingest.uri}, {}, "k")
    assert seen == {"files": ["part-0.parquet", "_labels.json"], "readable": (build.uri, f"{ingest.uri}/part-0.parquet")}
    assert len(node_cache.evict()) == 2  # released when the stage ended
    assert sink.readable(cache / build.digest[:32]) == str(cache / build.digest[:32])  # and no longer mapped
