"""ScoreShard / SelectShard on the local Ray: data-parallel proxy = single-actor proxy, exact selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from shardwalk.core.coresets import single_process as coreset
from shardwalk.core.data.schema import from_numpy
from shardwalk.core.errors import ConfigError, DataError

pytestmark = pytest.mark.ray

SOURCE = "builtin:synthetic?n=600&d=12&classes=4"
PROXY = {"models": 1, "epochs": 3, "batch_size": 64, "hidden": 16}


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory, ray_local_module: None) -> dict:
    from shardwalk.workers.scorer import score_dataset

    root = tmp_path_factory.mktemp("scores")
    one = score_dataset(SOURCE, 1, root / "one", return_params=True, num_cpus=0.5, **PROXY)
    two = score_dataset(SOURCE, 2, root / "two", return_params=True, num_cpus=0.5, **PROXY)
    return {"root": root, "one": one, "two": two}


@pytest.fixture(scope="module")
def ray_local_module(_ray_session: None) -> None:
    import ray

    from shardwalk.pipelines.runtime import connect

    if not ray.is_initialized():
        connect(num_cpus=2)


def test_gloo_allreduce_trains_the_same_model_as_one_actor(scored):
    one, two = scored["one"], scored["two"]
    assert one["rows"] == two["rows"] and 400 < one["rows"] < 560  # about 20 % held out for testing
    np.testing.assert_allclose(one["params"], two["params"], atol=1e-4)
    a = pq.read_table(scored["root"] / "one").sort_by("id")
    b = pq.read_table(scored["root"] / "two").sort_by("id")
    assert a.column("id").to_pylist() == b.column("id").to_pylist()
    for name in ("el2n", "aum", "entropy"):
        np.testing.assert_allclose(a.column(name).to_numpy(), b.column(name).to_numpy(), atol=1e-3, err_msg=name)
    assert len(list((scored["root"] / "two").glob("part-*.parquet"))) == 2  # each actor wrote its own part


def test_selection_identical_for_1_2_4_shards_and_equals_single_process(scored, tmp_path: Path):
    from shardwalk.core.coresets.selection_names import read_selection
    from shardwalk.workers.selector import select_distributed

    selections = [
        {"method": "ccs", "keep": 0.1, "score": "aum"},
        {"method": "ccs", "keep": 0.3, "score": "el2n", "class_balanced": True},
        {"method": "topk", "keep": 0.2, "score": "el2n"},
        {"method": "random", "keep": 0.5},
    ]
    scores_dir = scored["root"] / "one"
    results = {s: select_distributed(scores_dir, s, selections, tmp_path / f"s{s}", seed=7) for s in (1, 2, 4)}
    table = pq.read_table(scores_dir)
    reference = {
        "ccs-aum-keep0.1": coreset.ccs_select(table, 0.1, score="aum", seed=7),
        "ccs-el2n-cb-keep0.3": coreset.ccs_select(table, 0.3, score="el2n", class_balanced=True, seed=7),
        "topk-el2n-keep0.2": coreset.topk_select(table, 0.2, score="el2n", seed=7),
        "random-keep0.5": coreset.random_select(table, 0.5, seed=7),
    }
    assert set(results[1]) == set(reference)
    for name, ref in reference.items():
        want = ref.column("id").to_numpy()
        for s in (1, 2, 4):
            got = read_selection(tmp_path / f"s{s}" / name)
            np.testing.assert_array_equal(got, want, err_msg=f"{name} with {s} shards")
            assert results[s][name]["rows"] == len(want)


def test_one_set_of_select_actors_serves_every_call_as_fresh_ones_would(scored, tmp_path: Path):
    """A select stage reuses its actors for β tuning's candidates (validation rows held out, other seeds) and then
    its selections: nothing of one call may leak into the next."""
    from shardwalk.core.coresets.evaluation import Split
    from shardwalk.core.coresets.selection import VALIDATION
    from shardwalk.core.coresets.selection_names import read_selection
    from shardwalk.workers.selector import SelectShards, select_distributed, selection_ids

    scores_dir = scored["root"] / "one"
    holdout = Split(0.2, 0, VALIDATION)
    candidates = [{"method": "ccs", "keep": 0.3, "score": "el2n", "beta": 0.1}, {"method": "random", "keep": 0.3}]
    final = [{"method": "ccs", "keep": 0.3, "score": "el2n", "class_balanced": True}]
    with SelectShards(scores_dir, 2) as pool:
        tuned = pool.ids(candidates, seed=3, holdout=holdout)
        written = pool.select(final, tmp_path / "reused", seed=7)
    fresh = select_distributed(scores_dir, 2, final, tmp_path / "fresh", seed=7)
    assert written == fresh
    np.testing.assert_array_equal(read_selection(tmp_path / "reused" / "ccs-el2n-cb-keep0.3"),
                                  read_selection(tmp_path / "fresh" / "ccs-el2n-cb-keep0.3"))
    for got, want in zip(tuned, selection_ids(scores_dir, 2, candidates, seed=3, holdout=holdout), strict=True):
        np.testing.assert_array_equal(got, want)
    ids = pq.read_table(scores_dir).column("id").to_numpy()
    held = ids[holdout.validation_rows(ids)]
    assert len(held) > 0 and not np.isin(tuned[0], held).any()  # tuning's candidates leave the validation rows out
    assert np.isin(read_selection(tmp_path / "reused" / "ccs-el2n-cb-keep0.3"), held).any()  # the selection does not


def test_bad_selection_requests(scored, tmp_path: Path):
    from shardwalk.workers.selector import select_distributed

    scores_dir = scored["root"] / "one"
    with pytest.raises(ConfigError, match="method"):
        select_distributed(scores_dir, 1, [{"method": "kcenter", "keep": 0.1}], tmp_path)
    with pytest.raises(ConfigError, match="keep"):
        select_distributed(scores_dir, 1, [{"method": "random", "keep": 1.0}], tmp_path)
    with pytest.raises(ConfigError, match="unknown score"):
        select_distributed(scores_dir, 1, [{"method": "ccs", "keep": 0.1, "score": "grand"}], tmp_path)


def test_scoring_needs_labels_and_two_classes(ray_local_module, tmp_path: Path):
    from shardwalk.workers.scorer import score_dataset

    x = np.random.default_rng(0).normal(size=(50, 4))
    with pytest.raises(DataError, match="^the source table: .*label"):  # from the first row: no actor started
        score_dataset(from_numpy(x), 1, tmp_path / "a", num_cpus=0.5, **PROXY)
    single = from_numpy(x, labels=np.zeros(50, dtype=np.int64))
    with pytest.raises(DataError, match="at least 2 classes"):
        score_dataset(single, 1, tmp_path / "b", num_cpus=0.5, **PROXY)
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


@pytest.mark.slow
def test_coreset_pipeline_end_to_end(ray_local_module, tmp_path: Path, capsys):
    import json

    from shardwalk.pipelines.cli import main

    runs = str(tmp_path / "runs")
    args = ["run", "coreset", "--runs-dir", runs, "--set", f"source={SOURCE}", "--set", "select.keep=[0.5, 0.1]",
            "--set", 'select.methods=["ccs-el2n-cb", "topk-aum"]',
            "--set", "proxy.models=1", "--set", "proxy.epochs=3", "--set", "proxy.hidden=16",
            "--set", "evaluate.steps=50", "--set", "evaluate.hidden=16",
            "--set", "select.beta=0.1"]  # β tuning has its own run (test_coreset_trust.py)
    assert main(args) == 0
    record = json.loads(next((tmp_path / "runs" / "runs").glob("*/run.json")).read_text())
    select_dir = Path(record["stages"]["select"]["output"])
    scores_rows = record["stages"]["score"]["rows"]
    for name in ("ccs-el2n-cb-keep0.5", "ccs-el2n-cb-keep0.1", "topk-aum-keep0.1", "topk-aum-keep0.5"):
        table = pq.read_table(select_dir / name)
        keep = float(name.rsplit("keep", 1)[1])
        assert table.num_rows == int(keep * scores_rows + 1e-9) and table.schema.names == ["id", "weight"]
    accuracy = json.loads((Path(record["stages"]["evaluate"]["output"]) / "accuracy.json").read_text())
    assert set(accuracy) == {"full", *(f"{m}-keep{r}" for m in ("ccs-el2n-cb", "topk-aum") for r in (0.5, 0.1))}
    assert all(0.0 <= a <= 1.0 for a in accuracy.values())
    capsys.readouterr()
    assert main(["run", "coreset", "--runs-dir", runs, "--set", 'select.methods=["ccs-nope"]']) == 2
    assert "ccs-nope" in capsys.readouterr().err


def test_independent_proxies_give_identical_scores_for_1_2_3_actors(ray_local_module, tmp_path: Path):
    """Models mode: each proxy is the same model whichever actor trains it, and parts add in model order."""
    from shardwalk.workers.scorer import score_dataset

    params = {**PROXY, "models": 3, "epochs": 1}  # bit-identity across layouts does not depend on epochs
    runs = {k: score_dataset(SOURCE, k, tmp_path / f"m{k}", mode="models", num_cpus=0.5, **params) for k in (1, 2, 3)}
    assert [runs[k]["actors"] for k in (1, 2, 3)] == [1, 2, 3] and {r["mode"] for r in runs.values()} == {"models"}
    tables = {k: pq.read_table(tmp_path / f"m{k}").sort_by("id") for k in (1, 2, 3)}
    assert len(list((tmp_path / "m3").glob("part-*.parquet"))) == 3  # each actor wrote one slice
    for k in (2, 3):
        assert tables[k].equals(tables[1]), f"{k} actors"  # bit for bit
    # one models-layout actor trains every proxy on all rows, as a one-shard data-parallel run does (no
    # all-reduce): the same bits; data-parallel with 2+ actors matches to float tolerance (the gloo test above)
    assert runs[1]["mode"] == "models" and runs[1]["actors"] == 1


def test_auto_layout_and_cuda_requests(ray_local_module, tmp_path: Path, monkeypatch):
    from shardwalk.workers import scorer

    params = {**PROXY, "models": 2, "epochs": 1}
    small = scorer.score_dataset(SOURCE, 2, tmp_path / "a", num_cpus=0.5, **params)
    assert small["mode"] == "models" and small["device"] == "cpu"
    with pytest.raises(ConfigError, match="device = 'cuda' but the cluster has no GPU"):
        scorer.score_dataset(SOURCE, 1, tmp_path / "c", device="cuda", **params)
    monkeypatch.setattr(scorer, "cluster_gpus", lambda: 2.0)  # a GPU cluster: the actors ask for GPUs
    assert scorer.actor_resources(2, 1, scorer.proxy.resolve_device("auto", scorer.cluster_gpus()))["num_gpus"] == 1.0


def test_cli_cuda_without_a_gpu_exits_2_naming_the_setting(ray_local_module, tmp_path: Path, capsys):
    from shardwalk.pipelines.cli import main

    args = ["run", "coreset", "--runs-dir", str(tmp_path / "runs"), "--set", 'device="cuda"',
            "--set", "source=builtin:synthetic?n=200&d=4&classes=2", "--set", "evaluate.enabled=false"]
    assert main(args) == 2
    assert "device = 'cuda' but the cluster has no GPU" in capsys.readouterr().err
    assert not list((tmp_path / "runs" / "cache").glob("score-*"))
