"""Every sample config under pipelines/examples/ loads against its pipeline (keys, types and ranges)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardwalk.pipelines import PIPELINES
from shardwalk.pipelines.config import load_config, pipeline_module

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "pipelines" / "examples").glob("*.toml"))


def test_every_pipeline_has_an_example() -> None:
    assert {p.stem for p in EXAMPLES} == set(PIPELINES)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_loads_and_builds(path: Path) -> None:
    module = pipeline_module(path.stem)
    config = load_config(module, path, [])
    assert config.keys() == module.DEFAULTS.keys()
    assert module.build(config).stages
