"""`shardwalk plan --sample`: the growth laws that carry a sample's costs to the full size, the bounded sample
reader, pricing every kNN-graph method, and bad sample sources at the CLI (no Ray anywhere)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardwalk.core.data.schema import from_numpy
from shardwalk.core.errors import DataError
from shardwalk.core.index import knn_partition as kp
from shardwalk.core.index.graph_settings import SAMPLE_ROWS_PER_CELL, GraphSettings, partitions_for
from shardwalk.core.plan import cost_model as cm
from shardwalk.core.plan import sample_costs as sc
from shardwalk.pipelines.cli import main
from tests.test_cost_model import CAL, cluster, stage


def costs(**changes: float) -> sc.SampleCosts:
    base = sc.SampleCosts("test", 30_000, 64, build_s_per_row=1e-4, query_s_per_row=3e-5, local_s_per_pair=4e-9,
                          assign_s_per_row_cell=1e-8, train_s_per_unit=5e-7, rest_s_per_row=1e-5,
                          exact_s_per_pair=3e-9, exact_rows=6000, read_seconds=0.1, seconds=5.0)
    return dataclasses.replace(base, **changes)


# ----------------------------------------------------------------------------- growth laws


def test_hnsw_build_law_is_n_log_n_and_query_law_is_log_n() -> None:
    # the mean insert of a build to n is (1/n)·∫ ln s ds = ln n − 1 (per unit), so T(n) ∝ n·(ln n − 1)
    n_s, n = 30_000, 1_000_000
    assert sc.build_growth(n_s, n_s) == pytest.approx(1.0)
    assert sc.build_growth(n_s, n) == pytest.approx((math.log(n) - 1) / (math.log(n_s) - 1))
    assert sc.query_growth(n_s, n) == pytest.approx(math.log(n) / math.log(n_s))
    assert sc.query_growth(n_s, n, 0.3) == pytest.approx(1 + 0.3 * math.log(n / n_s))  # a steeper law wins
    assert sc.query_growth(n_s, n, 0.01) == pytest.approx(sc.query_growth(n_s, n))  # never below ln n
    assert sc.query_growth(n_s, n_s // 10, 0.3) == pytest.approx(sc.query_growth(n_s, n_s // 10))  # smaller index: ln n
    assert 1.0 < sc.query_growth(n_s, n) < sc.build_growth(n_s, n) < 1.5  # slow growth, not the 0.3·ln of generated data


def test_the_build_growth_fitted_on_two_halves_stays_between_n_log_n_and_the_cap() -> None:
    n = 30_000
    pure = 1 / (math.log(n) - 1)
    alpha, beta = -5e-5, 2e-5  # c(s) = α + β·ln s, steeper than n·ln n (α < 0): g = β / (α + β·(ln n − 1))
    halves = (alpha + beta * (math.log(n / 2) - 1), alpha + beta * (math.log(n) + math.log(2) - 1))
    assert pure < sc.fit_build_growth(*halves, n) == pytest.approx(beta / (alpha + beta * (math.log(n) - 1)))
    assert sc.fit_build_growth(1e-4, 0.9e-4, n) == pytest.approx(pure)  # noise: never below n·ln n
    assert sc.fit_build_growth(1e-4, 9e-4, n) == sc.MAX_BUILD_GROWTH  # nor beyond the cap
    g = sc.fit_build_growth(*halves, n)
    assert sc.build_growth(n, 10 * n, g) == pytest.approx(1 + g * math.log(10))
    assert sc.build_growth(n, 10 * n, 0.0) == pytest.approx(sc.build_growth(n, 10 * n))


def test_partition_graph_grows_linearly_at_a_fixed_cell_size_and_exact_quadratically() -> None:
    settings = GraphSettings()
    small, large = 200_000, 800_000
    local = [sc.partition_seconds(costs(), n, settings)["local"] for n in (small, large)]
    assert local[1] / local[0] == pytest.approx(large / small, rel=0.02)  # cells stay ~partition_rows
    assert sc.partition_pairs_per_row(large, settings) == pytest.approx(settings.overlap * settings.partition_rows, rel=0.01)
    assert sc.exact_seconds(costs(), large) / sc.exact_seconds(costs(), small) == pytest.approx(16.0)
    steps = sc.partition_seconds(costs(), large, settings)  # assignment ~ n·P and k-means ~ P² grow faster
    parts = partitions_for(large, settings)
    assert steps["assign"] == pytest.approx(1e-8 * large * parts)
    assert steps["train"] == pytest.approx(5e-7 * SAMPLE_ROWS_PER_CELL * parts * parts)


# ----------------------------------------------------------------------------- the cost model with a sample


def test_a_sample_replaces_the_calibration_for_build_and_graph_and_scales_with_its_costs() -> None:
    job = cm.IndexJob(400_000, 64, shards=1, graph=GraphSettings(method="partition"))  # auto may change with the costs
    unit = ("build_s_per_row", "query_s_per_row", "local_s_per_pair", "assign_s_per_row_cell", "train_s_per_unit",
            "rest_s_per_row", "exact_s_per_pair")
    plain, zero, once, twice = (cm.plan_index(dataclasses.replace(job, sample=s), cluster(1), CAL) for s in (
        None, costs(**{u: 0.0 for u in unit}), costs(), costs(**{u: 2 * getattr(costs(), u) for u in unit})))
    for name in ("build", "knn_graph"):  # the stages' measured part doubles with the sample's costs
        base = stage(zero, name).seconds
        assert stage(once, name).seconds > base
        assert stage(twice, name).seconds - base == pytest.approx(2 * (stage(once, name).seconds - base))
        assert stage(once, name).seconds != pytest.approx(stage(plain, name).seconds)
    assert "(sampled costs)" in stage(once, "knn_graph").work
    # the other stages keep the calibration's figures
    assert stage(once, "ingest").seconds == pytest.approx(stage(plain, "ingest").seconds)


def test_the_sampled_hnsw_laws_never_grow_slower_than_the_calibrated_machines() -> None:
    # a 30k sample fits the caches a 300k index outgrows: its halves' slope is floored by the machine's law
    steep = dataclasses.replace(CAL, constants=dataclasses.replace(CAL.constants, build_log_growth=0.3,
                                                                     query_log_growth=0.3))
    job = cm.IndexJob(300_000, 64, shards=1, graph=GraphSettings(method="hnsw"))
    flat, machine, steeper = (cm.plan_index(dataclasses.replace(job, sample=costs(build_log_growth=g)), cluster(1, cpus=1), steep)
                              for g in (0.05, 0.3, 0.4))
    zero = cm.plan_index(dataclasses.replace(job, sample=costs(build_s_per_row=0.0, query_s_per_row=0.0)),
                         cluster(1, cpus=1), steep)
    inserts = stage(machine, "build").seconds - stage(zero, "build").seconds
    assert inserts == pytest.approx(300_000 * 1e-4 * (1 + 0.3 * math.log(10)))
    assert stage(flat, "build").seconds == pytest.approx(stage(machine, "build").seconds)
    assert stage(steeper, "build").seconds > stage(machine, "build").seconds  # the data's own steeper law wins
    queries = stage(machine, "knn_graph").seconds - stage(zero, "knn_graph").seconds
    assert queries == pytest.approx(300_000 * 3e-5 * (1 + 0.3 * math.log(10)))


def test_the_partition_graph_pays_a_graph_actor_start_and_its_local_graphs_scale_as_measured() -> None:
    job = cm.IndexJob(400_000, 64, shards=1, hnsw=False, graph=GraphSettings(method="partition"), sample=costs())

    def graph_seconds(**constants: float) -> float:
        cal = dataclasses.replace(CAL, constants=dataclasses.replace(CAL.constants, **constants))
        return stage(cm.plan_index(job, cluster(1), cal), "knn_graph").seconds

    local = sc.partition_seconds(costs(), job.rows, job.graph)["local"]
    ideal = graph_seconds(graph_thread_efficiency=1.0, graph_actor_start_s=1.0)
    # 8 CPUs: the local graphs run 1 + 7·e times a core's speed; assignment and refinement keep hnswlib's
    assert graph_seconds(graph_thread_efficiency=0.5, graph_actor_start_s=1.0) - ideal == pytest.approx(
        local / 4.5 - local / 8.0)
    assert graph_seconds(graph_thread_efficiency=1.0, graph_actor_start_s=3.0) - ideal == pytest.approx(2.0)


def test_a_sampled_plan_runs_the_method_the_run_picks_priced_from_the_sample() -> None:
    # the run's `auto` prices the methods from the calibration (it measures no sample): the calibration picks
    # the index's queries here, while on this sample they are dear and the local graphs cheap
    job = cm.IndexJob(300_000, 64, shards=1)
    by_calibration = cm.plan_index(job, cluster(1), CAL).layout["graph_method"]
    sampled = cm.plan_index(dataclasses.replace(job, sample=costs(query_s_per_row=1e-3)), cluster(1), CAL)
    priced = sampled.layout["graph_stage_seconds_by_method"]
    assert by_calibration == "hnsw" and min(priced, key=priced.get) == "partition"
    assert sampled.layout["graph_method"] == "hnsw"  # what the run will run ...
    assert stage(sampled, "knn_graph").seconds == pytest.approx(priced["hnsw"], abs=1e-3)  # ... at the sample's price
    assert sampled.layout["graph_method_fastest_sampled"] == "partition"
    assert any("knn_graph.method=partition" in note for note in sampled.notes)


def test_every_graph_method_is_priced_and_hnsw_off_drops_the_build() -> None:
    job = cm.IndexJob(300_000, 64, shards=1, sample=costs())
    by_method = cm.method_seconds(job, cluster(1), CAL)
    assert set(by_method) == {"hnsw", "partition", "exact"} and all(s > 0 for s in by_method.values())
    assert by_method["exact"] > by_method["partition"]  # 300k² pairs against ~4k per row
    graph_only = cm.plan_index(dataclasses.replace(job, hnsw=False), cluster(1), CAL)
    assert [s.name for s in graph_only.stages] == ["start", "ingest", "knn_graph", "evaluate"]
    assert graph_only.layout["graph_method"] == "partition"
    tiny = cm.plan_index(cm.IndexJob(1_000, 64, shards=1, hnsw=False), cluster(1), CAL)  # one cell holds everything
    assert tiny.layout["graph_method"] == "exact"
    through_index = cm.plan_index(dataclasses.replace(job, graph=GraphSettings(method="hnsw")), cluster(1), CAL)
    assert "queries" in stage(through_index, "knn_graph").work


# ----------------------------------------------------------------------------- reading and measuring a sample


def _write(path, n: int, dim: int = 8, row_group: int = 500) -> None:
    x = np.repeat(np.arange(n, dtype=np.float32)[:, None], dim, axis=1)  # each vector holds its row number
    pq.write_table(from_numpy(x), path, row_group_size=row_group)


def test_the_sample_reads_only_the_row_groups_of_its_slices(tmp_path, monkeypatch) -> None:
    _write(tmp_path / "data.parquet", 40_000)
    read = []
    original = pq.ParquetFile.read_row_groups

    def counting(self, groups, *args, **kwargs):
        table = original(self, groups, *args, **kwargs)
        read.append(table.num_rows)
        return table

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", counting)
    x = sc.read_sample(str(tmp_path / "data.parquet"), rows=2_000)
    assert len(x) == 2_000 and x.shape[1] == 8
    assert sum(read) <= 2_000 + sc.SLICES * 500 < 40_000  # the slices' row groups, never the whole file
    rows = x[:, 0]
    assert rows.min() == 0 and rows.max() >= 35_000  # spread over the file, not its head


def test_measure_times_every_step_on_a_small_sample() -> None:
    got = sc.measure("builtin:synthetic?n=50000&d=16", k=5, M=8, ef_construction=40, ef=16,
                     settings=GraphSettings(partition_rows=256), rows=1_500)
    assert (got.rows, got.dim, got.exact_rows) == (1_500, 16, 1_500)  # a builtin is generated at the sample's size
    for name in ("build_s_per_row", "query_s_per_row", "local_s_per_pair", "assign_s_per_row_cell",
                 "train_s_per_unit", "rest_s_per_row", "exact_s_per_pair"):
        assert getattr(got, name) > 0, name
    assert got.seconds >= got.read_seconds > 0


def test_the_partition_steps_are_timed_after_their_kernels_are_loaded(monkeypatch) -> None:
    calls = []

    def recording(name, fn):
        def call(*args, **kwargs):
            calls.append(name)
            out = fn(*args, **kwargs)
            calls.append(f"{name} done")
            return out
        return call

    for name in ("warm_kernels", "train_partitions", "assign", "local_candidates", "refine_home"):
        monkeypatch.setattr(kp, name, recording(name, getattr(kp, name)))
    x = np.random.default_rng(0).normal(size=(400, 8)).astype(np.float32)
    sc._time_partition(x, 5, GraphSettings(partition_rows=64), "l2")
    timed = [c for c in calls[calls.index("warm_kernels done") + 1:] if not c.endswith("done")]
    assert calls[0] == "warm_kernels"  # a cold numba cache compiles there, before any timed step
    assert timed == ["train_partitions", "assign", "local_candidates", "refine_home"]


def test_a_sample_with_fewer_rows_than_k_plus_one_is_refused(tmp_path) -> None:
    _write(tmp_path / "few.parquet", 5)
    with pytest.raises(DataError, match="k=10 needs at least k \\+ 1 = 11"):
        sc.measure(str(tmp_path / "few.parquet"), k=10, M=16, ef_construction=200, ef=64, settings=GraphSettings())


# ----------------------------------------------------------------------------- the CLI


def _refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(["plan", "index", "--rows", "100000", "--dim", "8", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_bad_sample_sources_exit_2_with_one_line(tmp_path, capsys) -> None:
    assert "no such file or directory" in _refused(capsys, "--sample", str(tmp_path / "missing"))
    pq.write_table(pa.table({"id": [1, 2, 3], "vector": ["a", "b", "c"]}), tmp_path / "text.parquet")
    assert "must be a list of floats" in _refused(capsys, "--sample", str(tmp_path / "text.parquet"))
    pq.write_table(pa.table({"id": [1, 2, 3], "emb": [[1.0] * 8] * 3}), tmp_path / "other.parquet")
    assert "missing column" in _refused(capsys, "--sample", str(tmp_path / "other.parquet"))
    _write(tmp_path / "few.parquet", 5)
    assert "needs at least k + 1" in _refused(capsys, "--sample", str(tmp_path / "few.parquet"))
    _write(tmp_path / "wide.parquet", 50, dim=4)
    assert "dimension 4" in _refused(capsys, "--sample", str(tmp_path / "wide.parquet"))
    assert "--sample-rows" in _refused(capsys, "--sample-rows", "100")


def test_plan_with_a_sample_says_it_sampled_and_prices_every_method(capsys) -> None:
    code = main(["plan", "index", "--rows", "200000", "--dim", "16", "--nodes", "1", "--json",
                 "--set", "source=builtin:synthetic?n=5000&d=16", "--set", "M=8", "--set", "ef_construction=40",
                 "--sample", "--sample-rows", "1500"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["sample"]["rows"] == 1500 and out["sample"]["source"].startswith("builtin:synthetic")
    assert out["notes"][0].startswith("sampled 1,500 rows of builtin:synthetic")
    assert set(out["layout"]["graph_seconds_by_method"]) == {"hnsw", "partition", "exact"}


def test_auto_picks_the_cheapest_graph_method_that_reaches_the_recall_target() -> None:
    job = cm.IndexJob(300_000, 64, shards=1, sample=costs())
    auto = cm.plan_index(job, cluster(1), CAL)
    priced = auto.layout["graph_stage_seconds_by_method"]
    assert set(priced) == {"exact", "partition", "hnsw"}  # the index is built anyway: its queries compete
    assert auto.layout["graph_method"] == min(priced, key=priced.get)
    assert stage(auto, "knn_graph").seconds == pytest.approx(priced[auto.layout["graph_method"]], abs=1e-3)
    assert "graph_method_fastest_sampled" not in auto.layout  # here the run's pick is the sample's too
    no_index = cm.plan_index(dataclasses.replace(job, hnsw=False), cluster(1), CAL)
    assert set(no_index.layout["graph_stage_seconds_by_method"]) == {"exact", "partition"}  # no build to query
    assert no_index.layout["graph_method"] == "partition"  # 300k² exact pairs cost more
    one_cell = cm.plan_index(dataclasses.replace(job, hnsw=False, graph=GraphSettings(overlap=1)), cluster(1), CAL)
    assert one_cell.layout["graph_method"] == "exact"  # overlap 1 is not expected to reach 0.95: not a candidate
    named = cm.plan_index(dataclasses.replace(job, graph=GraphSettings(method="partition")), cluster(1), CAL)
    assert list(named.layout["graph_stage_seconds_by_method"]) == ["partition"]
