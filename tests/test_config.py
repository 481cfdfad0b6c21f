"""Config: defaults ← TOML ← --set, each error a ConfigError with one line."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from shardwalk.core.errors import ConfigError
from shardwalk.pipelines.config import load_config, parse_assignment, parse_value, pipeline_module


def _module(**defaults):
    return SimpleNamespace(DEFAULTS={"shards": 2, "rate": 0.5, "name": "x", "flag": False, "keep": [0.1], "hnsw": {"M": 16}, **defaults},
                           validate=lambda config: None)


def test_values_parse_as_toml_literals() -> None:
    assert parse_value("4") == 4 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value("[0.1, 0.3]") == [0.1, 0.3]
    assert parse_value("builtin:digits") == "builtin:digits"
    assert parse_assignment("hnsw.M=32") == (["hnsw", "M"], 32)


def test_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('shards = 4\nname = "y"\n[hnsw]\nM = 8\n')
    config = load_config(_module(), path, ["rate=1", "hnsw.M=12", "keep=[0.2, 0.4]"])
    assert config == {"shards": 4, "rate": 1.0, "name": "y", "flag": False, "keep": [0.2, 0.4], "hnsw": {"M": 12}}


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["nope=1"], "unknown config key 'nope'"),
        (["hnsw.nope=1"], "unknown config key 'hnsw.nope'"),
        (["shards=two"], "'shards' expects int"),
        (["flag=1"], "'flag' expects bool"),
        (["shards"], "expects key=value"),
        (["=3"], "expects key=value"),
        (["a..b=1"], "empty part"),
        (["hnsw=3"], "is a table"),
    ],
)
def test_bad_overrides(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(_module(), None, overrides)


def test_malformed_and_missing_toml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("shards = = 3\n")
    with pytest.raises(ConfigError, match="bad.toml: malformed TOML"):
        load_config(_module(), bad, [])
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(_module(), tmp_path / "missing.toml", [])


def test_unknown_pipeline() -> None:
    with pytest.raises(ConfigError, match="unknown pipeline 'nope'"):
        pipeline_module("nope")
    with pytest.raises(ConfigError, match="unknown pipeline .json.decoder."):
        pipeline_module("json.decoder")
