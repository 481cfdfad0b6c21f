"""Stage keys are canonical: equal inputs give equal keys, any change gives a new key."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from shardwalk.core.dag.cache_key import InputPath, canonical, changed_parts, key_of, key_parts, stage_key
from shardwalk.core.dag.runner import Pipeline
from shardwalk.core.errors import ConfigError, DataError
from shardwalk.core.srrw.agents import edges_table, standard_graph


def test_key_ignores_param_order_and_numpy_scalar_types() -> None:
    a = stage_key("s", "1", {"b": 1, "a": [0.5, 2]}, {"up": "k"})
    b = stage_key("s", "1", {"a": (np.float64(0.5), np.int64(2)), "b": 1}, {"up": "k"})
    assert a == b


@pytest.mark.parametrize(
    "change",
    [
        {"name": "t"},
        {"version": "2"},
        {"params": {"a": 0.5000000001}},
        {"params": {"a": 1}},
        {"upstream": {"up": "other"}},
    ],
)
def test_any_change_changes_the_key(change: dict) -> None:
    base = {"name": "s", "version": "1", "params": {"a": 0.5}, "upstream": {"up": "k"}}
    assert stage_key(**base) != stage_key(**{**base, **change})


def test_bools_and_ints_are_distinct() -> None:
    assert stage_key("s", "1", {"a": True}, {}) != stage_key("s", "1", {"a": 1}, {})


def test_unhashable_params_are_refused() -> None:
    with pytest.raises(ConfigError, match="stage 's'.f"):
        stage_key("s", "1", {"f": object()}, {})
    with pytest.raises(ConfigError, match="finite"):
        canonical(float("nan"))


# ----------------------------------------------------------------------------- code and input files (issue 24 item 3)


def _stage_module(folder: Path, body: str):
    """A fresh import of a one-stage module `mystage` written to `folder` (a user's own pipeline code)."""
    (folder / "mystage.py").write_text(f"def work(out, *, n):\n    {body}\n")
    sys.modules.pop("mystage", None)
    return importlib.import_module("mystage")


def _one_stage(fn, **params) -> Pipeline:
    p = Pipeline("custom")
    p.stage("work", fn, params=params or {"n": 1})
    return p


def test_a_changed_stage_body_under_the_same_name_changes_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    before = _one_stage(_stage_module(tmp_path, "return {'v': n}").work).keys()
    after = _one_stage(_stage_module(tmp_path, "return {'v': n + 1}").work).keys()
    again = _one_stage(_stage_module(tmp_path, "return {'v': n + 1}").work).keys()
    sys.modules.pop("mystage", None)
    assert before["work"] != after["work"]
    assert after == again  # the same code keeps its key


def test_project_stages_are_keyed_on_the_project_sources() -> None:
    from shardwalk.core.dag.fingerprint import code_digest, project_digest
    from shardwalk.pipelines.srrw import agents

    assert code_digest(agents) == project_digest()
    assert code_digest(_one_stage) != project_digest()  # your own code: its module source as well


def _params_with(path: Path) -> dict:
    return {"graph": {"name": "file", "edges": InputPath(str(path))}, "seed": 0}


def test_an_input_file_edited_in_place_changes_the_key(tmp_path: Path) -> None:
    edges = tmp_path / "edges.csv"
    edges.write_text("0,1\n")

    def stage(out: Path, *, graph: dict, seed: int) -> None:
        return None

    def key() -> str:
        p = Pipeline("files")
        p.stage("agents", stage, params=_params_with(edges))
        return p.keys()["agents"]

    first = key()
    assert key() == first  # nothing changed: a hit
    edges.write_text("0,1\n1,2\n")
    assert key() != first
    os.utime(edges, ns=(1, 1))  # a small file is keyed on its content: touching it is not a change
    assert key() == key()


def _write_edges(path: Path, graph) -> None:
    pq.write_table(edges_table(graph), path)


@pytest.mark.parametrize("setting", ["edges", "assignment"])
def test_srrw_graph_files_edited_in_place_change_the_keys_of_the_stages_that_read_them(tmp_path: Path, setting: str) -> None:
    import shardwalk.pipelines.srrw as srrw
    from shardwalk.pipelines.config import load_config

    path = tmp_path / f"{setting}.parquet"
    _write_edges(path, standard_graph("karate"))
    sets = ["graph.name=file", f"graph.edges={path}"] if setting == "edges" else [f"graph.assignment={path}"]
    config = load_config(srrw, None, sets)
    first = srrw.build(config).keys()
    _write_edges(path, standard_graph("ring", n=10))  # same path, other graph
    second = srrw.build(config).keys()
    assert first["ingest"] == second["ingest"]  # the data did not change
    changed = [name for name in first if first[name] != second[name]]
    assert changed == ["agents", "partition", "walk", "evaluate", "report"]


def test_a_relative_graph_file_in_a_config_file_is_next_to_that_file(tmp_path: Path) -> None:
    import shardwalk.pipelines.srrw as srrw
    from shardwalk.pipelines.config import load_config

    (tmp_path / "conf.toml").write_text('[graph]\nname = "file"\nedges = "ring.parquet"\n')
    config = load_config(srrw, tmp_path / "conf.toml", [])
    assert config["graph"]["edges"] == str(tmp_path / "ring.parquet")
    assert isinstance(config["graph"]["edges"], InputPath)


def test_key_parts_name_what_changed() -> None:
    base = key_parts("s", "1", {"a": 1}, {"up": "k"}, "code1", {"graph.edges": "d1"})
    assert changed_parts(base, key_parts("s", "1", {"a": 1}, {"up": "k"}, "code2", {"graph.edges": "d1"})) == ["code"]
    assert changed_parts(base, key_parts("s", "1", {"a": 2}, {"up": "k"}, "code1", {"graph.edges": "d2"})) == [
        "params", "input graph.edges"]
    assert changed_parts(base, key_parts("s", "1", {"a": 1}, {"up": "k2"}, "code1", {"graph.edges": "d1"})) == ["upstream up"]
    assert key_of("s", base) == stage_key("s", "1", {"a": 1}, {"up": "k"}, "code1", {"graph.edges": "d1"})


def test_a_missing_input_file_is_a_data_error_naming_it(tmp_path: Path) -> None:
    from shardwalk.core.dag.fingerprint import input_digest

    with pytest.raises(DataError, match="no such file or directory"):
        input_digest(str(tmp_path / "nope.parquet"))


def test_a_stage_without_source_is_keyed_on_its_bytecode() -> None:
    from shardwalk.core.dag.fingerprint import code_digest

    def compiled(body: str):
        namespace: dict = {}
        exec(f"def work(out, *, n):\n    return {body}\n", namespace)  # no file behind it (a notebook, exec)
        return namespace["work"]

    assert code_digest(compiled("n")) == code_digest(compiled("n"))
    assert code_digest(compiled("n")) != code_digest(compiled("n + 1"))
