"""The demo's partitioned walk (issue 28 item 4): tokens that cross walker actors, drawn by the report. Pure."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardwalk.core.errors import ConfigError
from shardwalk.pipelines import demo
from shardwalk.pipelines.config import load_config


def test_demo_walks_one_partitioned_walk_and_the_report_reads_it() -> None:
    config = load_config(demo, None, [])
    p = demo.build(config)
    walk = p.stages["walk_crossing"]
    settings = walk.params["settings"]
    # many tokens on partitioned agents, no ghost agents: every step across the cut is a hand-off
    assert settings["replicate"] is False and settings["halo"] == 0 and settings["partitions"] == 2
    assert settings["tokens"] == 16 and settings["steps"] * settings["tokens"] <= config["srrw"]["steps"]
    assert walk.fn is demo.srrw_pipeline.walk_stage
    assert "curves_crossing" not in p.stages and not any(k.startswith("test_crossing") for k in p.stages)
    assert p.stages["report"].inputs["crossing"] == "walk_crossing"
    # the walks the report plots by name (curves_*, walk_coreset*) are unchanged: the crossing walk is apart
    assert sorted(k for k in p.stages if k.startswith("curves_")) == [
        "curves_baseline_a10", "curves_coreset_a0", "curves_coreset_a10"]


def test_demo_without_crossing_tokens_has_no_partitioned_walk() -> None:
    p = demo.build(load_config(demo, None, ["srrw.crossing_tokens=0"]))
    assert "walk_crossing" not in p.stages and "crossing" not in p.stages["report"].inputs


@pytest.mark.parametrize(("value", "needle"), [
    ("-1", "srrw.crossing_tokens must be an integer >= 0"),
    ("101", "srrw.crossing_tokens must be at most srrw.agents (100), got 101"),
])
def test_demo_refuses_crossing_tokens_out_of_range(value: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_config(demo, None, [f"srrw.crossing_tokens={value}"])  # validates


def test_demo_report_draws_the_tokens_crossing_actors(tmp_path) -> None:
    walk = tmp_path / "walk_crossing"
    walk.mkdir()
    pq.write_table(pa.table({"token": [0, 1, 2], "steps": [100, 100, 100], "handoffs": [7, 0, 3],
                                     "theta": [[0.0, 1.0], [0.5, 1.0], [1.0, 1.0]]}), walk / "tokens.parquet")
    metrics = {"tokens": 3, "handoffs": 10, "layout": "partitioned", "handoffs_per_1000_hops": 33.333,
               "bytes_per_crossing": 1161.4}
    section = demo.crossing_section(tmp_path, demo.read_table(walk / "tokens.parquet"), metrics)
    assert section.title == "Tokens crossing actors" and (tmp_path / "srrw_tokens.png").stat().st_size > 5_000
    assert "Layout `partitioned`: 3 token(s) walked 300 hops in all and crossed between walker actors 10 times" in section.text
    assert [r["handoffs"] for r in section.table] == [7, 0, 3]
    assert demo.crossing_headline(metrics) == "3 tokens, 10 hand-offs (33.333 per 1,000 hops, 1,161 bytes per crossing)"
