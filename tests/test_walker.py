"""Distributed SA-SRRW on walker actors reproduces the single-process reference exactly."""

from __future__ import annotations

import numpy as np
import pytest

from shardwalk.core.errors import ConfigError, DivergenceError
from shardwalk.core.srrw import SRRW, count_handoffs, run_sa_srrw, walk_partition
from shardwalk.core.srrw.agents import standard_graph
from shardwalk.core.srrw.objectives import LogisticRegression, add_intercept
from shardwalk.workers.walker import run_distributed_sa_srrw

pytestmark = pytest.mark.ray

LES = standard_graph("les_miserables")


def _objective(graph=LES, lam=0.1, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=4)
    blocks = {}
    for node in graph.nodes():
        x = rng.normal(size=(2, 4)) + (node % 3)
        blocks[node] = (add_intercept(x), (x @ w > 0).astype(np.int64))
    return LogisticRegression(blocks, lam=lam)


def _assert_same(dist, ref):
    assert len(dist.tokens) == len(ref.tokens)
    for d, r in zip(dist.tokens, ref.tokens):
        assert d.key == r.key and d.n == r.n
        assert d.path == r.path  # the node sequence, exactly
        np.testing.assert_allclose(d.theta, r.theta, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(d.theta, r.theta)  # in fact bit for bit
        assert d.logy == r.logy and d.curve_n == r.curve_n


@pytest.mark.parametrize("partitions", [1, 2, 3])
def test_distributed_matches_reference(ray_local, partitions):
    obj = _objective()
    kw = dict(steps=1500, alpha=5.0, seed=4, record_path=True, record_every=100, polyak=True)
    ref = run_sa_srrw(obj, LES, **kw)
    dist = run_distributed_sa_srrw(obj, LES, partitions=partitions, replicate=False, halo=1, **kw)
    _assert_same(dist, ref)
    np.testing.assert_array_equal(dist.theta_bar, ref.theta_bar)
    if partitions > 1:
        assert dist.tokens[0].handoffs > 0  # the token really crossed cut edges
    # the pure hand-off count the benchmark reports is what the actors did
    chain = SRRW(LES, 5.0)
    parts = walk_partition(chain, LES, partitions, seed=4)
    owner = np.asarray([parts[int(v)] for v in chain.nodes])
    assert count_handoffs(chain, ref.tokens[0].path, owner, halo=1) == dist.tokens[0].handoffs


def test_many_tokens_partitioned_carry_only_shared_measure_entries_and_match_reference(ray_local):
    """40 tokens on 3 partitions of a grid (compiled kernel): bit for bit the reference, while a crossing
    carries the shared entries of the visit measure only, and the metrics say so."""
    import networkx as nx

    grid = nx.convert_node_labels_to_integers(nx.grid_2d_graph(24, 8))
    obj = _objective(grid)
    kw = dict(steps=2000, alpha=10.0, seed=2, tokens=40, polyak=True)
    ref = run_sa_srrw(obj, grid, **kw)
    dist = run_distributed_sa_srrw(obj, grid, partitions=3, replicate=False, partitioner="range", halo=1, **kw)
    _assert_same(dist, ref)
    st = dist.stats
    assert st["handoffs"] > 100 and 0 < st["shared_entries"] < grid.number_of_nodes() / 2
    assert 0 < st["bytes_per_crossing"] < 8 * grid.number_of_nodes()  # less than the whole measure
    assert 0 < st["cut_fraction"] < 0.2 and st["handoffs_per_1000_hops"] > 0 and st["hops_per_actor_cpu_second"] > 0


def test_auto_layout_replicates_when_the_data_fits_and_partitions_when_not(ray_local, monkeypatch):
    import shardwalk.workers.walker as walker
    from shardwalk.core.plan.sizing import Node

    obj = _objective()
    kw = dict(steps=800, alpha=5.0, seed=4, tokens=4, record_path=True)
    ref = run_sa_srrw(obj, LES, **kw)
    fits = run_distributed_sa_srrw(obj, LES, partitions=2, **kw)  # replicate = "auto", the default
    _assert_same(fits, ref)
    assert fits.stats["replicated"] == 1.0 and fits.stats["handoffs"] == 0 and fits.stats["partitions"] == 2
    monkeypatch.setattr(walker, "cluster_nodes", lambda: [Node(2, 4 * obj.data_bytes)])  # a copy each > 1/4
    monkeypatch.setattr(walker, "check_tokens_fit", lambda *args: None)  # tiny node: tokens checked elsewhere
    split = run_distributed_sa_srrw(obj, LES, partitions=2, **kw)
    _assert_same(split, ref)
    assert split.stats["replicated"] == 0.0 and split.stats["handoffs"] > 0


def test_more_tokens_than_memory_allows_or_an_empty_partition_are_refused(ray_local, monkeypatch):
    import shardwalk.workers.walker as walker
    from shardwalk.core.plan.sizing import Node, walk_token_bytes
    from shardwalk.core.srrw.token import RNG_WORDS

    obj = _objective()
    per_token = walk_token_bytes(LES.number_of_nodes(), obj.dim, RNG_WORDS)  # no uniforms pre-drawn
    monkeypatch.setattr(walker, "cluster_nodes", lambda: [Node(2, 4 * (obj.data_bytes + 10 * per_token))])
    with pytest.raises(ConfigError, match=r"tokens=20 do not fit .* at most 10 tokens fit"):
        run_distributed_sa_srrw(obj, LES, steps=10, tokens=20, partitions=1)
    gap = {int(v): 0 if v < 40 else 2 for v in LES.nodes()}  # partition 1 gets no agent
    with pytest.raises(ConfigError, match=r"partition\(s\) \[1\] of 3 have no agents"):
        run_distributed_sa_srrw(obj, LES, steps=10, tokens=2, partitions=3, replicate=False, parts=gap)


def test_more_tokens_or_partitions_than_agents_are_config_errors(ray_local):
    small = standard_graph("ring", n=4)
    obj = _objective(small)
    with pytest.raises(ConfigError, match="tokens=5 exceeds the number of agents"):
        run_distributed_sa_srrw(obj, small, steps=10, tokens=5)
    with pytest.raises(ConfigError, match="partitions=5 exceeds the number of agents"):
        run_distributed_sa_srrw(obj, small, steps=10, partitions=5)


@pytest.mark.parametrize("base", ["srw", "nbrw", "iid"])
def test_concurrent_tokens_and_baselines_match(ray_local, base):
    obj = _objective()
    kw = dict(steps=600, seed=7, tokens=3, base=base, record_path=True, alpha=2.0 if base == "srw" else 0.0)
    _assert_same(run_distributed_sa_srrw(obj, LES, partitions=2, replicate=False, **kw), run_sa_srrw(obj, LES, **kw))


def test_checkpoint_and_resume_continue_the_trajectory(ray_local, tmp_path):
    obj = _objective()
    kw = dict(alpha=10.0, seed=2, tokens=2, record_path=True)
    first = run_distributed_sa_srrw(obj, LES, steps=350, checkpoint_dir=tmp_path, checkpoint_every=100,
                                    replicate=False, **kw)
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["checkpoint.json", "token-0.json", "token-1.json"]
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind
    resumed = run_distributed_sa_srrw(obj, LES, steps=800, checkpoint_dir=tmp_path, checkpoint_every=100,
                                      resume=True, partitions=3, replicate=False, **kw)
    assert [t.n for t in first.tokens] == [350, 350]
    _assert_same(resumed, run_sa_srrw(obj, LES, steps=800, **kw))
    # the measures stayed sharded with the agents (a crossing carried the shared entries only) and each
    # checkpoint still holds the whole measure, gathered from the actors: the resume is bit for bit
    agents = LES.number_of_nodes()
    assert first.stats["shared_entries"] < agents and resumed.stats["shared_entries"] < agents
    assert first.stats["handoffs"] > 0 and resumed.stats["handoffs"] > 0
    with pytest.raises(ConfigError, match=r"different settings \(tokens"):
        run_distributed_sa_srrw(obj, LES, steps=900, checkpoint_dir=tmp_path, resume=True, alpha=10.0, seed=2,
                                tokens=3, record_path=True, replicate=False)
    with pytest.raises(ConfigError, match="different settings"):
        run_distributed_sa_srrw(obj, LES, steps=900, checkpoint_dir=tmp_path, resume=True, alpha=1.0, seed=2,
                                tokens=2, record_path=True)


def test_divergence_inside_an_actor_reaches_the_driver(ray_local, tmp_path):
    obj = _objective(lam=0.0)
    with pytest.raises(DivergenceError, match="diverged at step"):
        run_distributed_sa_srrw(obj, LES, steps=5000, lr=1e9, max_norm=1e6, timeout=120)


def _stage_dir(runs, stage):
    import json

    record = json.loads(max((runs / "runs").glob("*/run.json"), key=lambda p: p.stat().st_mtime).read_text())
    return record["stages"][stage]


def test_pipeline_end_to_end_matches_reference(ray_local, tmp_path):
    from pathlib import Path

    import pyarrow.parquet as pq

    from shardwalk.core.srrw.agents import agent_blocks, build_graph
    from shardwalk.core.srrw.objectives import build_objective
    from shardwalk.core.storage.labelled import read_labelled
    from shardwalk.pipelines.cli import main

    runs = tmp_path / "runs"
    sets = ["steps=1200", "checkpoint_every=500", "record_every=400", "alpha=5.0", "tokens=2"]
    assert main(["run", "srrw", "--runs-dir", str(runs), *[f"--set={s}" for s in sets]]) == 0
    out = {s: Path(_stage_dir(runs, s)["output"]) for s in ("standardize", "agents", "walk", "evaluate")}
    curves = pq.read_table(out["evaluate"] / "curves.parquet").to_pandas()
    assert set(curves.columns) >= {"token", "step", "loss", "accuracy", "test_accuracy", "sq_error"}
    # the seeded held-out split (test_fraction 0.2) is placed on no agent and scores the walking model
    from shardwalk.core.data.builtin import test_mask

    placed = pq.read_table(out["agents"] / "assignment.parquet").column("id").to_numpy()
    held = test_mask(np.arange(569), 0.2, 0)
    assert not np.isin(placed, np.flatnonzero(held)).any() and len(placed) == int((~held).sum())
    assert curves.test_accuracy.between(0, 1).all() and curves.test_accuracy.iloc[-1] > 0.8
    metrics = _stage_dir(runs, "evaluate")["metrics"]
    assert metrics["test_rows"] == int(held.sum()) and 0.8 < metrics["test_accuracy"] <= 1
    assert sorted(curves.step.unique()) == [400, 800, 1200] and np.isfinite(curves.sq_error).all()
    walk = _stage_dir(runs, "walk")["metrics"]  # the throughput figures and the spread across tokens
    assert walk["hops_per_actor_cpu_second"] > 0 and walk["theta_spread_across_tokens"] > 0
    assert {"bytes_per_crossing", "cut_fraction", "handoffs_per_1000_hops", "halo"} <= set(walk)
    # the pipeline's walk is the reference walk on the same (standardised: the default) data and placement
    ids, x, y = read_labelled(out["standardize"], validated=True)
    x, y = x[np.argsort(ids)], y[np.argsort(ids)]
    g = build_graph(pq.read_table(out["agents"] / "edges.parquet"))
    blocks = agent_blocks(pq.read_table(out["agents"] / "assignment.parquet"), np.arange(len(y)), x, y, g)
    ref = run_sa_srrw(build_objective("logistic", blocks, lam=0.1), g, steps=1200, alpha=5.0, lr=5.0, tokens=2)
    got = np.asarray(pq.read_table(out["walk"] / "tokens.parquet").column("theta").to_pylist())
    np.testing.assert_allclose(got, ref.thetas, rtol=0, atol=1e-12)


def test_pipeline_divergence_commits_no_walk_output(ray_local, tmp_path, capsys):
    from shardwalk.pipelines.cli import main

    runs = tmp_path / "runs"
    code = main(["run", "srrw", "--runs-dir", str(runs), "--set", "steps=3000", "--set", "lr=1e12",
                 "--set", "model.lam=0.0"])
    assert code != 0
    walk_stage = _stage_dir(runs, "walk")
    assert walk_stage["status"] == "failed" and "diverged" in (walk_stage.get("error") or "")
    assert not list((runs / "cache").glob("walk-*")) and not list((runs / "cache").glob("evaluate-*"))


def test_pipeline_rejects_bad_config(tmp_path, capsys):
    from shardwalk.pipelines.cli import main

    for bad in ("alpha=-1.0", "a=0.5", "b=1.5", "graph.spread=random"):
        assert main(["run", "srrw", "--runs-dir", str(tmp_path), "--set", bad]) == 2
        assert bad.split("=")[0].split(".")[-1] in capsys.readouterr().err


@pytest.mark.multinode
def test_distributed_matches_reference_on_a_multinode_cluster(ray_cluster, tmp_path):
    obj = _objective()
    kw = dict(steps=800, alpha=10.0, seed=3, tokens=2, record_path=True)
    dist = run_distributed_sa_srrw(obj, LES, partitions=2, replicate=False, checkpoint_dir=tmp_path,
                                   checkpoint_every=300, **kw)
    _assert_same(dist, run_sa_srrw(obj, LES, **kw))


@pytest.mark.parametrize("case", ["disconnected", "unknown_id", "no_data"])
def test_pipeline_bad_graph_or_placement_exits_2(ray_local, tmp_path, capsys, case):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from shardwalk.pipelines.cli import main

    edges = [(0, 1), (1, 2), (2, 0), (3, 4)] if case == "disconnected" else [(0, 1), (1, 2), (2, 3), (3, 0)]
    pq.write_table(pa.table({"src": [e[0] for e in edges], "dst": [e[1] for e in edges]}), tmp_path / "e.parquet")
    nodes, ids = list(range(5)), [0, 1, 2, 3, 4]
    if case == "unknown_id":
        nodes, ids = [0, 1, 2, 3], [0, 1, 2, 10_000]
    if case == "no_data":
        nodes, ids = [0, 1, 2], [0, 1, 2]
    pq.write_table(pa.table({"node": nodes, "id": ids}), tmp_path / "a.parquet")
    runs = tmp_path / "runs"
    code = main(["run", "srrw", "--runs-dir", str(runs), "--set", "graph.name=file",
                 "--set", f"graph.edges={tmp_path / 'e.parquet'}", "--set", f"graph.assignment={tmp_path / 'a.parquet'}"])
    err = capsys.readouterr().err
    assert code == 2
    needle = {"disconnected": "disconnected (2 components", "unknown_id": "data id 10000",
              "no_data": "have no data, e.g. [3]"}[case]
    assert needle in err
    assert not list((runs / "cache").glob("agents-*"))
