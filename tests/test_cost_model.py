"""The cost model and its calibration file, purely (no Ray): formulas, agreement with shardwalk.core.plan.sizing, fit and
the smallest cluster, the sealed file's checks."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from shardwalk.core.errors import ConfigError, CorruptArtifactError
from shardwalk.core.index.graph_settings import GraphSettings
from shardwalk.core.plan import calibration, sizing
from shardwalk.core.plan import cost_model as cm

HNSW_GRAPH = GraphSettings(method="hnsw")  # the graph through the index (these tests are about it)

GIB = 1 << 30
CONSTANTS = calibration.Constants(
    build_s_per_row=1e-4, build_s_per_row_per_dim=1e-6, build_log_growth=0.1, query_s_per_row=2e-5,
    query_s_per_row_per_dim=2e-7, query_log_growth=0.1, thread_efficiency=0.9, index_memory_ratio=1.0,
    graph_s_per_row=1e-5, parquet_bytes_per_s=1e8, sha256_bytes_per_s=1e9, blas_flops_per_s=1e10,
    ray_start_s=5.0, driver_s=9.0, torch_actor_start_s=1.5, stage_start_s=1.0, stage_overhead_s=0.25, report_s=3.0, actor_start_s=0.5, worker_bytes=100 << 20, torch_worker_bytes=250 << 20,
    ray_head_bytes=600 << 20, ray_node_bytes=50 << 20, ray_memory_fraction=0.7, train_s_per_unit=1e-9,
    torch_start_s=2.0, allreduce_s=3e-3, hop_s=2e-5, hop_s_per_feature=1e-8, handoff_s=2e-3, walk_start_s=2.5,
    partition_s_per_edge=1e-5, graph_s_per_edge=1e-6,
)
SHAPE = calibration.NodeShape("box", 8, 32 * GIB)
CAL = calibration.Calibration(CONSTANTS, {"name": "test machine"}, {"box": SHAPE}, "box", "test.json")


def cluster(nodes: int, cpus: int = 8, ray_memory: int = 20 * GIB) -> cm.Cluster:
    return cm.Cluster((sizing.Node(float(cpus), ray_memory),) * nodes)


def stage(plan: cm.Plan, name: str) -> cm.StageCost:
    return next(s for s in plan.stages if s.name == name)


def test_stage_time_is_work_over_throughput_times_cores_plus_fixed_costs() -> None:
    rows, dim = 1_000_000, 128
    one, two = (cm.plan_index(cm.IndexJob(rows, dim), cluster(n), CAL) for n in (1, 2))
    data = rows * (4 * dim + 16)
    fixed = CONSTANTS.stage_overhead_s + CONSTANTS.stage_start_s + data / CONSTANTS.sha256_bytes_per_s
    assert stage(one, "ingest").seconds == pytest.approx(fixed + data / (1e8 * 8))
    assert stage(two, "ingest").seconds == pytest.approx(fixed + data / (1e8 * 16))
    assert stage(one, "start").seconds == CONSTANTS.driver_s  # one node: the run starts and stops its own Ray
    assert stage(two, "start").seconds == CONSTANTS.driver_s - CONSTANTS.ray_start_s  # a cluster: it joins


def test_build_time_follows_rows_dim_and_the_calibrated_terms() -> None:
    job = cm.IndexJob(200_000, 64, knn_graph=False)
    plan = cm.plan_index(job, cluster(1, cpus=1), CAL)
    per_row = (1e-4 + 1e-6 * 64) * (1 + 0.1 * math.log(200_000 / 20_000))
    read = 200_000 * 4 * 64 / 1e8
    hashed = sizing.index_bytes(200_000, 64, 16) / 1e9
    assert stage(plan, "build").seconds == pytest.approx(0.25 + 0.5 + read + 200_000 * per_row + hashed)
    doubled = cm.plan_index(dataclasses.replace(job, ef_construction=400), cluster(1, cpus=1), CAL)
    assert stage(doubled, "build").seconds > 1.9 * stage(plan, "build").seconds - 2 * (1.5 + read + hashed)


def test_index_layout_is_core_sizing_plan_so_plan_and_run_agree() -> None:
    for nodes, rows in ((1, 1000), (3, 10_000_000), (2, 5_000_000)):
        c = cluster(nodes, ray_memory=8 * GIB)
        plan = cm.plan_index(cm.IndexJob(rows, 256), c, CAL)
        expected = sizing.plan(c.nodes, rows, 256, 16)
        assert plan.layout["shards"] == expected.shards
        assert plan.layout["threads_per_actor"] == expected.threads


def test_memory_per_node_is_shard_bytes_staged_rows_and_one_worker_per_actor() -> None:
    c = cluster(2)
    plan = cm.plan_index(cm.IndexJob(10_000_000, 128, shards=4, replicas=1, graph=HNSW_GRAPH), c, CAL)
    per_shard = math.ceil(sizing.index_bytes(10_000_000, 128, 16) / 4)
    staged = 2_500_000 * (4 * 128 + 8)
    assert [m.actors for m in plan.memory] == [2, 2]
    assert all(m.need_bytes == 2 * (per_shard + staged + CONSTANTS.worker_bytes) for m in plan.memory)
    assert all(m.budget_bytes == int(20 * GIB * (1 - cm.HEADROOM)) for m in plan.memory)
    assert plan.fits


def test_an_index_too_big_does_not_fit_and_says_what_to_change() -> None:
    job = cm.IndexJob(100_000_000, 64, replicas=2)  # at dim 64 the links are 30 % of a row: M matters
    plan = cm.plan_index(job, cluster(2), CAL)
    assert not plan.fits and plan.problems
    advice = " ".join(plan.advice)
    assert "more nodes" in advice and "fewer replicas" in advice and "smaller M" in advice
    wide = cm.plan_index(dataclasses.replace(job, dim=768), cluster(2), CAL)
    assert "smaller M" not in " ".join(wide.advice)  # 2 % of a 768-d row: not worth suggesting


def test_smallest_cluster_is_the_fewest_nodes_that_fit() -> None:
    job = cm.IndexJob(100_000_000, 768)
    plan = cm.smallest_cluster(job, SHAPE, CAL)
    count = len(plan.cluster.nodes)
    assert plan.fits and count > 1
    fewer = cm.plan_index(job, cm.Cluster.of_shape(SHAPE, count - 1, CONSTANTS.ray_memory_fraction), CAL)
    assert not fewer.fits
    assert plan.cluster.nodes[0].memory_bytes == int(32 * GIB * 0.7)


def test_smallest_cluster_gives_up_with_a_config_error() -> None:
    tiny = calibration.NodeShape("tiny", 1, 1 << 20)
    with pytest.raises(ConfigError, match="fits on no cluster"):
        cm.smallest_cluster(cm.IndexJob(10_000_000_000, 4096), tiny, CAL)


def test_walk_hop_rate_from_compute_cut_handoffs_and_latency() -> None:
    job = cm.WalkJob(agents=2000, edges=16_000, rows=40_000, dim=40, tokens=16, steps=10_000, partitions=2,
                     halo=1, cut_fraction=0.02, replicate=False, links=False)  # hand-offs as Ray calls
    assert cm.handoffs_per_hop(job) == pytest.approx(0.01)
    plan = cm.plan_srrw(job, cluster(1, cpus=2), CAL)
    hop = 2e-5 + 1e-8 * 20 * 40
    per_hop = hop + 0.01 * 2e-3 * cm.BATCHED_HANDOFF_SHARE  # 8 tokens per actor would share a call; the floor wins
    assert plan.layout["seconds_per_hop"] == pytest.approx(per_hop)
    assert stage(plan, "walk").seconds == pytest.approx(0.25 + 2.5 + 16 * 10_000 * per_hop / 2 + 16 * 2000 * 8 * 2 / 1e9)
    alone = cm.plan_srrw(dataclasses.replace(job, partitions=1), cluster(1, cpus=2), CAL)
    assert alone.layout["handoffs_per_hop"] == 0.0
    slow = dataclasses.replace(CAL, constants=dataclasses.replace(CONSTANTS, handoff_s=2e-2))
    assert stage(cm.plan_srrw(job, cluster(1, cpus=2), slow), "walk").seconds > stage(plan, "walk").seconds


def test_walk_replicates_when_a_copy_per_actor_fits_as_the_walker_decides() -> None:
    job = cm.WalkJob(agents=2000, edges=16_000, rows=40_000, dim=40, tokens=16, steps=10_000, partitions=2,
                     cut_fraction=0.02, halo=1)  # replicate = "auto": 13 MB of data per copy
    big = cm.plan_srrw(job, cluster(2, cpus=2), CAL)
    assert big.layout["replicate"] is True and big.layout["handoffs_per_hop"] == 0.0
    tiny = cm.plan_srrw(job, cluster(1, cpus=2, ray_memory=40 << 20), CAL)  # 2 copies > a quarter of 40 MiB
    assert tiny.layout["replicate"] is False and tiny.layout["handoffs_per_hop"] == pytest.approx(0.01)
    assert stage(big, "walk").seconds < stage(tiny, "walk").seconds


def test_one_token_walks_its_own_path_whatever_the_actors() -> None:
    job = cm.WalkJob(agents=100, edges=300, rows=1000, dim=10, tokens=1, steps=50_000, partitions=4, cut_fraction=0.0)
    a, b = (stage(cm.plan_srrw(job, cluster(1, cpus=c), CAL), "walk").seconds for c in (1, 8))
    assert a == pytest.approx(b)


def test_coreset_score_stage_uses_the_scoring_layout_rule() -> None:
    job = cm.ScoringJob(100_000, 40, classes=10, shards=2, models=4, epochs=15, hidden=256, test_fraction=0.0,
                        evaluate_models=0)
    plan = cm.plan_coreset(job, cluster(1, cpus=2), CAL)
    assert plan.layout["layout"] == "models" and plan.layout["actors"] == 2
    per_proxy = 100_000 * 15 * (40 * 256 + 256 * 10) * 1e-9
    assert stage(plan, "score").seconds == pytest.approx(0.25 + 1.5 + 2.0 + 2 * per_proxy)
    assert [m.actors for m in plan.memory] == [2]


def test_beta_tuning_is_priced_in_select_with_its_refits_and_no_evaluate_stage_when_evaluation_is_off() -> None:
    """β tuning (select.beta = "auto") trains its validation models inside `select`: one per grid candidate and
    random candidate, then CONFIRM_SEEDS refits of each (method, rate)'s best and of each random."""
    import copy

    from shardwalk.core.coresets.selection import BETA_GRID, CONFIRM_SEEDS
    from shardwalk.pipelines import coreset
    from shardwalk.pipelines.plan import _scoring_job

    # ccs-el2n-auto (a plain and a class-balanced variant) and ccs-aum-cb, keep 0.7 / 0.5 / 0.3 / 0.1
    config = copy.deepcopy(coreset.DEFAULTS)
    config["evaluate"]["enabled"] = False
    job = _scoring_job(config, 20_000, 64, 10)
    assert len(BETA_GRID) == 7 and CONFIRM_SEEDS == 2  # every grid β fits beside keep ≤ 0.7
    # 3 variants, random and random-cb candidates at each rate
    assert (job.tuning_fits, job.tuning_rounds, job.evaluate_models) == (3 * 4 * 7 + 2 * 4 + 2 * (3 * 4 + 2 * 4), 3, 0)
    # a fixed β: only ccs-el2n-auto's balance is validated (its two variants, on that β alone)
    balance = _scoring_job({**config, "select": {**config["select"], "beta": 0.1}}, 20_000, 64, 10)
    assert (balance.tuning_fits, balance.tuning_rounds) == (2 * 4 * 1 + 2 * 4 + 2 * (2 * 4 + 2 * 4), 3)
    named = ["ccs-el2n-cb", *config["select"]["methods"][1:]]
    fixed = _scoring_job({**config, "select": {**config["select"], "beta": 0.1, "methods": named}}, 20_000, 64, 10)
    assert (fixed.tuning_fits, fixed.tuning_rounds) == (0, 0)
    tuned, plain = (cm.plan_coreset(j, cluster(1, cpus=2), CAL) for j in (job, fixed))
    assert [s.name for s in tuned.stages] == [s.name for s in plain.stages] and "evaluate" not in [s.name for s in tuned.stages]
    unit = 64 * config["evaluate"]["hidden"] + config["evaluate"]["hidden"] * 10
    fits = job.tuning_fits * config["evaluate"]["steps"] * config["evaluate"]["batch_size"] * unit * CONSTANTS.train_s_per_unit / 2
    extra_rounds = 3 * CONSTANTS.torch_actor_start_s  # each selection round starts its own shard actors
    assert stage(tuned, "select").seconds == pytest.approx(
        stage(plain, "select").seconds + CONSTANTS.torch_actor_start_s + CONSTANTS.torch_start_s + fits + extra_rounds)


@pytest.mark.parametrize("field", ["rows", "dim"])
@pytest.mark.parametrize("value", [0, -5])
def test_non_positive_sizes_are_config_errors_naming_the_value(field: str, value: int) -> None:
    sizes = {"rows": 1000, "dim": 8} | {field: value}
    with pytest.raises(ConfigError, match=f"{field} must be > 0, got {value}"):
        cm.plan_index(cm.IndexJob(**sizes), cluster(1), CAL)


# ----------------------------------------------------------------------------- the calibration file


def test_calibration_round_trips_through_its_sealed_file(tmp_path: Path) -> None:
    path = tmp_path / "cal.json"
    calibration.save(CAL, path)
    loaded = calibration.load(path)
    assert loaded.constants == CONSTANTS and loaded.node_shapes == {"box": SHAPE}
    assert loaded.machine["name"] == "test machine" and loaded.source == str(path)


def test_an_edited_calibration_fails_its_checksum_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cal.json"
    calibration.save(CAL, path)
    payload = json.loads(path.read_text())
    payload["constants"]["handoff_s"] = 1e-9
    path.write_text(json.dumps(payload))
    with pytest.raises(CorruptArtifactError, match=rf"{path}.*checksum"):
        calibration.load(path)


@pytest.mark.parametrize("edit, message", [
    (lambda p: p.update(schema_version=99), "version 99"),
    (lambda p: p["constants"].pop("hop_s"), "missing \\['hop_s'\\]"),
    (lambda p: p["constants"].update(hop_s="fast"), "constant 'hop_s'"),
    (lambda p: p.update(default_node_shape="nope"), "default_node_shape"),
    (lambda p: p["node_shapes"]["box"].update(cpus=0), "node shape 'box'"),
])
def test_a_calibration_failing_its_schema_is_refused_naming_the_file(tmp_path: Path, edit, message) -> None:
    from shardwalk.core.storage.store import write_json_sealed

    payload = calibration.to_json(CAL)
    edit(payload)
    path = tmp_path / "cal.json"
    write_json_sealed(path, payload)  # a well-sealed file whose content is wrong
    with pytest.raises(CorruptArtifactError, match=rf"{path}: calibration file.*{message}"):
        calibration.load(path)


def test_a_missing_calibration_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        calibration.load(tmp_path / "absent.json")


def test_the_shipped_calibration_loads_and_names_its_machine() -> None:
    cal = calibration.load(calibration.DEFAULT_FILE)
    assert cal.machine["name"] and cal.machine["cpus"] >= 1
    assert cal.default_shape in cal.node_shapes


def test_k_means_routing_asks_nprobe_shards_instead_of_all() -> None:
    job = cm.IndexJob(1_000_000, 64, shards=4, graph=HNSW_GRAPH)
    broadcast, routed = (stage(cm.plan_index(dataclasses.replace(job, nprobe=p), cluster(2), CAL), "knn_graph")
                         for p in (0, 1))
    assert "× 4 shards" in broadcast.work and "× 1 shards" in routed.work
    assert routed.seconds < broadcast.seconds / 2


def test_plan_predicts_both_layouts_with_the_two_actor_baseline_in_a_tokens_bytes() -> None:
    job = cm.WalkJob(agents=2000, edges=16_000, rows=40_000, dim=40, tokens=256, steps=1000, partitions=2, halo=3,
                     cut_fraction=0.02)
    both = cm.plan_srrw(job, cluster(1, cpus=2), CAL).layout["layouts"]
    part, rep = both["partitioned"], both["replicate"]
    # two views of (1 + 0.1·(halo + 1)) / 2 of the agents overlap on 0.4 of them (measured at halo 3: 792 of 2,000)
    assert part["shared_entries"] == 800 and rep["shared_entries"] == 0
    view = int(0.7 * 2000)
    assert part["token_bytes"] == 8 * (view + 800 + cm.TOKEN_STREAM_WORDS + 3 * 40)  # + 8 bytes per shared entry
    assert rep["token_bytes"] == 8 * (2000 + cm.TOKEN_STREAM_WORDS + 3 * 40)
    assert part["actor_bytes"] - rep["actor_bytes"] == 256 * (part["token_bytes"] - rep["token_bytes"]) + int(
        8 * 40_000 * 40 * (min(1.0, 1.3 / 2) - 1.0))
    three = cm.plan_srrw(dataclasses.replace(job, partitions=3), cluster(1, cpus=3), CAL).layout["layouts"]
    assert three["partitioned"]["token_bytes"] == 8 * (int(1.4 / 3 * 2000) + cm.TOKEN_STREAM_WORDS + 3 * 40)  # no baseline


def test_a_batched_hand_off_costs_a_share_of_a_call_never_below_the_measured_floor() -> None:
    job = cm.WalkJob(agents=2000, edges=16_000, rows=40_000, dim=40, tokens=1, partitions=2, replicate=False, links=False)
    assert cm.handoff_seconds(job, CONSTANTS) == 2e-3  # one token: every hand-off is a call of its own
    assert cm.handoff_seconds(dataclasses.replace(job, tokens=8), CONSTANTS) == pytest.approx(2e-3 / 4)
    many = dataclasses.replace(job, tokens=256)
    assert cm.handoff_seconds(many, CONSTANTS) == pytest.approx(2e-3 * cm.BATCHED_HANDOFF_SHARE)


def test_a_partitioned_walk_prices_its_hand_offs_over_direct_links_not_as_ray_calls() -> None:
    """The walker's default: a crossing's own CPU plus its share of a link message (half of each actor's tokens
    a message); both layouts predicted, the replicated one without hand-offs."""
    consts = dataclasses.replace(CONSTANTS, link_message_s=1e-4, link_crossing_s=3e-5)
    cal = dataclasses.replace(CAL, constants=consts)
    job = cm.WalkJob(agents=2000, edges=16_000, rows=40_000, dim=40, tokens=256, steps=10_000, partitions=2,
                     halo=1, cut_fraction=0.02, replicate=False)
    assert job.links is True
    per_handoff = 3e-5 + 1e-4 / (cm.LINK_MESSAGE_SHARE * 256 / 2)
    assert cm.handoff_seconds(job, consts) == pytest.approx(per_handoff)
    plan = cm.plan_srrw(job, cluster(1, cpus=2), cal)
    hop = 2e-5 + 1e-8 * 20 * 40
    assert plan.layout["seconds_per_hop"] == pytest.approx(hop + 0.01 * per_handoff)
    both = plan.layout["layouts"]
    assert both["partitioned"]["seconds_per_handoff"] == pytest.approx(per_handoff)
    assert both["replicate"]["seconds_per_handoff"] == 0.0 and both["replicate"]["handoffs_per_hop"] == 0.0
    assert both["partitioned"]["walk_seconds"] == pytest.approx(2.5 + 256 * 10_000 * (hop + 0.01 * per_handoff) / 2)
    assert "over direct links" in stage(plan, "walk").work
    calls = cm.plan_srrw(dataclasses.replace(job, links=False), cluster(1, cpus=2), cal)
    assert calls.layout["layouts"]["partitioned"]["seconds_per_handoff"] == pytest.approx(2e-3 * cm.BATCHED_HANDOFF_SHARE)
    assert stage(calls, "walk").seconds > stage(plan, "walk").seconds and "as Ray calls" in stage(calls, "walk").work
    alone = dataclasses.replace(job, tokens=1)  # one token: a message of its own each crossing
    assert cm.handoff_seconds(alone, consts) == pytest.approx(3e-5 + 1e-4)


def test_the_plans_link_message_share_is_the_walkers_flush_share() -> None:
    from shardwalk.workers.walker import FLUSH_SHARE

    assert cm.LINK_MESSAGE_SHARE == FLUSH_SHARE
