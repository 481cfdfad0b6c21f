"""The main job end to end on small data: a finished run, a report with its figures, then all cache hits."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shardwalk.pipelines.cli import main
from tests.report_check import embedded_pngs

SMALL = [
    "source=builtin:digits", "index.sweep_shards=[1, 2]", "index.sweep_ef=[16, 64]", "index.queries=100",
    "proxy.epochs=3", "proxy.models=1", "select.keep=[0.5, 0.3]", 'select.methods=["ccs-el2n-cb", "random"]',
    "evaluate.steps=100", "srrw.agents=20", "srrw.steps=2000", "srrw.record_every=500",
    "select.beta=0.1",  # β tuning has its own run (test_coreset_trust.py)
    'srrw.coreset="ccs-el2n-cb-keep0.3"',  # the default ccs-el2n-auto would validate its balance (also there)
]


@pytest.mark.ray
@pytest.mark.slow
def test_demo_runs_end_to_end_and_reruns_from_cache(ray_local, tmp_path, capsys) -> None:
    runs = tmp_path / "runs"
    args = ["run", "demo", "--runs-dir", str(runs), *[a for s in SMALL for a in ("--set", s)]]
    assert main(args) == 0
    first = capsys.readouterr().out
    run_dir = Path(re.search(r"^report: (\S+report\.html)$", first, re.M).group(1)).parent
    assert embedded_pngs(run_dir / "report.html") == 9  # every figure embedded: the page stands alone
    for figure in ("index_sweep", "score_histogram", "accuracy_vs_keep", "srrw_curves", "srrw_visits",
                   "shard_balance", "index_memory", "class_balance", "srrw_tokens"):
        assert (run_dir / f"{figure}.png").stat().st_size > 10_000
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "succeeded"
    headline = record["stages"]["report"]["metrics"]
    crossing = record["stages"]["walk_crossing"]["metrics"]
    assert crossing["layout"] == "partitioned" and crossing["handoffs"] > 0
    assert "tokens crossing actors (partitioned walk)" in headline
    assert 0.9 <= headline["index recall@10 (ef=64)"] <= 1.0
    assert 0.5 < headline["full-data accuracy"] <= 1.0
    errors = {k: v for k, v in headline.items() if k.startswith("SRRW")}
    assert len(errors) == 3 and all(v > 0 for v in errors.values())

    assert main(args) == 0
    second = capsys.readouterr().out
    assert second.count("cache hit") == len(record["stages"])
    assert "report: " in second
