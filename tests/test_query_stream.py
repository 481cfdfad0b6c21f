"""Streaming batch queries (workers/query_stream.py): pure block handling, then one streamed run per source kind."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardwalk.core.data.schema import from_numpy
from shardwalk.core.errors import ConfigError, DataError
from shardwalk.core.index.hnsw_results import knn_graph_table
from shardwalk.workers.query_stream import QuerySettings, _output_dir, query_vectors

N, D = 1200, 8


def test_block_vectors_are_checked_and_converted() -> None:
    ids, vecs = query_vectors({"id": np.arange(3), "vector": np.ones((3, D), np.float64)}, D, "q.parquet")
    assert vecs.dtype == np.float32 and vecs.shape == (3, D) and ids.dtype == np.int64
    ragged = np.empty(2, object)
    ragged[:] = [np.ones(D), np.ones(D)]
    assert query_vectors({"id": np.arange(2), "vector": ragged}, D, "q")[1].shape == (2, D)
    with pytest.raises(DataError, match="q.parquet: column 'vector' has dimension 4, expected 8"):
        query_vectors({"id": np.arange(3), "vector": np.ones((3, 4))}, D, "q.parquet")
    bad = np.ones((3, D))
    bad[1, 2] = np.nan
    with pytest.raises(DataError, match="NaN or inf in the vector of id 1"):
        query_vectors({"id": np.arange(3), "vector": bad}, D, "q")


def test_answers_follow_the_knn_graph_contract() -> None:
    from shardwalk.core.data.schema import KNN_GRAPH_SCHEMA

    table = knn_graph_table(np.array([5, 6]), np.array([[1, 2], [3, -1]]), np.array([[0.1, 0.2], [0.3, np.inf]], np.float32))
    assert table.schema == KNN_GRAPH_SCHEMA and table.column("neighbors").to_pylist() == [[1, 2], [3, -1]]


@pytest.mark.parametrize(("field", "value"), [("block_size", 0), ("block_size", -1), ("pool", 0), ("block_size", True)])
def test_bad_settings_are_refused(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"{field} must be an integer >= 1"):
        QuerySettings(**{field: value}).validate()


def test_an_output_path_that_is_not_answers_is_refused(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an earlier query's answers"):
        _output_dir(tmp_path)
    with pytest.raises(ConfigError, match="not a directory"):
        _output_dir(tmp_path / "keep.txt")
    assert _output_dir(tmp_path / "new") == (tmp_path / "new").absolute()


# ----------------------------------------------------------------------------- streamed through Ray


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, np.ndarray]]:
    import ray

    from shardwalk.pipelines.runtime import connect
    from shardwalk.workers.sharded_index import ShardedIndex

    if not ray.is_initialized():
        connect(num_cpus=2)
    x = np.random.default_rng(5).normal(size=(N, D)).astype(np.float32)
    root = tmp_path_factory.mktemp("stream")
    import ray.data

    source = ray.data.from_items([{"id": i, "vector": v} for i, v in enumerate(x)])  # `build` takes a Dataset too
    with ShardedIndex.build(source, shards=2, M=8, ef_construction=64, cpus_per_actor=0) as index:
        assert len(index) == N
        index.save(root / "index")
    with pytest.raises(DataError, match=r"ray.data.Dataset: missing column\(s\) \['vector'\]"):
        ShardedIndex.build(ray.data.from_items([{"id": 1, "v": [0.0]}]))
    queries = root / "queries"
    queries.mkdir()
    for i in range(3):  # a directory of parts, ids 10_000.. (not the base ids)
        rows = slice(i * 400, (i + 1) * 400)
        pq.write_table(from_numpy(x[rows], ids=np.arange(10_000 + i * 400, 10_000 + (i + 1) * 400)), queries / f"p{i}.parquet")
    yield root, x


def test_a_parquet_directory_streams_into_parts_with_every_answer_once(saved: tuple[Path, np.ndarray],
                                                                      capfd: pytest.CaptureFixture[str]) -> None:
    from shardwalk.pipelines.index import query_index, stream_query
    from shardwalk.workers.progress_channel import listening

    root, _ = saved
    answered: list[tuple[str, Any]] = []
    arrived = threading.Event()
    with listening("127.0.0.1", lambda stage, sender, update: (answered.append((stage, update)), arrived.set())) as channel:
        done = stream_query(root / "index", root / "queries", root / "out", k=3, block_size=100, progress_to=channel)
        assert arrived.wait(30)
    assert done["rows"] == N and done["parts"] >= 1
    assert {stage for stage, _ in answered} == {"query"}  # the search tasks counted their queries answered
    assert all(u.phase == "answer" and u.total == N and 0 < u.done <= N for _, u in answered)
    # Ray's core logged an ERROR line on every query (an actor pool restarting actors with constructor arguments
    # in the object store); the search runs as tasks now
    err = capfd.readouterr().err
    assert "core_worker.cc" not in err
    assert "Running Dataset" not in err and "Execution plan" not in err  # Ray Data's logs: only with --verbose
    assert "Progress bars disabled" not in err
    got = pq.read_table(root / "out").sort_by("id")
    assert got.column("id").to_pylist() == list(range(10_000, 10_000 + N))
    first = np.array(got.column("neighbors").to_pylist())[:, 0]
    assert (first == np.arange(N)).mean() > 0.95  # each query is a base vector: it finds itself
    small = query_index(root / "index", root / "queries" / "p0.parquet", k=3)  # the in-memory path agrees
    assert small.column("neighbors").to_pylist() == got.slice(0, 400).column("neighbors").to_pylist()


def test_a_ray_dataset_streams_and_bad_ones_are_refused(saved: tuple[Path, np.ndarray]) -> None:
    import ray.data

    from shardwalk.workers.query_stream import open_for_stream

    root, x = saved
    with open_for_stream(root / "index", 2) as index:
        ds = ray.data.from_items([{"id": i, "vector": x[i]} for i in range(50)])
        (root / "answers").mkdir()
        done = index.search_dataset(ds, root / "answers", k=4, block_size=16)
        assert done["rows"] == 50
        with pytest.raises(ConfigError, match="holds an earlier query's answers; pass --overwrite"):
            index.search_dataset(ds.limit(20), root / "answers", k=2, block_size=16)
        again = index.search_dataset(ds.limit(20), root / "answers", k=2, block_size=16, overwrite=True)  # replaced
        table = pq.read_table(root / "answers").sort_by("id")
        assert again["rows"] == 20 and table.column("id").to_pylist() == list(range(20))
        assert len(table.column("neighbors")[0]) == 2
        with pytest.raises(DataError, match="missing column"):
            index.search_dataset(ray.data.from_items([{"id": 1, "v": x[0]}]), root / "no1", k=4)
        with pytest.raises(DataError, match="dimension 3, expected 8"):
            index.search_dataset(ray.data.from_items([{"id": 1, "vector": np.ones(3)}]), root / "no2", k=4)
        with pytest.raises(ConfigError, match="block_size must be"):
            index.search_dataset(ds, root / "no3", k=4, block_size=0)
    assert not [p for p in root.iterdir() if p.name.startswith(("no", ".tmp"))], "a refused query left files"


def test_cli_query_streams_and_refuses_bad_input_with_exit_2(saved: tuple[Path, np.ndarray], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from shardwalk.pipelines.cli import main

    root, x = saved
    bad = tmp_path / "bad.parquet"
    pq.write_table(from_numpy(x[:5, :3]), bad)
    assert main(["query", str(root / "index"), "--queries", str(bad), "--out", str(tmp_path / "no")]) == 2
    assert "bad.parquet: column 'vector' has dimension 3, expected 8" in capsys.readouterr().err
    assert main(["query", str(root / "index"), "--queries", str(root / "queries"), "--out", str(tmp_path / "no"),
                 "--block-size", "0"]) == 2
    assert "block_size must be an integer >= 1" in capsys.readouterr().err
    nan = tmp_path / "nan.parquet"  # one block: answered from the CLI's process, refused the same way
    vectors = x[:5].copy()
    vectors[3, 2] = np.nan
    pq.write_table(pa.table({"id": np.arange(5), "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 8)}), nan)
    assert main(["query", str(root / "index"), "--queries", str(nan), "--out", str(tmp_path / "no")]) == 2
    assert "nan.parquet: NaN or inf in the vector of id 3" in capsys.readouterr().err
    assert not (tmp_path / "no").exists() and not list(tmp_path.glob(".tmp-*"))
