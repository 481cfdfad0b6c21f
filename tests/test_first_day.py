"""A user's first day (issue 15): their own column names, sparse labels, relative paths — all at ingest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.datasets import load_arrays
from core.errors import DataError
from core.schema import Columns, apply_columns, check_label_column, encode_labels
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
    from pipelines.config import load_config, pipeline_module

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

    from pipelines.runtime import connect

    if not ray.is_initialized():
        connect(num_cpus=2)


def _ingest(tmp_path: Path, table: pa.Table, name: str, **kwargs) -> Path:
    from pipelines.common import ingest

    src = tmp_path / f"{name}.parquet"
    pq.write_table(table, src)
    out = tmp_path / f"{name}-out"
    out.mkdir()
    ingest(out, source=str(src), shards=2, require_label=True, **kwargs)
    return out


@pytest.mark.ray
def test_sparse_labels_give_the_same_scores_as_dense_ones(ray_module: None, tmp_path: Path) -> None:
    from pipelines.common import read_label_map
    from workers.scorer import score_dataset

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
    from pipelines.cli import main

    src = tmp_path / "emb.parquet"
    pq.write_table(_user_table(_labels(), id_name="doc_id", vector_name="emb"), src)
    runs = str(tmp_path / "runs")
    base = ["run", "ingest", "--runs-dir", runs, "--set", f"source={src}"]
    assert main([*base, "--set", "vector_column=emb", "--set", "id_column=doc_id"]) == 0
    from pipelines.runs_view import load_run_ref

    run_dir = Path(runs) / "runs" / load_run_ref(runs, "latest")["run_id"]
    assert embedded_pngs(run_dir / "report.html") >= 3  # label counts, per-dimension scale and range
    assert main([*base, "--set", "vector_column=embedding"]) == 2


# ----------------------------------------------------------------------------- graphs and ids


def _florentine_edges() -> pa.Table:
    import networkx as nx

    edges = list(nx.florentine_families_graph().edges())
    return pa.table({"src": [u for u, _ in edges], "dst": [v for _, v in edges]})


def test_string_node_names_are_numbered_once_in_sorted_order() -> None:
    from core.agents import build_graph, map_node_names, name_nodes

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
    from core.agents import name_nodes

    table = pa.table({"src": pa.array([0, 1], pa.int64()), "dst": pa.array([1, 2], pa.int64())})
    assert name_nodes(table)[1] is None


def test_networkx_graph_with_names_relabelled_with_its_names() -> None:
    import networkx as nx

    from core.agents import build_graph, relabel_graph

    with pytest.raises(DataError, match="relabel_graph"):
        build_graph(nx.davis_southern_women_graph())
    graph, names = relabel_graph(nx.davis_southern_women_graph())
    assert build_graph(graph).number_of_nodes() == len(names) == 32


@pytest.mark.ray
def test_srrw_agents_stage_reads_an_edge_list_of_names(ray_module: None, tmp_path: Path) -> None:
    from pipelines.srrw import DEFAULTS, agents

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
    from workers.sharded_index import ShardedIndex

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
    from core.diagnostics import divergence_warning, last_fraction_mean

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
    from pipelines.cli import main
    from pipelines.runs_view import load_run_ref

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
    from pipelines.srrw import class_threshold

    (tmp_path / "_labels.json").write_text(json.dumps({"column": "label", "classes": [7, 107, 207], "counts": [1, 1, 1]}))
    assert class_threshold(tmp_path, 100) == 1  # values 107 and 207 (indices 1, 2) are the positive class
    assert class_threshold(tmp_path, 207) == 2 and class_threshold(tmp_path, -1) is None
    assert class_threshold(tmp_path / "none", 5) == 5  # no label map: indices are the values
