"""Coreset inputs (issue 15): the user's own test split, test_fraction = 0, held-out ids, dropped classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardwalk.core.data.builtin import load_arrays
from shardwalk.core.errors import ConfigError
from shardwalk.pipelines import coreset as coreset_pipeline
from tests.report_check import embedded_pngs

SMALL = ["--set", "select.keep=[0.5]", "--set", 'select.methods=["ccs-el2n-cb", "random"]',
         "--set", "proxy.models=1", "--set", "proxy.epochs=2", "--set", "proxy.hidden=8",
         "--set", "evaluate.steps=30", "--set", "evaluate.hidden=8", "--set", "actors=1",
         "--set", "select.beta=0.1"]  # the user's columns and test split are the point here: β is tuned elsewhere


def _split(tmp_path: Path, *, overlap: bool = False) -> tuple[Path, Path]:
    x, y = load_arrays("builtin:synthetic?n=360&d=8&classes=3")
    labels = np.array([7, 107, 207])[y]  # sparse label values, as users have them
    ids = np.arange(len(x), dtype=np.int64) + 1000
    paths = []
    for name, rows in (("train", slice(0, 300)), ("test", slice(300 - 5 * overlap, 360))):
        table = pa.table({"id": ids[rows], "emb": pa.FixedSizeListArray.from_arrays(
            pa.array(x[rows].astype(np.float32).reshape(-1)), 8), "cls": labels[rows]})
        pq.write_table(table, tmp_path / f"{name}.parquet")
        paths.append(tmp_path / f"{name}.parquet")
    return paths[0], paths[1]


def test_config_rules_for_test_splits() -> None:
    base = {**coreset_pipeline.DEFAULTS, "evaluate": dict(coreset_pipeline.DEFAULTS["evaluate"])}
    with pytest.raises(ConfigError, match="test_fraction = 0 leaves nothing to test on"):
        coreset_pipeline.validate({**base, "test_fraction": 0.0})
    coreset_pipeline.validate({**base, "test_fraction": 0.0, "evaluate": {**base["evaluate"], "enabled": False}})
    coreset_pipeline.validate({**base, "test_fraction": 0.0, "test_source": "t.parquet"})
    with pytest.raises(ConfigError, match="set test_fraction = 0"):
        coreset_pipeline.validate({**base, "test_source": "t.parquet"})
    # every default CCS method is class-balanced, or chooses its balance on validation rows (`-auto`, issue 26)
    assert all(m.endswith(("-cb", "-auto")) for m in base["select"]["methods"] if m.startswith("ccs"))


def test_dropped_class_is_reported_in_the_users_values(tmp_path: Path) -> None:
    sel = tmp_path / "ccs-aum-keep0.1"
    sel.mkdir()
    pq.write_table(pa.table({"id": pa.array([1, 2], pa.int64()), "weight": [1.0, 1.0]}), sel / "part-00000.parquet")
    labelled = pa.table({"id": pa.array([1, 2, 3, 4], pa.int64()), "label": pa.array([0, 0, 1, 2], pa.int64())})
    dropped = coreset_pipeline.dropped_classes(tmp_path, labelled, np.array([7, 107, 207]))
    assert dropped == {"ccs-aum-keep0.1": [107, 207]}


@pytest.mark.ray
def test_own_test_split_with_test_fraction_zero(ray_local: None, tmp_path: Path, capsys) -> None:
    from shardwalk.pipelines.cli import main
    from shardwalk.pipelines.runs_view import load_run_ref

    train, test = _split(tmp_path)
    runs = str(tmp_path / "runs")
    columns = ["--set", "vector_column=emb", "--set", "label_column=cls"]
    args = ["run", "coreset", "--runs-dir", runs, "--set", f"source={train}", "--set", f"test_source={test}",
            "--set", "test_fraction=0", *columns, *SMALL, "--export", str(tmp_path / "out")]
    assert main(args) == 0
    record = load_run_ref(runs, "latest")
    assert record["stages"]["select"]["metrics"]["training_rows"] == 300
    assert record["stages"]["select"]["metrics"]["ccs-el2n-cb-keep0.5"] == 150
    held = pq.read_table(tmp_path / "out" / "coresets" / "test_ids.parquet")
    assert held.column("id").to_pylist() == list(range(1300, 1360))
    assert set(held.column("label").to_pylist()) <= {7, 107, 207}
    coreset = pq.read_table(tmp_path / "out" / "coresets" / "ccs-el2n-cb-keep0.5.parquet")
    assert coreset.num_rows == 150 and coreset.column_names == ["id", "weight", "label"]
    assert set(coreset.column("label").to_pylist()) == {7, 107, 207}  # the user's values, class-balanced
    accuracy = json.loads((tmp_path / "out" / "coresets" / "accuracy.json").read_text())
    assert set(accuracy) == {"full", "ccs-el2n-cb-keep0.5", "random-keep0.5"}
    assert embedded_pngs(tmp_path / "out" / "report.html") >= 3  # accuracy, class balance, score histograms

    # overlapping ids between source and test_source: exit 2, one line naming the test file
    (tmp_path / "overlap").mkdir()
    train, test = _split(tmp_path / "overlap", overlap=True)
    capsys.readouterr()
    args = ["run", "coreset", "--runs-dir", runs, "--set", f"source={train}", "--set", f"test_source={test}",
            "--set", "test_fraction=0", *columns, *SMALL]
    assert main(args) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("shardwalk: stage 'test_split' failed: DataError: ")
    assert f"{test}: column 'id' has value 1295, which is also in source {train}" in last
