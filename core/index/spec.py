"""The index job's settings as frozen dataclasses, built and validated once (docs/design.md "Validation").

`IndexSpec.from_config` is what `pipelines/index.py`'s `validate` runs (and the coreset and demo pipelines
on their index sections); `ShardedIndex.build(...)` builds a `BuildSpec` from its keywords. Each spec checks
itself when it is made, so a spec in hand is a valid one: the layers below (workers/index_build.py,
workers/sharded_index.py, workers/query_stream.py) take it and never check it again. A stage rebuilds its
part from the plain values its cache key holds (`BuildSpec(**params)`), once, where the stage starts.
Every default of the index job is a field default here (hnswlib's from core/index/hnsw.py's DEFAULT_*): the
pipeline's DEFAULTS and the API keywords read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from shardwalk.core import validate
from shardwalk.core.errors import ConfigError
from shardwalk.core.index import hnsw
from shardwalk.core.index.graph_settings import GraphSettings


@dataclass(frozen=True)
class BuildSpec:
    """How an index is built: its layout over actors and the hnswlib parameters of every shard."""

    shards: int = 0  # 0 = sized to the cluster (core/plan/sizing.py): one shard per node with CPUs, more if memory asks
    replicas: int = 1
    partition: str = "hash"
    space: str = hnsw.DEFAULT_SPACE
    M: int = hnsw.DEFAULT_M
    ef_construction: int = hnsw.DEFAULT_EF_CONSTRUCTION
    random_seed: int = hnsw.DEFAULT_RANDOM_SEED
    memory_fraction: float = 0.5  # share of a node's memory its shards may take (sizing and the fit check)

    def __post_init__(self) -> None:
        validate.shards(self.shards, auto=True)
        hnsw.validate_layout(shards=self.shards or 1, replicas=self.replicas, partition=self.partition)
        validate.actor_group(f"shards × replicas = {self.shards} × {self.replicas}", self.shards * self.replicas)
        fraction = self.memory_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
            raise ConfigError(f"memory_fraction must be in (0, 1], got {fraction!r}")
        hnsw.validate_params(dim=1, space=self.space, M=self.M, ef_construction=self.ef_construction,
                             random_seed=self.random_seed)

    def params(self, dim: int) -> hnsw.HnswParams:
        """Every shard's hnswlib parameters once the data gave the dimension (the rest was checked here)."""
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"dim must be an integer >= 1, got {dim!r}")
        return hnsw.HnswParams(dim, self.space, int(self.M), int(self.ef_construction), int(self.random_seed))

    def as_params(self) -> dict[str, Any]:
        """The plain values a build stage's output depends on (its cache key)."""
        return asdict(self)


@dataclass(frozen=True)
class SearchSpec:
    """How an index is searched: neighbours per query, the search breadth, shards probed (None = all)."""

    k: int = 10
    ef: int = 64
    nprobe: int | None = None  # k-means partition: shards probed per query

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", validate.integer("k", self.k))
        object.__setattr__(self, "ef", validate.integer("ef", self.ef))
        if self.nprobe is not None:
            object.__setattr__(self, "nprobe", validate.integer("nprobe", self.nprobe))

    def probes(self, live: int, shards: int) -> int:
        """The shards each query asks on an index of `live` vectors in `shards` shards (k and nprobe must fit it)."""
        return hnsw.validate_search(self.k, self.ef, live, self.nprobe, shards)[2]


@dataclass(frozen=True)
class IndexSpec:
    """A validated index config: how to build, how to search, the all-points graph and the recall check."""

    build: BuildSpec
    search: SearchSpec
    hnsw: bool  # false: no HNSW index, the kNN graph only
    graph: GraphSettings
    recall_sample: int
    seed: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> IndexSpec:
        """Check every value and the rules between them; ConfigError naming the key."""
        build = BuildSpec(**{key: config[key] for key in BUILD_KEYS})
        nprobe = config["nprobe"]
        validate.integer("recall_sample", config["recall_sample"])
        validate.integer("seed", config.get("seed", 0), 0)
        graph = GraphSettings.from_config(config["knn_graph"])
        with_hnsw = config.get("hnsw", True)
        if not isinstance(with_hnsw, bool):
            raise ConfigError(f"hnsw must be true or false, got {with_hnsw!r}")
        if not with_hnsw and (not graph.enabled or graph.method == "hnsw"):
            raise ConfigError("hnsw=false builds only the kNN graph: knn_graph must be on with a method other than hnsw")
        if nprobe and not build.shards:
            raise ConfigError("nprobe must be 0 (all shards) unless shards is set explicitly (shards=0 sizes the index to the cluster)")
        if isinstance(nprobe, bool) or not isinstance(nprobe, int) or nprobe < 0 or (build.shards and nprobe > build.shards):
            raise ConfigError(f"nprobe must be in [0, shards={config['shards']}] (0 = all), got {nprobe}")
        search = SearchSpec(config["k"], config["ef"], nprobe or None)
        return cls(build, search, with_hnsw, graph, int(config["recall_sample"]), int(config.get("seed", 0)))


BUILD_KEYS = tuple(BuildSpec.__dataclass_fields__)
DEFAULT_BUILD = BuildSpec()
DEFAULT_SEARCH = SearchSpec()
