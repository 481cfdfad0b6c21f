"""Sources, shard plans and atomic, checksummed outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardwalk.core.data.schema import from_numpy
from shardwalk.core.errors import CorruptArtifactError, DataError
from shardwalk.core.storage.files import MANIFEST, atomic_dir, verify_dir
from shardwalk.core.storage.sources import (
    plan_row_groups,
    plan_shards,
    read_shard,
    read_table,
    source_fingerprint,
)


@pytest.fixture
def parquet_dir(tmp_path: Path) -> Path:
    """Three files of 40, 35 and 25 rows, written in row groups of 10."""
    x = np.arange(100 * 4, dtype=np.float32).reshape(100, 4)
    table = from_numpy(x, ids=np.arange(100) * 3)
    root = tmp_path / "data"
    root.mkdir()
    for i, (a, b) in enumerate([(0, 40), (40, 75), (75, 100)]):
        pq.write_table(table.slice(a, b - a), root / f"f{i}.parquet", row_group_size=10)
    (root / "_metadata_ignored").write_text("not parquet")
    return root


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_shards_partition_rows_exactly(parquet_dir: Path, n: int) -> None:
    specs = plan_shards(parquet_dir, n)
    assert [s.num_rows for s in specs] == [b - a for a, b in zip(np.linspace(0, 100, n + 1).astype(int), np.linspace(0, 100, n + 1).astype(int)[1:])]
    ids = np.concatenate([read_shard(s, ["id"]).column("id").to_numpy() for s in specs])
    np.testing.assert_array_equal(ids, np.arange(100) * 3)


def test_row_group_plan_gives_one_spec_per_row_group_covering_every_row(parquet_dir: Path) -> None:
    specs = plan_row_groups(parquet_dir)
    assert [s.num_rows for s in specs] == [10] * 4 + [10, 10, 10, 5] + [10, 10, 5]  # files of 40, 35, 25 rows
    ids = np.concatenate([read_shard(s, ["id"]).column("id").to_numpy() for s in specs])
    np.testing.assert_array_equal(ids, np.arange(100) * 3)
    assert [s.num_rows for s in plan_row_groups(np.ones((5, 2)), rows=2)] == [1, 2, 2]  # in memory: ranges


def test_file_uri_and_single_file(parquet_dir: Path) -> None:
    assert read_table(f"file://{parquet_dir}").num_rows == 100
    assert read_table(parquet_dir / "f1.parquet").num_rows == 35


def test_numpy_and_table_sources_shard_in_memory() -> None:
    specs = plan_shards(np.ones((5, 2)), 2)
    assert [s.num_rows for s in specs] == [2, 3]
    assert read_shard(specs[1]).column("id").to_pylist() == [2, 3, 4]


def test_unreadable_and_corrupt_sources(tmp_path: Path, parquet_dir: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        plan_shards(tmp_path / "missing", 2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .parquet files"):
        plan_shards(tmp_path / "empty", 2)
    data = (parquet_dir / "f0.parquet").read_bytes()
    (parquet_dir / "f0.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="f0.parquet: not a readable Parquet file"):
        plan_shards(parquet_dir, 2)


def test_fingerprint_changes_when_a_file_changes(parquet_dir: Path) -> None:
    before = source_fingerprint(parquet_dir)
    pq.write_table(pa.table({"id": [1], "vector": [[1.0, 2.0, 3.0, 4.0]]}), parquet_dir / "f3.parquet")
    assert source_fingerprint(parquet_dir) != before


def test_atomic_dir_commits_with_manifest(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with atomic_dir(final, {"stage": "x"}) as tmp:
        pq.write_table(pa.table({"a": [1, 2, 3]}), tmp / "a.parquet")
        (tmp / "note.json").write_text("{}")
        assert not final.exists()
    manifest = verify_dir(final)
    assert manifest["rows"] == 3 and manifest["stage"] == "x"
    assert set(manifest["files"]) == {"a.parquet", "note.json"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_leaves_nothing_on_failure(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "out") as tmp:
        (tmp / "half.parquet").write_text("partial")
        raise RuntimeError("stage died")
    assert list(tmp_path.iterdir()) == []


def test_verify_detects_flipped_byte_and_edited_manifest(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        (tmp / "blob.bin").write_bytes(b"0123456789")
    (final / "blob.bin").write_bytes(b"0123456780")
    with pytest.raises(CorruptArtifactError, match="blob.bin: checksum"):
        verify_dir(final)
    (final / MANIFEST).write_text("{not json")
    with pytest.raises(CorruptArtifactError, match="not valid JSON"):
        verify_dir(final)
    (final / MANIFEST).write_text(json.dumps({"files": {"gone.bin": {"sha256": "0"}}}))
    with pytest.raises(CorruptArtifactError, match="gone.bin: listed in the manifest but missing"):
        verify_dir(final)
