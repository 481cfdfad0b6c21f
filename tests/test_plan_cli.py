"""`shardwalk plan` from the command line (no Ray: a plan starts nothing) and the refusal of `shardwalk run`
for a job the plan says does not fit (one small Ray test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shardwalk.core.errors import ConfigError
from shardwalk.core.plan import calibration
from shardwalk.core.plan.sizing import GIB, Node
from shardwalk.pipelines.cli import main
from shardwalk.pipelines.plan import check_fits, parse_bytes, source_size


def plan_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["plan", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_plan_on_a_given_cluster_reports_layout_memory_stages_and_bottleneck(capsys) -> None:
    out = plan_json(capsys, "index", "--rows", "2000000", "--dim", "128", "--nodes", "2", "--cpus-per-node", "8",
                    "--memory-per-node", "32GiB")
    assert out["fits"] and out["nodes"] == 2 and out["layout"]["shards"] >= 2
    assert [s["name"] for s in out["stages"]] == ["start", "ingest", "build", "knn_graph", "evaluate", "report"]
    assert out["bottleneck"] in {"build", "knn_graph"} and out["seconds"] > 0
    assert len(out["memory_per_node"]) == 2 and all(m["fits"] for m in out["memory_per_node"])


def test_plan_without_a_cluster_finds_the_smallest_of_a_node_shape(capsys) -> None:
    out = plan_json(capsys, "index", "--rows", "100000000", "--dim", "768", "--node-shape", "r5.8xlarge")
    assert out["fits"] and out["node_shape"] == "r5.8xlarge" and out["nodes"] >= 2
    smaller = plan_json(capsys, "index", "--rows", "100000000", "--dim", "768", "--nodes", str(out["nodes"] - 1),
                        "--node-shape", "r5.8xlarge")
    assert not smaller["fits"] and smaller["advice"]


def test_plan_reads_rows_and_dim_from_the_configured_source(capsys) -> None:
    out = plan_json(capsys, "index", "--set", "source=builtin:synthetic?n=30000&d=48", "--nodes", "1")
    assert out["layout"]["index_bytes"] > 30000 * 48 * 4
    assert source_size("builtin:mnist5k") == (5000, 784, 10)


def test_plan_of_a_walk_measures_the_graph_cut(capsys) -> None:
    out = plan_json(capsys, "srrw", "--set", "tokens=4", "--nodes", "1", "--node-shape", "this-machine")
    assert out["layout"]["tokens"] == 4 and 0 < out["layout"]["cut_fraction"] < 1
    assert "walk" in [s["name"] for s in out["stages"]]
    both = out["layout"]["layouts"]  # both layouts predicted, whichever the walker would choose
    assert both["partitioned"]["handoffs_per_hop"] > 0 == both["replicate"]["handoffs_per_hop"]
    assert both["partitioned"]["actor_bytes"] < both["replicate"]["actor_bytes"]


def test_plan_of_a_walk_over_an_edge_list_of_named_nodes(capsys, tmp_path: Path) -> None:
    """`run srrw` numbers string node names (the Davis graph's women and events); `plan` refused them."""
    import networkx as nx
    import pyarrow as pa
    import pyarrow.parquet as pq

    davis = nx.davis_southern_women_graph()
    pq.write_table(pa.table({"src": [u for u, _ in davis.edges()], "dst": [v for _, v in davis.edges()]}),
                   tmp_path / "davis.parquet")
    out = plan_json(capsys, "srrw", "--set", 'graph.name="file"', "--set", f'graph.edges="{tmp_path / "davis.parquet"}"',
                    "--nodes", "1", "--node-shape", "this-machine")
    assert out["fits"] and 0 < out["layout"]["cut_fraction"] < 1
    assert next(s for s in out["stages"] if s["name"] == "agents")["work"].startswith("graph of 89 edges")


def test_plan_prints_a_readable_table(capsys) -> None:
    assert main(["plan", "index", "--rows", "1000000", "--dim", "64", "--nodes", "1"]) == 0
    text = capsys.readouterr().out
    assert "memory per node" in text and "wall time" in text and "bottleneck" in text and "fits" in text


@pytest.mark.parametrize("argv, named", [
    (["--rows", "0", "--dim", "8"], "rows must be > 0, got 0"),
    (["--rows", "10", "--dim", "-3"], "dim must be > 0, got -3"),
    (["--rows", "10", "--dim", "8", "--nodes", "1", "--memory-per-node", "0"], "--memory-per-node must be > 0"),
    (["--rows", "10", "--dim", "8", "--nodes", "1", "--memory-per-node", "lots"], "'lots'"),
    (["--rows", "10", "--dim", "8", "--node-shape", "z9.huge"], "unknown node shape 'z9.huge'"),
    (["--rows", "10", "--dim", "8", "--nodes", "0"], "--nodes must be >= 1"),
])
def test_bad_plan_input_exits_2_with_one_line_naming_it(capsys, argv: list[str], named: str) -> None:
    assert named in refused(capsys, "plan", "index", *argv)


def test_a_damaged_calibration_file_exits_2_naming_the_file(capsys, tmp_path: Path) -> None:
    good = tmp_path / "cal.json"
    calibration.save(calibration.load(), good)
    payload = json.loads(good.read_text())
    payload["constants"]["build_s_per_row"] *= 10
    good.write_text(json.dumps(payload))
    assert str(good) in refused(capsys, "plan", "index", "--rows", "10", "--dim", "8", "--calibration", str(good))
    wrong = tmp_path / "wrong.json"
    from shardwalk.core.storage.store import write_json_sealed

    write_json_sealed(wrong, {**calibration.to_json(calibration.load()), "schema_version": 0})
    err = refused(capsys, "plan", "index", "--rows", "10", "--dim", "8", "--calibration", str(wrong))
    assert str(wrong) in err and "schema" in err


def test_parse_bytes_understands_units() -> None:
    assert parse_bytes("64GiB") == 64 * GIB and parse_bytes("500MB") == 500 * 10**6 and parse_bytes("2e9") == 2 * 10**9
    with pytest.raises(ConfigError, match="-1GiB"):
        parse_bytes("-1GiB")


def test_check_fits_refuses_an_index_larger_than_the_cluster_saying_what_to_change() -> None:
    config = {"source": "builtin:synthetic?n=100000000&d=64", "vector_column": "vector", "M": 16,
              "ef_construction": 200, "ef": 64, "k": 10, "shards": 0, "replicas": 2, "memory_fraction": 0.5,
              "knn_graph": True, "recall_sample": 500, "nprobe": 0}
    with pytest.raises(ConfigError, match=r"does not fit.*change: \d+ nodes like these.*fewer replicas.*smaller M"):
        check_fits("index", config, [Node(2.0, 14 * GIB)], calibration.load())
    small = {**config, "source": "builtin:synthetic?n=10000&d=32", "replicas": 1}
    assert check_fits("index", small, [Node(2.0, 14 * GIB)], calibration.load()).fits


@pytest.mark.ray
def test_run_refuses_a_job_that_does_not_fit_before_any_stage_runs(ray_local, capsys, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    err = refused(capsys, "run", "index", "--set", "source=builtin:synthetic?n=100000000&d=768",
                  "--runs-dir", str(runs))
    assert "does not fit" in err and "nodes like these" in err
    record = json.loads(next((runs / "runs").glob("*/run.json")).read_text())
    assert not any(s.get("status") in ("done", "running", "failed") for s in record["stages"].values())
    assert not (runs / "cache").exists() or not list((runs / "cache").glob("ingest-*"))
