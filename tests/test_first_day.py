"""A user's first day (issue 15): their own column names, sparse labels, relative paths — all at ingest."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardwalk.core.data.builtin import load_arrays
from shardwalk.core.data.schema import Columns, apply_columns, check_label_column, encode_labels
from shardwalk.core.errors import DataError
from tests.report_check import embedded_pngs


def _user_table(labels: np.ndarray, *, id_name: str = "id", vector_name: str = "vector", label_name: str = "label") -> pa.Table:
    x, _ = load_arrays("builtin:synthetic?n=300&d=8&classes=3")
    flat = pa.array(x.astype(np.float32).reshape(-1))
    return pa.table({
        id_name: pa.array(np.arange(len(x), dtype=np.int64) * 10 + 5),
        vector_name: pa.FixedSizeListArray.from_arrays(flat, x.shape[1]),
        label_name: pa.array(labels),
    })


def _labels(n: int = 300) -> np.ndarray:
    _, y = load_arrays("builtin:synthetic?n=300&d=8&classes=3")
    return y[:n].astype(np.int64)


# ----------------------------------------------------------------------------- pure


def test_column_mapping_renames_the_users_columns() -> None:
    table = _user_table(_labels(), id_name="doc", vector_name="emb", label_name="cls")
    out = apply_columns(table, Columns(id="doc", vector="emb", label="cls"), "mine.parquet")
    assert out.column_names == ["id", "vector", "label"]


def test_mapped_column_that_does_not_exist_names_file_and_column() -> None:
    table = _user_table(_labels())
    with pytest.raises(DataError, match=r"^mine.parquet: vector_column 'emb' is not a column"):
        apply_columns(table, Columns(vector="emb"), "mine.parquet")


def test_mapped_column_clashing_with_an_existing_one_is_refused() -> None:
    table = _user_table(_labels()).append_column("emb", pa.array(np.zeros(300)))
    with pytest.raises(DataError, match="would replace the existing column 'vector'"):
        apply_columns(table, Columns(vector="emb"), "mine.parquet")


def test_float_labels_refused_naming_the_users_column() -> None:
    table = _user_table(_labels().astype(np.float64), label_name="cls")
    table = apply_columns(table, Columns(label="cls"), "mine.parquet")
    with pytest.raises(DataError, match=r"^mine.parquet: label column 'cls' must hold integer class labels, got double"):
        check_label_column(table, "mine.parquet", user_name="cls")


def test_null_label_refused_with_row() -> None:
    labels = pa.array([1, None, 2] + [0] * 297, pa.int64())
    table = _user_table(_labels()).set_column(2, "label", labels)
    with pytest.raises(DataError, match="has a null at row 1"):
        check_label_column(table, "mine.parquet")


def test_encode_labels_maps_sorted_values_to_indices() -> None:
    table = pa.table({"label": pa.array([207, -3, 107, 207], pa.int64())})
    out = encode_labels(table, np.array([-3, 107, 207]))
    assert out.column("label").to_pylist() == [2, 0, 1, 2]


def test_relative_source_resolves_against_the_config_files_folder(tmp_path: Path, monkeypatch) -> None:
    from shardwalk.pipelines.config import load_config, pipeline_module

    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "job.toml").write_text('source = "data/emb.parquet"\n')
    monkeypatch.chdir(tmp_path)
    config = load_config(pipeline_module("ingest"), folder / "job.toml", [])
    assert config["source"] == str(folder / "data" / "emb.parquet")
    # --set values are relative to where the user types them, builtins and URIs untouched
    config = load_config(pipeline_module("ingest"), folder / "job.toml", ["source=builtin:digits"])
    assert config["source"] == "builtin:digits"


# ----------------------------------------------------------------------------- on Ray


@pytest.fixture(scope="module")
def ray_module(_ray_session: None) -> None:
    import ray

    from shardwalk.pipelines.runtime import connect

    if not ray.is_initialized():
        connect(num_cpus=2)


def _ingest(tmp_path: Path, table: pa.Table, name: str, **kwargs) -> Path:
    from shardwalk.pipelines.common import ingest

    src = tmp_path / f"{name}.parquet"
    pq.write_table(table, src)
    out = tmp_path / f"{name}-out"
    out.mkdir()
    ingest(out, source=str(src), shards=2, require_label=True, **kwargs)
    return out


@pytest.mark.ray
def test_sparse_labels_give_the_same_scores_as_dense_ones(ray_module: None, tmp_path: Path) -> None:
    from shardwalk.pipelines.common import read_label_map
    from shardwalk.workers.scorer import score_dataset

    dense = _labels()
    sparse = np.array([7, 107, 207])[dense]
    dense_dir = _ingest(tmp_path, _user_table(dense), "dense")
    sparse_dir = _ingest(tmp_path, _user_table(sparse, label_name="cls"), "sparse", columns={"label": "cls"})
    assert read_label_map(sparse_dir).tolist() == [7, 107, 207]
    assert json.loads((sparse_dir / "_labels.json").read_text())["column"] == "cls"
    proxy = {"models": 1, "epochs": 2, "batch_size": 64, "hidden": 8}
    a = score_dataset(str(dense_dir), 1, tmp_path / "sa", num_cpus=0.5, **proxy)
    b = score_dataset(str(sparse_dir), 1, tmp_path / "sb", num_cpus=0.5, **proxy)
    assert a["classes"] == b["classes"] == 3
    ta = pq.read_table(tmp_path / "sa").sort_by("id")
    tb = pq.read_table(tmp_path / "sb").sort_by("id")
    for name in ("el2n", "aum", "entropy", "forgetting"):
        np.testing.assert_allclose(ta.column(name).to_numpy(), tb.column(name).to_numpy(), rtol=1e-6)
    assert tb.column("entropy").to_numpy().max() <= np.log(3) + 1e-6


@pytest.mark.ray
def test_negative_labels_are_mapped_at_ingest(ray_module: None, tmp_path: Path) -> None:
    out = _ingest(tmp_path, _user_table(_labels() - 1), "neg")
    labels = pq.read_table(out).column("label").to_numpy()
    assert sorted(set(labels.tolist())) == [0, 1, 2]


@pytest.mark.ray
def test_label_problems_caught_at_ingest_naming_the_users_file(ray_module: None, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"floats.parquet: label column 'label' must hold integer class labels"):
        _ingest(tmp_path, _user_table(_labels().astype(np.float64)), "floats")
    with pytest.raises(DataError, match=r"one.parquet: label column 'label' has a single class \[4\]"):
        _ingest(tmp_path, _user_table(np.full(300, 4)), "one")
    with pytest.raises(DataError, match=r"nolabel.parquet: label_column 'y' is not a column"):
        _ingest(tmp_path, _user_table(_labels()), "nolabel", columns={"label": "y"})


@pytest.mark.ray
def test_emb_column_mapped_through_the_cli(ray_module: None, tmp_path: Path) -> None:
    from shardwalk.pipelines.cli import main

    src = tmp_path / "emb.parquet"
    pq.write_table(_user_table(_labels(), id_name="doc_id", vector_name="emb"), src)
    runs = str(tmp_path / "runs")
    base = ["run", "ingest", "--runs-dir", runs, "--set", f"source={src}"]
    assert main([*base, "--set", "vector_column=emb", "--set", "id_column=doc_id"]) == 0
    from shardwalk.pipelines.runs_view import load_run_ref

    run_dir = Path(runs) / "runs" / load_run_ref(runs, "latest")["run_id"]
    assert embedded_pngs(run_dir / "report.html") >= 3  # label counts, per-dimension scale and range
    assert main([*base, "--set", "vector_column=embedding"]) == 2


# ----------------------------------------------------------------------------- graphs and ids


def _florentine_edges() -> pa.Table:
    import networkx as nx

    edges = list(nx.florentine_families_graph().edges())
    return pa.table({"src": [u for u, _ in edges], "dst": [v for _, v in edges]})


def test_string_node_names_are_numbered_once_in_sorted_order() -> None:
    from shardwalk.core.srrw.agents import build_graph, map_node_names, name_nodes

    edges, names = name_nodes(_florentine_edges(), where="florentine.parquet")
    assert names.to_pylist() == sorted(names.to_pylist()) and "Medici" in names.to_pylist()
    graph = build_graph(edges, where="florentine.parquet")
    medici = names.to_pylist().index("Medici")
    assert graph.degree(medici) == 6
    assign = pa.table({"node": ["Medici", "Strozzi"], "id": [1, 2]})
    assert map_node_names(assign, names).column("node").to_pylist() == [medici, names.to_pylist().index("Strozzi")]
    with pytest.raises(DataError, match=r"^a.parquet: column 'node' names node 'Nobody' at row 1"):
        map_node_names(pa.table({"node": ["Medici", "Nobody"], "id": [1, 2]}), names, where="a.parquet")


def test_integer_edge_lists_are_left_alone() -> None:
    from shardwalk.core.srrw.agents import name_nodes

    table = pa.table({"src": pa.array([0, 1], pa.int64()), "dst": pa.array([1, 2], pa.int64())})
    assert name_nodes(table)[1] is None


def test_networkx_graph_with_names_relabelled_with_its_names() -> None:
    import networkx as nx

    from shardwalk.core.srrw.agents import build_graph, relabel_graph

    with pytest.raises(DataError, match="relabel_graph"):
        build_graph(nx.davis_southern_women_graph())
    graph, names = relabel_graph(nx.davis_southern_women_graph())
    assert build_graph(graph).number_of_nodes() == len(names) == 32


@pytest.mark.ray
def test_srrw_agents_stage_reads_an_edge_list_of_names(ray_module: None, tmp_path: Path) -> None:
    from shardwalk.pipelines.srrw import DEFAULTS, agents

    data = _ingest(tmp_path, _user_table(_labels()), "data")
    edges = tmp_path / "florentine.parquet"
    pq.write_table(_florentine_edges(), edges)
    out = tmp_path / "agents"
    out.mkdir()
    graph = {**DEFAULTS["graph"], "name": "file", "edges": str(edges)}
    metrics = agents(out, data, graph=graph, seed=0)
    assert metrics["agents"] == 15
    nodes = pq.read_table(out / "nodes.parquet")
    assert nodes.column("node").to_pylist() == list(range(15))
    assert "Medici" in nodes.column("name").to_pylist()


@pytest.mark.ray
def test_add_without_ids_assigns_fresh_unique_ids(ray_local: None) -> None:
    from shardwalk.workers.sharded_index import ShardedIndex

    x, _ = load_arrays("builtin:synthetic?n=300&d=8&classes=3")
    x = x.astype(np.float32)
    with ShardedIndex.build(x[:200], shards=2, M=8, ef_construction=40) as index:
        assert index.delete([199]) == 1  # the highest id, deleted: never handed out again
        ids = index.add(x[200:])
        assert ids.tolist() == list(range(200, 300))
        assert len(index) == 299
        found = index.search(x[200:210], k=1, ef=50).ids[:, 0]
        assert (found == ids[:10]).mean() >= 0.9


# ----------------------------------------------------------------------------- SRRW verdicts


def test_last_quarter_mean_and_divergence_warning() -> None:
    from shardwalk.core.srrw.diagnostics import divergence_warning, last_fraction_mean

    steps = np.array([100, 200, 300, 400])
    assert last_fraction_mean(steps, np.array([9.0, 9.0, 2.0, 4.0])) == 3.0  # steps >= 300
    assert divergence_warning(0.17, 0.16) is None
    warning = divergence_warning(9.56, 0.16, hint="; scale")
    assert warning is not None and "9.56" in warning and warning.endswith("; scale")


def _unscaled_source(tmp_path: Path) -> Path:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    table = pa.table({
        "id": pa.array(np.arange(len(x), dtype=np.int64)),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float32).reshape(-1)), x.shape[1]),
        "label": pa.array(y.astype(np.int64)),
    })
    path = tmp_path / "raw_breast_cancer.parquet"
    pq.write_table(table, path)
    return path


@pytest.mark.ray
def test_srrw_on_unscaled_features_warns_and_standardize_fixes_it(ray_module: None, tmp_path: Path, capsys) -> None:
    from shardwalk.pipelines.cli import main
    from shardwalk.pipelines.runs_view import load_run_ref

    runs = str(tmp_path / "runs")
    base = ["run", "srrw", "--runs-dir", runs, "--set", f"source={_unscaled_source(tmp_path)}",
            "--set", "steps=3000", "--set", "partitions=1", "--set", "record_every=200", "--set", "checkpoint_every=0",
            "--set", "standardize=false"]
    assert main(base) == 0
    assert "warning: stage 'evaluate'" in capsys.readouterr().err
    metrics = load_run_ref(runs, "latest")["stages"]["evaluate"]["metrics"]
    assert "standardize = true" in metrics["warning"]
    assert metrics["sq_error_last_quarter"] > 0 and 0 <= metrics["train_accuracy"] <= 1
    record = load_run_ref(runs, "latest")
    report = Path(runs) / "runs" / record["run_id"] / "report.html"
    assert embedded_pngs(report) >= 3  # error, loss and training accuracy, visits vs target
    assert main([*base, "--set", "standardize=true"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert "warning" not in load_run_ref(runs, "latest")["stages"]["evaluate"]["metrics"]


def test_binarize_compares_the_users_label_values(tmp_path: Path) -> None:
    from shardwalk.pipelines.srrw import class_threshold

    (tmp_path / "_labels.json").write_text(json.dumps({"column": "label", "classes": [7, 107, 207], "counts": [1, 1, 1]}))
    assert class_threshold(tmp_path, 100) == 1  # values 107 and 207 (indices 1, 2) are the positive class
    assert class_threshold(tmp_path, 207) == 2 and class_threshold(tmp_path, -1) is None
    assert class_threshold(tmp_path / "none", 5) == 5  # no label map: indices are the values


# ----------------------------------------------------------------------------- issue 27: round two


def _doc_embedding_queries(tmp_path: Path, dim: int = 8, n: int = 40) -> Path:
    """A user's queries with their own column names, `doc_id` and `embedding`."""
    x = np.random.default_rng(3).standard_normal((n, dim)).astype(np.float32)
    path = tmp_path / "queries.parquet"
    pq.write_table(pa.table({"doc_id": np.arange(n, dtype=np.int64) * 7,
                             "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim)}), path)
    return path


def test_query_columns_are_checked_from_the_footer_before_ray_starts(tmp_path: Path, monkeypatch, capsys) -> None:
    import shardwalk.pipelines.cli as cli
    import shardwalk.pipelines.index as index_pipeline

    def no_ray(address: str | None) -> dict:
        raise AssertionError("Ray would start here")

    monkeypatch.setattr(cli, "_connect", no_ray)
    monkeypatch.setattr(index_pipeline, "resolve_index", lambda ref, runs_dir: (str(tmp_path / "idx"), {}))
    monkeypatch.setattr(cli, "_index_dim", lambda index_dir: 8)
    queries = str(_doc_embedding_queries(tmp_path))
    assert cli.main(["query", "idx", "--queries", queries]) == 2  # today's main: starts Ray first, then fails
    err = capsys.readouterr().err
    assert "missing column(s) ['id', 'vector']; found ['doc_id', 'embedding']" in err and "--id-column" in err
    monkeypatch.setattr(cli, "_index_dim", lambda index_dir: 16)
    assert cli.main(["query", "idx", "--queries", queries, "--id-column", "doc_id", "--vector-column", "embedding"]) == 2
    assert "column 'embedding' has dimension 8, expected 16" in capsys.readouterr().err
    monkeypatch.setattr(cli, "_index_dim", lambda index_dir: 8)
    with pytest.raises(AssertionError, match="Ray would start here"):  # every check passed: Ray is next
        cli.main(["query", "idx", "--queries", queries, "--id-column", "doc_id", "--vector-column", "embedding"])


def test_run_checks_the_sources_columns_before_ray_starts(tmp_path: Path, monkeypatch, capsys) -> None:
    """`run index --set id_column=docid` on a doc_id/embedding file: exit 2 from the footer, no run recorded
    (today's main: Ray starts, ingest fails, a failed run is recorded)."""
    import shardwalk.pipelines.cli as cli

    def no_ray(address: str | None) -> dict:
        raise AssertionError("Ray would start here")

    monkeypatch.setattr(cli, "_connect", no_ray)
    source = str(_doc_embedding_queries(tmp_path))
    runs = str(tmp_path / "runs")
    base = ["run", "index", "--runs-dir", runs, "--set", f'source="{source}"', "--set", "vector_column=embedding"]
    assert cli.main([*base, "--set", "id_column=docid"]) == 2
    err = capsys.readouterr().err
    assert f"{source}: id_column 'docid' is not a column; found ['doc_id', 'embedding']" in err
    assert cli.main(["run", "coreset", "--runs-dir", runs, "--set", f'source="{source}"', "--set", "id_column=doc_id",
                     "--set", "vector_column=embedding", "--set", "label_column=diagnosis"]) == 2
    assert "label_column 'diagnosis' is not a column" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "runs").exists()


def test_query_hands_ray_absolute_paths(tmp_path: Path, monkeypatch, capsys) -> None:
    """`query latest --runs-dir runs --queries q.parquet --out answers` on a joined cluster: Ray's workers read
    and write relative paths in their own folder (where `ray start` ran), not in the user's."""
    import shardwalk.pipelines.cli as cli
    import shardwalk.pipelines.index as index_pipeline

    monkeypatch.chdir(tmp_path)
    _doc_embedding_queries(tmp_path)
    monkeypatch.setattr(cli, "_connect", lambda address: {})
    monkeypatch.setattr(cli, "_index_dim", lambda index_dir: 8)
    monkeypatch.setattr(index_pipeline, "resolve_index", lambda ref, runs_dir: ("runs/cache/build-k", {}))
    seen: dict = {}

    def fake_stream(index_dir, queries, out, *, timings, **kwargs):
        seen.update(index=index_dir, queries=queries, out=out)
        timings["open_seconds"] = 0.0
        return {"rows": 40, "parts": 1, "out": out, "queries_per_second": 0.0, "seconds": 0.0, "space": "l2",
                "streamed": True}

    monkeypatch.setattr(index_pipeline, "stream_query", fake_stream)
    monkeypatch.setattr(cli, "_query_progress", contextlib.nullcontext)
    assert cli.main(["query", "latest", "--runs-dir", "runs", "--queries", "queries.parquet", "--id-column", "doc_id",
                     "--vector-column", "embedding", "--out", "answers"]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith(f"wrote 40 answers in 1 Parquet part to {tmp_path / 'answers'}: ")
    assert seen == {"index": str(tmp_path / "runs/cache/build-k"), "queries": str(tmp_path / "queries.parquet"),
                    "out": str(tmp_path / "answers")}


def test_the_python_api_takes_the_same_column_options() -> None:
    import inspect

    from shardwalk.workers.sharded_index import ShardedIndex

    for method in (ShardedIndex.build, ShardedIndex.search_dataset):
        params = inspect.signature(method).parameters
        assert params["id_column"].default == "id" and params["vector_column"].default == "vector"


@pytest.mark.ray
def test_query_with_the_users_columns_says_what_its_speed_includes(ray_local: None, tmp_path: Path, capfd) -> None:
    from shardwalk.pipelines.cli import main
    from shardwalk.workers.sharded_index import ShardedIndex

    (tmp_path / "base").mkdir()
    base = _doc_embedding_queries(tmp_path / "base", n=200)  # the Python API takes the same column options
    with ShardedIndex.build(str(base), shards=1, M=8, ef_construction=40, id_column="doc_id",
                            vector_column="embedding") as index:
        index.save(tmp_path / "idx")
    queries = str(_doc_embedding_queries(tmp_path))  # the first 40 of the same rows
    cols = ["--id-column", "doc_id", "--vector-column", "embedding"]
    # ef = every row: the search is exhaustive, so each query's first answer is itself (at M 8 / efC 40 the default
    # ef missed one in a fresh-clone run: hnswlib's threaded build is not deterministic)
    exact = ["--ef", "200"]
    assert main(["query", str(tmp_path / "idx"), "--queries", queries, *cols, *exact, "--out", str(tmp_path / "ans")]) == 0
    out, err = capfd.readouterr()
    assert "40 queries in" in out and "including Ray start-up" in out
    assert "read, search and write alone (one block, from this process: too few queries to stream)" in out
    assert "Running Dataset" not in err and "Traceback" not in err
    answers = pq.read_table(tmp_path / "ans")
    assert sorted(answers.column("id").to_pylist()) == [i * 7 for i in range(40)]
    assert [n[0] for n in answers.column("neighbors").to_pylist()] == answers.column("id").to_pylist()
    assert main(["query", str(tmp_path / "idx"), "--queries", queries, *cols]) == 0
    assert "search alone" in capfd.readouterr().out


def test_ray_notices_are_quiet_unless_verbose(monkeypatch) -> None:
    import logging

    from shardwalk.workers.quiet import (
        DATA_PROGRESS_LOGGER,
        TOKEN_AUTH_NOTICE,
        VERBOSE,
        quiet_ray_data,
        quiet_ray_driver,
    )

    class Capture(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.seen.append(record.getMessage())

    capture = Capture()
    monkeypatch.setattr(logging.getLogger("ray"), "handlers", [capture])
    child = logging.getLogger("ray.some.internal.module")  # Ray's notice comes from one of its own modules
    monkeypatch.setenv(VERBOSE, "1")
    quiet_ray_driver()
    child.warning(TOKEN_AUTH_NOTICE + ". Set RAY_AUTH_MODE=disabled to opt out.")
    assert len(capture.seen) == 1  # verbose: Ray's notices as Ray prints them
    monkeypatch.delenv(VERBOSE)
    quiet_ray_driver()
    quiet_ray_driver()  # idempotent: one filter
    child.warning(TOKEN_AUTH_NOTICE + ". Set RAY_AUTH_MODE=disabled to opt out.")
    child.warning("a worker died")
    assert capture.seen[1:] == ["a worker died"] and len(capture.filters) == 1
    from ray.data import DataContext

    context = DataContext.get_current()
    monkeypatch.setattr(context, "enable_progress_bars", True)
    monkeypatch.setattr(context, "print_on_execution_start", True)
    monkeypatch.setattr(logging.getLogger("ray.data"), "level", logging.DEBUG)
    quiet_ray_data()
    assert not context.enable_progress_bars and not context.print_on_execution_start
    assert logging.getLogger("ray.data").level == logging.WARNING
    assert logging.getLogger(DATA_PROGRESS_LOGGER).level == logging.ERROR


def test_a_closed_pipe_ends_quietly(monkeypatch) -> None:
    import io
    import sys

    from shardwalk.pipelines.cli import main

    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    err = io.StringIO()
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    monkeypatch.setattr(sys, "stderr", err)
    assert main(["run", "index", "--show-config"]) == 1  # today's main: "shardwalk: BrokenPipeError ..."
    assert err.getvalue() == ""


def _record(tmp_path: Path, **config) -> dict:
    """A failed index run: ingest committed, build failed, knn_graph skipped, evaluate's folder gone since."""
    from shardwalk.pipelines.index import DEFAULTS

    committed = tmp_path / "cache" / "ingest-k1"
    committed.mkdir(parents=True)
    stages = {
        "ingest": {"name": "ingest", "key": "k1", "status": "done", "output": str(committed), "metrics": {"rows": 3}},
        "build": {"name": "build", "key": "k2", "status": "failed", "output": str(tmp_path / "cache" / "build-k2"),
                  "error": "DataError: boom", "metrics": {}},
        "knn_graph": {"name": "knn_graph", "key": "k3", "status": "skipped", "error": "upstream failed",
                      "output": str(tmp_path / "cache" / "knn_graph-k3"), "metrics": {}},
        "evaluate": {"name": "evaluate", "key": "k4", "status": "done", "output": str(tmp_path / "cache" / "evaluate-k4"),
                     "metrics": {"warning": "recall looks low"}},
    }
    json_config = json.loads(json.dumps(DEFAULTS, default=str))  # as run.json keeps it
    return {"run_id": "20261206-070000-index-abc123", "pipeline": "index", "status": "failed", "started": 1.8e9,
            "config": {**json_config, **config}, "stages": stages}


def test_show_lists_settings_and_only_outputs_that_exist(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from shardwalk.pipelines.progress import print_run

    record = _record(tmp_path, ef=32, source="mine.parquet")
    buffer = io.StringIO()
    print_run(record, tmp_path, Console(file=buffer, width=200))
    text = buffer.getvalue()
    assert "build failed: DataError: boom" in text
    assert str(tmp_path / "cache" / "ingest-k1") in text
    for missing in ("build-k2", "knn_graph-k3", "evaluate-k4"):  # failed, skipped, vanished: no such folder
        assert missing not in text
    changed = [line for line in text.splitlines() if line.strip().startswith("│ *")]
    assert any("ef" in line and "32" in line and "64" in line for line in changed)
    assert any("source" in line and "mine.parquet" in line for line in changed)
    assert not any(" M " in line for line in changed)


def test_every_report_starts_with_the_run_header(tmp_path: Path) -> None:
    from shardwalk.pipelines.reports.render import Section, publish, write_report

    stage = tmp_path / "stage"
    stage.mkdir()
    write_report(stage, "shardwalk index report", "intro", [Section("Recall", "text")])
    record = _record(tmp_path, ef=32, source="mine.parquet")
    publish(stage, tmp_path / "run", record)
    page = (tmp_path / "run" / "report.html").read_text()
    header = page[page.index("</h1>"):page.index("<h2>")]
    for expected in (record["run_id"], "index", "mine.parquet", "ef = 32", "shardwalk</th><td>",
                     "warning: stage &#x27;evaluate&#x27;: recall looks low"):
        assert expected in header, expected
    assert "M = " not in header  # a default is not a difference
    md = (tmp_path / "run" / "report.md").read_text().splitlines()
    assert md[0] == "# shardwalk index report" and record["run_id"] in md[2] and any("ef = 32" in line for line in md[:12])
    assert (stage / "report.html").read_text().count("<section class='run'>") == 0  # the cached output is untouched


def test_one_shard_axis_and_coinciding_curves(tmp_path: Path) -> None:
    from shardwalk.pipelines.reports.demo import _accuracy_section
    from shardwalk.pipelines.reports.render import figure
    from shardwalk.pipelines.reports.stage import _shard_axis

    _fig, ax = figure()
    ax.bar([0], [100])
    _shard_axis(ax, 1)
    assert list(ax.get_xticks()) == [0] and ax.get_xlim()[0] < -0.5
    (tmp_path / "accuracy.json").write_text(json.dumps({
        "full": 0.9, "random-keep0.1": 0.5, "random-keep0.5": 0.8, "ccs-aum-keep0.1": 0.5, "ccs-aum-keep0.5": 0.8,
        "topk-el2n-keep0.1": 0.3, "topk-el2n-keep0.5": 0.7}))
    section, _ = _accuracy_section(tmp_path, tmp_path)
    assert "Identical curves" in section.text and "ccs-aum = random" in section.text


def test_log_axes_are_labelled_at_the_plotted_values(tmp_path: Path, monkeypatch) -> None:
    """Recall vs ef and accuracy vs keep: matplotlib's log labels read "3×10¹4×10¹" where two ran together."""
    from shardwalk.pipelines.reports import demo, stage

    labels: list[list[str]] = []

    def keep_labels(fig, out, name):
        fig.canvas.draw()
        labels.append([t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()])
        labels.append([t.get_text() for t in fig.axes[0].get_xticklabels(minor=True) if t.get_text()])
        return name

    monkeypatch.setattr(stage, "save_figure", keep_labels)
    monkeypatch.setattr(demo, "save_figure", keep_labels)
    (tmp_path / "recall.json").write_text(json.dumps({"ef": 64, "k": 10, "sample": 487, "recall_vs_ef": [
        {"ef": e, "recall_at_k": r} for e, r in zip((16, 32, 64, 128, 256), (0.9, 0.96, 0.986, 0.999, 1.0))]}))
    stage._recall_section(tmp_path, tmp_path)
    (tmp_path / "accuracy.json").write_text(json.dumps({"full": 0.97, "random-keep0.1": 0.93, "random-keep0.3": 0.95,
                                                        "random-keep0.5": 0.96, "random-keep0.7": 0.97}))
    demo._accuracy_section(tmp_path, tmp_path)
    assert labels == [["16", "32", "64", "128", "256"], [], ["0.1", "0.3", "0.5", "0.7"], []]


def test_report_of_runs_names_cache_hits_and_each_runs_warnings(tmp_path: Path) -> None:
    """α = 10 after α = 0 reuses ingest: its 0 s was highlighted as a difference in seconds; warnings were absent."""
    from shardwalk.pipelines.cli import main

    runs = tmp_path / "runs"
    _fake_index_run(runs, "20261206-070000-index-aaaaaa", 32, [0.8, 0.9])
    _fake_index_run(runs, "20261206-070100-index-bbbbbb", 64, [0.85, 0.97])
    second = runs / "runs" / "20261206-070100-index-bbbbbb" / "run.json"
    record = json.loads(second.read_text())
    record["stages"]["ingest"] = {"name": "ingest", "key": "k", "status": "cached", "seconds": 0.0, "output": "y", "metrics": {}}
    record["stages"]["evaluate"]["metrics"]["warning"] = "recall looks low"
    second.write_text(json.dumps(record))
    out = tmp_path / "compare.html"
    assert main(["report", "20261206-0700", "20261206-0701", "--runs-dir", str(runs), "--out", str(out)]) == 0
    page = out.read_text()
    assert "<th>ingest.seconds</th><td>—</td><td>cache hit</td>" in page
    assert "<th>warnings</th><td>none</td><td>stage &#x27;evaluate&#x27;: recall looks low</td>" in page


def test_report_of_runs_names_curves_that_hide_each_other(tmp_path: Path) -> None:
    """Two coreset runs that differ only in select.beta: random, top-k and full data are the same in both, and
    run B's lines covered run A's with nothing saying so."""
    from shardwalk.pipelines.cli import main

    runs = tmp_path / "runs"
    for run_id, ccs in (("20261206-070000-coreset-aaaaaa", 0.88), ("20261206-070100-coreset-bbbbbb", 0.9)):
        _fake_index_run(runs, run_id, 64, [0.8, 0.9], pipeline="coreset")
        (runs / "cache" / f"evaluate-{run_id[-6:]}" / "accuracy.json").write_text(json.dumps({
            "full": 0.97, "random-keep0.1": 0.93, "random-keep0.5": 0.96, "ccs-el2n-cb-keep0.1": ccs,
            "ccs-el2n-cb-keep0.5": 0.95}))
    out = tmp_path / "compare.html"
    assert main(["report", "20261206-0700", "20261206-0701", "--runs-dir", str(runs), "--out", str(out)]) == 0
    page = out.read_text()
    assert embedded_pngs(out) == 1
    note = page[page.index("Identical curves"):].split("</p>")[0]
    assert "A: random = B: random" in note and "A: full data = B: full data" in note and "ccs-el2n-cb" not in note


def test_coreset_table_marks_differences_no_test_can_judge(tmp_path: Path) -> None:
    """Breast cancer: ccs-el2n-cb at keep 0.7 scored 0.8843 on all 3 seeds, random 0.9669 on all 3: no spread, no
    test, and the table left it unmarked under "unmarked differences are within the spread"."""
    from shardwalk.core.coresets.checks import summarise
    from shardwalk.pipelines.reports.demo import _accuracy_section

    per_seed = {"ccs-el2n-cb-keep0.7": [0.8843] * 3, "random-keep0.7": [0.9669] * 3, "topk-el2n-keep0.7": [0.9669] * 3,
                "full": [0.9669] * 3}
    (tmp_path / "accuracy_seeds.json").write_text(json.dumps(summarise(per_seed, majority=0.63)))
    (tmp_path / "accuracy.json").write_text(json.dumps({k: v[0] for k, v in per_seed.items()}))
    section, _ = _accuracy_section(tmp_path, tmp_path)
    cells = {row["method"]: row["keep 0.7"] for row in section.table}
    assert cells["ccs-el2n-cb"] == "0.8843 ± 0.0000 †" and cells["topk-el2n"] == "0.9669 ± 0.0000"
    assert "†: every seed" in section.text


def test_srrw_loss_axis_reads_whole_values(tmp_path: Path, monkeypatch) -> None:
    """α = 10 on breast cancer ends within 1e-5 of loss*: the loss axis read 7.5 … 5.0 under "1e-5+2.001e-1"."""
    from shardwalk.pipelines.reports import stage

    offsets: dict[str, list[str]] = {}
    save = stage.save_figure

    def keep_offsets(fig, out, name):
        fig.canvas.draw()
        offsets[name] = [ax.yaxis.get_offset_text().get_text() for ax in fig.axes]
        return save(fig, out, name)

    monkeypatch.setattr(stage, "save_figure", keep_offsets)
    walk, evaluate = tmp_path / "walk", tmp_path / "evaluate"
    walk.mkdir(), evaluate.mkdir()
    steps = np.arange(1, 9) * 500
    pq.write_table(pa.table({"token": np.zeros(8, np.int64), "step": steps, "sq_error": 1e-4 / steps,
                             "loss": 0.200147 + 2.8e-5 / np.arange(1, 9), "accuracy": np.full(8, 0.9754),
                             "test_accuracy": np.full(8, 0.9421)}), evaluate / "curves.parquet")
    (evaluate / "_SUCCESS").write_text(json.dumps({"files": {}, "metrics": {"loss_star": 0.200147}}))
    pq.write_table(pa.table({"token": np.zeros(3, np.int64), "node": np.arange(3), "visit": [0.3, 0.3, 0.4]}),
                   walk / "visits.parquet")
    pq.write_table(pa.table({"token": [0]}), walk / "tokens.parquet")
    (walk / "_SUCCESS").write_text(json.dumps({"files": {}, "metrics": {}}))
    monkeypatch.setattr(stage, "crossing_section", lambda out, tokens, metrics: stage.Section("Tokens"))
    stage.srrw_report(tmp_path, walk, evaluate)
    assert offsets["srrw_loss.png"] == ["", ""]


def test_srrw_export_names_the_walk_and_the_nodes(tmp_path: Path) -> None:
    from shardwalk.pipelines.export import export_run

    dirs = {n: tmp_path / "cache" / f"{n}-{n}key" for n in ("ingest", "agents", "walk", "evaluate")}
    for d in dirs.values():
        d.mkdir(parents=True)
    pq.write_table(pa.table({"node": pa.array([0, 1, 2], pa.int64()), "name": ["Medici", "Pazzi", "Strozzi"]}),
                   dirs["agents"] / "nodes.parquet")
    pq.write_table(pa.table({"token": pa.array([0, 0, 0], pa.int64()), "node": pa.array([0, 1, 2], pa.int64()),
                             "visit": [0.5, 0.25, 0.25]}), dirs["walk"] / "visits.parquet")
    pq.write_table(pa.table({"token": pa.array([0, 0], pa.int64()), "step": pa.array([100, 200], pa.int64()),
                             "loss": [0.7, 0.6], "accuracy": [0.5, 0.6], "sq_error": [1.0, 0.5]}),
                   dirs["evaluate"] / "curves.parquet")
    pq.write_table(pa.table({"dim": [0], "theta": [0.1], "theta_star": [0.2]}), dirs["evaluate"] / "theta.parquet")
    stages = {n: {"name": n, "key": f"{n}key", "status": "done", "output": str(d), "metrics": {}} for n, d in dirs.items()}
    stages["walk"]["metrics"] = {"layout": "replicate"}
    record = {"run_id": "r1", "pipeline": "srrw", "status": "succeeded", "stages": stages,
              "config": {"alpha": 10.0, "base": "mhrw", "tokens": 1, "partitions": 2}}
    written = export_run(record, tmp_path, str(tmp_path / "out"))
    assert "srrw/nodes.parquet" in written
    visits = pq.read_table(tmp_path / "out" / "srrw" / "visits.parquet")
    assert visits.column("name").to_pylist() == ["Medici", "Pazzi", "Strozzi"]  # today's main: node numbers only
    curves = pq.read_table(tmp_path / "out" / "srrw" / "curves.parquet")
    assert set(curves.column("walk").to_pylist()) == {"source: alpha=10, base=mhrw, 1 token(s) on 2 walker actor(s), replicate"}
    assert curves.column("alpha").to_pylist() == [10.0, 10.0] and curves.column("stage").to_pylist() == ["evaluate"] * 2


def test_demo_walks_are_named_by_their_alpha() -> None:
    from shardwalk.pipelines.export import walk_description

    record = {"config": {"srrw": {"partitions": 2}}, "stages": {}}
    described = walk_description(record, "curves_coreset_a10")
    assert described["data"] == "coreset" and described["alpha"] == 10.0 and described["base"] == "mhrw"


def test_outputs_table_says_which_pipelines_write_labels_json() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = next(line for line in readme.splitlines() if line.startswith("labels.json "))
    assert "(all)" not in line and "label column" in line  # an index of unlabelled vectors writes none


def test_plan_prints_one_figure_for_the_index(capsys) -> None:
    import re

    from shardwalk.pipelines.cli import main

    args = ["plan", "index", "--rows", "200000000", "--dim", "96", "--nodes", "1", "--cpus-per-node", "8",
            "--memory-per-node", "64GiB"]
    assert main(args) == 0
    out = " ".join(capsys.readouterr().out.split())
    layout = re.search(r"index_bytes=([0-9.]+ GiB)", out)
    verdict = re.search(r"the index needs ~([0-9.]+ GiB)", out)
    assert layout and verdict and layout[1] == verdict[1]  # today's main: 129.1 GiB vs 105.98 GiB


def test_evaluate_says_why_the_sample_is_not_recall_sample() -> None:
    from shardwalk.pipelines.index import sample_note

    note = sample_note(471, 500, 5000)
    assert note.startswith("471 points sampled for recall_sample=500") and "hash of its id" in note


def _fake_index_run(runs: Path, run_id: str, ef: int, recall: list[float], pipeline: str = "index") -> None:
    evaluate = runs / "cache" / f"evaluate-{run_id[-6:]}"
    evaluate.mkdir(parents=True)
    (evaluate / "recall.json").write_text(json.dumps({"recall_vs_ef": [{"ef": e, "recall_at_k": r}
                                                                       for e, r in zip((16, 64), recall)]}))
    record = {"run_id": run_id, "pipeline": pipeline, "status": "succeeded", "started": 1.8e9 + ef,
              "config": {"source": "mine.parquet", "ef": ef, "M": 16},
              "stages": {"evaluate": {"name": "evaluate", "key": run_id[-6:], "status": "done", "output": "x",
                                      "metrics": {"search_recall_at_k": recall[-1]}}}}
    (runs / "runs" / run_id).mkdir(parents=True)
    (runs / "runs" / run_id / "run.json").write_text(json.dumps(record))


def test_report_puts_runs_side_by_side(tmp_path: Path, capsys) -> None:
    from shardwalk.pipelines.cli import main

    runs = tmp_path / "runs"
    _fake_index_run(runs, "20261206-070000-index-aaaaaa", 32, [0.8, 0.9])
    _fake_index_run(runs, "20261206-070100-index-bbbbbb", 64, [0.85, 0.97])
    out = tmp_path / "compare.html"
    assert main(["report", "20261206-0700", "20261206-0701", "--runs-dir", str(runs), "--out", str(out)]) == 0
    page = out.read_text()
    assert embedded_pngs(out) == 1  # the recall curves, overlaid
    assert "<tr class=differs><th>ef</th><td>32</td><td>64</td></tr>" in page
    assert "<th>M</th>" not in page  # the same in both runs: not a setting that differs
    assert "<tr class=differs><th>evaluate.search_recall_at_k</th><td>0.9</td><td>0.97</td></tr>" in page
    assert "<th>warnings</th><td>none</td><td>none</td>" in page
    assert "Identical curves" not in page  # the two runs' recall curves differ
    _fake_index_run(runs, "20261206-070200-srrw-cccccc", 1, [0.1, 0.2], pipeline="srrw")
    assert main(["report", "20261206-0700", "20261206-0702", "--runs-dir", str(runs), "--out", str(out)]) == 2
    assert "runs of one pipeline" in capsys.readouterr().err
