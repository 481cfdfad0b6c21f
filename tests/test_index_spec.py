"""The index job's settings are built and checked once (core/index/spec.py): the pipeline's `validate` and the
public `ShardedIndex` keywords build the spec; the layers below take it and run no validator on it."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from shardwalk.core import validate
from shardwalk.core.errors import ConfigError
from shardwalk.core.index import hnsw
from shardwalk.core.index.index_meta import IndexMeta
from shardwalk.core.index.spec import (
    BUILD_KEYS,
    DEFAULT_BUILD,
    DEFAULT_SEARCH,
    BuildSpec,
    IndexSpec,
    SearchSpec,
)
from shardwalk.core.plan import cost_model, sizing
from shardwalk.pipelines import index as index_pipeline
from shardwalk.workers import index_build, index_search, query_stream
from shardwalk.workers.sharded_index import ShardedIndex

VALIDATORS = ((hnsw, "validate_params"), (hnsw, "validate_layout"), (hnsw, "validate_search"),
              (hnsw, "validate_queries"), (validate, "integer"), (validate, "shards"))


@pytest.fixture
def calls(monkeypatch) -> Counter:
    """How often each validator ran (they still run: the count is what is checked)."""
    seen: Counter = Counter()
    for module, name in VALIDATORS:
        def counted(*args: Any, _fn=getattr(module, name), _name=name, **kwargs: Any) -> Any:
            seen[_name] += 1
            return _fn(*args, **kwargs)
        monkeypatch.setattr(module, name, counted)
    return seen


def test_the_pipeline_defaults_and_the_api_keywords_read_the_spec_defaults() -> None:
    spec = IndexSpec.from_config(index_pipeline.DEFAULTS)
    assert spec.build == DEFAULT_BUILD and spec.search == DEFAULT_SEARCH
    assert {k: index_pipeline.DEFAULTS[k] for k in BUILD_KEYS} == asdict(DEFAULT_BUILD)
    assert DEFAULT_BUILD.ef_construction == hnsw.DEFAULT_EF_CONSTRUCTION == hnsw.HnswParams(dim=1).ef_construction
    import inspect

    build = inspect.signature(ShardedIndex.build).parameters
    assert {k: build[k].default for k in ("M", "ef_construction", "space", "partition", "replicas", "random_seed",
                                          "memory_fraction")} == {k: getattr(DEFAULT_BUILD, k) for k in
                                                                  ("M", "ef_construction", "space", "partition",
                                                                   "replicas", "random_seed", "memory_fraction")}
    search = inspect.signature(ShardedIndex.search).parameters
    assert (search["k"].default, search["ef"].default) == (DEFAULT_SEARCH.k, DEFAULT_SEARCH.ef)
    job = cost_model.IndexJob(1, 1)
    assert (job.M, job.ef_construction, job.ef, job.k, job.memory_fraction) == (
        DEFAULT_BUILD.M, DEFAULT_BUILD.ef_construction, DEFAULT_SEARCH.ef, DEFAULT_SEARCH.k, sizing.MEMORY_FRACTION)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.build.M = 3  # type: ignore[misc]


@pytest.mark.parametrize(("key", "value", "message"), [
    ("M", 1, "M must be an integer >= 2, got 1"),
    ("ef_construction", 0, "ef_construction must be an integer >= 1, got 0"),
    ("space", "hamming", "unknown space 'hamming'; choose from ['l2', 'ip', 'cosine']"),
    ("partition", "range", "unknown partition 'range'; choose from ['hash', 'kmeans']"),
    ("replicas", 0, "replicas must be an integer >= 1, got 0"),
    ("random_seed", -1, "random_seed must be a non-negative integer, got -1"),
    ("memory_fraction", 1.5, "memory_fraction must be in (0, 1], got 1.5"),
])
def test_a_bad_build_value_is_refused_at_each_boundary_with_one_message(key: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as from_config:
        index_pipeline.validate({**index_pipeline.DEFAULTS, key: value})
    with pytest.raises(ConfigError) as from_api:  # before Ray starts: the keywords are checked first
        ShardedIndex.build(np.zeros((4, 2), np.float32), **{key: value})
    assert str(from_config.value) == str(from_api.value) == message


def test_the_pipeline_checks_its_config_in_one_spec(calls: Counter) -> None:
    index_pipeline.validate(dict(index_pipeline.DEFAULTS))
    assert calls["validate_params"] == calls["validate_layout"] == 1
    with pytest.raises(ConfigError, match=r"^nprobe must be 0 \(all shards\) unless shards is set explicitly"):
        IndexSpec.from_config({**index_pipeline.DEFAULTS, "nprobe": 2})
    with pytest.raises(ConfigError, match=r"^k must be an integer >= 1, got 0$"):
        IndexSpec.from_config({**index_pipeline.DEFAULTS, "k": 0})
    assert IndexSpec.from_config({**index_pipeline.DEFAULTS, "shards": 4, "nprobe": 2}).search.nprobe == 2


class _Method:
    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> Any:
        return self.fn(*args)

    def options(self, **_: Any) -> _Method:
        return self


class _FakeShard:
    """A primary that answers the build protocol in-process (workers/hnsw_actor.py's calls, no Ray)."""

    def __init__(self, shards: int, rows: int, dim: int) -> None:
        self.shards, self.rows, self.dim, self.params = shards, rows, dim, None
        self.read_part = _Method(lambda spec, sample, _, where, dim, trusted: {
            "dim": self.dim, "rows": self.rows, "sample": None, "start": 0})
        self.assign = _Method(lambda shards, router, *_: (np.full(shards, self.rows // shards), [[]] * shards))
        self.route_chunk = _Method(lambda chunk, chunks, *_: [None] * self.shards)
        self.add_pieces = _Method(lambda *pieces: None)
        self.begin_build = _Method(self._begin)
        self.finish_build = _Method(lambda where: {"live": self.rows // self.shards})

    def _begin(self, capacity: int, params: dict[str, Any]) -> None:
        self.params = params


def test_the_build_layer_takes_the_spec_without_checking_it_again(monkeypatch, calls: Counter) -> None:
    monkeypatch.setattr(index_build.raykit, "wait_all", lambda refs, what, timeout=None: list(refs))
    monkeypatch.setattr(index_build, "wait_counted", lambda refs, *_, **__: list(refs))
    spec = BuildSpec(shards=2, M=8, ef_construction=40, random_seed=7)
    calls.clear()
    prim = [_FakeShard(2, 10, 3), _FakeShard(2, 10, 3)]
    parts = (SimpleNamespace(num_rows=10), SimpleNamespace(num_rows=10))
    inp = index_build.BuildInput(parts, "input", True, spec, 100)
    meta, stats = index_build.build_shards(prim, IndexMeta(2, 1, "hash", space="l2"), inp)
    assert sum(calls.values()) == 0, calls
    assert prim[0].params == asdict(hnsw.HnswParams(3, "l2", 8, 40, 7)) == asdict(meta.params)
    assert [s["live"] for s in stats] == [5, 5]


class _Ref:
    """What the fake `ray.put` returns: the value itself, in a box (an array has no truth value)."""

    def __init__(self, value: np.ndarray) -> None:
        self.value = value


def _shard_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(40, 3)).astype(np.float32), np.arange(40, dtype=np.int64)


def test_a_streamed_block_is_answered_without_checking_the_spec_again(monkeypatch, calls: Counter) -> None:
    x, ids = _shard_data()
    owner = hnsw.hash_shard(ids, 2)

    def answer(self: Any, method: str, replica_calls: list[Any], allow_partial: bool) -> list[Any]:
        out = []
        for c in replica_calls:
            q, k = c.args[0].value, c.args[1]
            out.append(hnsw.exact_search(q, x[owner == c.shard], ids[owner == c.shard], k, "l2"))
        return out

    monkeypatch.setattr(index_search.ray, "put", _Ref)
    monkeypatch.setattr(ShardedIndex, "_call_replicas", answer)
    meta = IndexMeta(2, 1, "hash", space="l2", dim=3, shard_sizes=(20, 20), live=40)
    settings = query_stream.QuerySettings(SearchSpec(k=3, ef=16))
    calls.clear()
    actors = [[None], [None]]
    table = query_stream.search_blocks({"id": ids[:5], "vector": x[:5]}, meta, actors, settings, "queries", 2)
    table = query_stream.search_blocks({"id": ids[5:9], "vector": x[5:9]}, meta, actors, settings, "queries", 2)
    assert calls["validate_search"] == calls["integer"] == calls["validate_queries"] == 0, calls
    expect = hnsw.exact_search(x[5:9], x, ids, 3, "l2")[0]
    assert np.array_equal(np.stack(table.column("neighbors").to_numpy(zero_copy_only=False)), expect)


def test_a_search_checks_its_keywords_once_at_the_boundary(monkeypatch, calls: Counter) -> None:
    x, ids = _shard_data()
    monkeypatch.setattr(index_search.ray, "put", _Ref)
    monkeypatch.setattr(ShardedIndex, "_call_replicas", lambda self, method, cs, partial: [
        hnsw.exact_search(c.args[0].value, x, ids, c.args[1], "l2") for c in cs])
    meta = IndexMeta(1, 1, "hash", space="l2", dim=3, shard_sizes=(40,), live=40)
    index = query_stream._handle_class()(meta, [[None]], Path("."), [], False)
    calls.clear()
    found = index.search(x[:4], k=2, ef=8)
    assert calls["validate_search"] == 1 and found.ids[:, 0].tolist() == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match=r"^k=41 is larger than the index \(40 live vectors\)$"):
        index.search(x[:4], k=41)
    with pytest.raises(ConfigError, match=r"^ef must be an integer >= 1, got 0$"):
        index.search(x[:4], ef=0)
