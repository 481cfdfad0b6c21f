"""Validation once, at the boundary: one validator per parameter, the same message from every pipeline;
settings objects; pipelines composed from the capability pipelines' own stage functions."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from shardwalk.core import validate
from shardwalk.core.coresets.evaluation import Split, evaluate_selection
from shardwalk.core.coresets.proxy import ProxySpec, TrainSpec
from shardwalk.core.coresets.selection_names import method_selection_name, parse_method, selection_name
from shardwalk.core.coresets.spec import CoresetSpec
from shardwalk.core.data.schema import from_numpy
from shardwalk.core.errors import ConfigError
from shardwalk.core.storage.labelled import labelled_arrays, read_labelled
from shardwalk.pipelines import coreset as coreset_pipeline
from shardwalk.pipelines import demo, index
from shardwalk.pipelines import srrw as srrw_pipeline
from shardwalk.pipelines.cli import main
from shardwalk.pipelines.config import load_config


def _error_line(capsys, args: list[str], tmp_path) -> str:
    code = main(["run", *args[:1], "--runs-dir", str(tmp_path / "runs"), *args[1:]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(("demo_key", "index_key", "value", "needle"), [
    ("index.M", "M", "1", "M must be an integer >= 2, got 1"),
    ("index.ef", "ef", "0", "ef must be an integer >= 1, got 0"),
    ("index.k", "k", "0", "k must be an integer >= 1, got 0"),
])
def test_demo_index_section_fails_like_the_index_pipeline(tmp_path, capsys, demo_key, index_key, value, needle) -> None:
    from_demo = _error_line(capsys, ["demo", "--set", f"{demo_key}={value}"], tmp_path)
    from_index = _error_line(capsys, ["index", "--set", f"{index_key}={value}"], tmp_path)
    assert from_demo == from_index and needle in from_demo
    assert not (tmp_path / "runs").exists()


def test_demo_proxy_and_select_sections_fail_like_the_coreset_pipeline(tmp_path, capsys) -> None:
    for key, value in (("proxy.epochs", "0"), ("select.keep", "[1.5]"), ("evaluate.steps", "0")):
        from_demo = _error_line(capsys, ["demo", "--set", f"{key}={value}"], tmp_path)
        from_coreset = _error_line(capsys, ["coreset", "--set", f"{key}={value}"], tmp_path)
        assert from_demo == from_coreset and key in from_demo


def test_one_wording_per_parameter() -> None:
    with pytest.raises(ConfigError, match=r"^steps must be an integer >= 1, got 0$"):
        validate.steps(0)
    with pytest.raises(ConfigError, match=r"^alpha must be a finite number >= 0, got -1$"):
        validate.alpha(-1)
    with pytest.raises(ConfigError, match=r"^shards must be in \[1, 1024\], got 0$"):
        validate.shards(0)
    assert validate.shards(0, auto=True) == 0
    with pytest.raises(ConfigError, match=r"^keep must be a fraction in \(0, 1\), got 1$"):
        validate.keep(1)
    with pytest.raises(ConfigError, match=r"^test_fraction must be a fraction in \[0, 1\), got 1.0$"):
        validate.fraction("test_fraction", 1.0, closed_low=True)
    with pytest.raises(ConfigError, match=r"^srrw must be an integer >= 1, got True$"):
        validate.integer("srrw", True)


def test_specs_are_frozen_and_validated_once_from_the_config() -> None:
    spec = ProxySpec.from_config(coreset_pipeline.DEFAULTS["proxy"])
    assert dataclasses.asdict(spec) == coreset_pipeline.DEFAULTS["proxy"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.models = 3  # type: ignore[misc]
    with pytest.raises(ConfigError, match=r"^proxy.layout must be one of"):
        ProxySpec.from_config({**coreset_pipeline.DEFAULTS["proxy"], "layout": "both"})
    with pytest.raises(ConfigError, match=r"unknown proxy key\(s\) \['epoch'\]"):
        ProxySpec.from_config({"epoch": 3})
    with pytest.raises(ConfigError, match=r"^evaluate.steps must be an integer >= 1"):
        TrainSpec.from_config({"steps": 0})
    bad = copy.deepcopy(coreset_pipeline.DEFAULTS)
    bad["select"]["methods"] = ["ccs-nope"]
    with pytest.raises(ConfigError, match="selection method 'ccs-nope'"):
        CoresetSpec.from_config(bad)


def test_selection_grammar_round_trips() -> None:
    spec = parse_method("topk-el2n-easy-cb")
    assert spec == {"method": "topk", "class_balanced": True, "hardest": False, "score": "el2n"}
    assert selection_name("ccs", 0.1, "aum", True) == "ccs-aum-cb-keep0.1" == method_selection_name("ccs-aum-cb", 0.1)
    assert method_selection_name("random", 0.3) == "random-keep0.3"


def test_demo_stages_are_the_capability_pipelines_stages() -> None:
    config = load_config(demo, None, [])
    p = demo.build(config)
    keys = p.keys()
    coreset = coreset_pipeline.build(demo.coreset_config(config))
    for name in ("ingest", "build", "knn_graph", "density", "score", "select", "evaluate"):
        assert p.stages[name].fn is coreset.stages[name].fn and p.stages[name].params == coreset.stages[name].params
    assert all(keys[n] == coreset.keys()[n] for n in ("build", "knn_graph", "density", "score"))
    walk = srrw_pipeline.build(demo.walk_config(config, 10.0))
    for mine, theirs in (("coreset_agents", "agents"), ("coreset_partition", "partition"),
                         ("walk_coreset_a10", "walk"), ("curves_coreset_a10", "evaluate")):
        assert p.stages[mine].fn is walk.stages[theirs].fn and p.stages[mine].params == walk.stages[theirs].params
    idx = index.build({**index.DEFAULTS, **demo.index_config(config), "source": config["source"]})
    assert p.stages["build"].params == idx.stages["build"].params


def test_labelled_reader_and_in_process_evaluation() -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _evaluate_in_process()
    finally:
        torch.set_num_threads(threads)


def _evaluate_in_process() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 60)
    x = rng.normal(size=(120, 4)).astype(np.float32) + y[:, None] * 3.0
    table = from_numpy(x, np.arange(120) + 10, labels=y)
    ids, xs, ys = read_labelled(table)
    assert ids.tolist() == list(range(10, 130)) and xs.dtype == np.float32 and ys.tolist() == y.tolist()
    assert labelled_arrays(table, binarize=1)[2].tolist() == y.tolist()
    split, train = Split(0.25, 0), TrainSpec(steps=30, batch_size=16, hidden=8)
    full = evaluate_selection(table, None, split, train)
    train_ids = ids[~split.test_rows(ids)]
    half = evaluate_selection(table, train_ids[::2], split, train)
    assert full["train_rows"] == len(train_ids) and half["train_rows"] == len(train_ids[::2])
    assert full["accuracy"] > 0.8
    rs2 = evaluate_selection(table, None, split, train, rs2_keep=0.5)
    assert rs2["train_rows"] == len(train_ids) and 0.0 <= rs2["accuracy"] <= 1.0


def test_each_default_is_written_once() -> None:
    from shardwalk.core.index.spec import DEFAULT_BUILD, DEFAULT_SEARCH

    assert coreset_pipeline.DEFAULTS["proxy"] == dataclasses.asdict(ProxySpec()) and ProxySpec().batch_size == 256
    assert {k: v for k, v in coreset_pipeline.DEFAULTS["evaluate"].items() if k != "enabled"} == \
        dataclasses.asdict(TrainSpec())
    knn = coreset_pipeline.DEFAULTS["knn"]
    assert (knn["M"], knn["ef"], knn["k"]) == (DEFAULT_BUILD.M, DEFAULT_SEARCH.ef, DEFAULT_SEARCH.k)
    assert {k: demo.DEFAULTS["index"][k] for k in demo.INDEX_KEYS} == {k: knn[k] for k in demo.INDEX_KEYS}


def test_one_actor_cap_for_every_group_a_setting_names() -> None:
    from shardwalk.core.index.spec import BuildSpec
    from shardwalk.core.plan import sizing

    cap = validate.MAX_ACTORS
    assert validate.shards(cap) == cap
    with pytest.raises(ConfigError, match=rf"^shards must be in \[1, {cap}\], got {cap + 1}$"):
        validate.shards(cap + 1)
    with pytest.raises(ConfigError, match=rf"^shards × replicas = 600 × 2 asks for 1200 actors in one group; at most {cap}$"):
        BuildSpec(shards=600, replicas=2)
    bad = copy.deepcopy(coreset_pipeline.DEFAULTS)
    bad["actors"] = cap + 1
    with pytest.raises(ConfigError, match=rf"^actors must be in \[1, {cap}\]"):
        CoresetSpec.from_config(bad)
    with pytest.raises(ConfigError, match=rf"^partitions asks for {cap + 1} actors in one group; at most {cap}$"):
        srrw_pipeline.validate({**srrw_pipeline.DEFAULTS, "partitions": cap + 1})
    assert sizing.MAX_ACTORS is cap  # the automatic sizing's search stops at the same cap


def test_the_coreset_names_its_actors_actors(tmp_path, capsys) -> None:
    from shardwalk.core.plan.limits import actors_requested

    config = load_config(coreset_pipeline, None, ["actors=3"])
    assert CoresetSpec.from_config(config).actors == 3 and "shards" not in config
    assert actors_requested(config) == 3  # the cluster's actor bound sees them
    p = coreset_pipeline.build(config)
    assert p.stages["score"].params["actors"] == p.stages["select"].params["actors"] == 3
    assert p.stages["ingest"].params["shards"] == 3  # one ingest part per actor
    err = _error_line(capsys, ["coreset", "--set", "shards=2"], tmp_path)
    assert "unknown config key 'shards'" in err and "actors" in err
    err = _error_line(capsys, ["coreset", "--set", "select.rates=[0.5]"], tmp_path)
    assert "unknown config key 'select.rates'" in err and "keep" in err
