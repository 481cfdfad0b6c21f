"""How the all-points kNN graph is built (the pipelines' `knn_graph` table), how many partitions it takes and
how many rows k-means trains on.

Pure settings, apart from the kernels in shardwalk.core.index.knn_partition, so that reading a config does
not import numba.
"""

from __future__ import annotations

from dataclasses import dataclass

from shardwalk.core.errors import ConfigError
from shardwalk.core.index import hnsw

METHODS = ("auto", "hnsw", "partition", "exact")
REFINE_MIN_RATE = 0.02  # a refinement round that would change fewer entries than this share is not run
SAMPLE_ROWS_PER_CELL = 32  # k-means trains on this many sampled rows per cell (at least SAMPLE_MIN_ROWS)
SAMPLE_MIN_ROWS = 10_000
BLOCK = 4096  # rows of a partition per product with the whole partition (block × size floats); bench: 4096 8.3 s, 1024 9.7 s, 256 20.9 s at 100k


@dataclass(frozen=True)
class GraphSettings:
    """How the all-points graph is built (the pipelines' `knn_graph` table; docs/design.md lists each)."""

    enabled: bool = True
    method: str = "auto"  # auto | hnsw | partition | exact
    partition_rows: int = 1536  # target rows per partition (P = ceil(overlap · n / partition_rows))
    overlap: int = 2  # partitions each point is assigned to (its nearest centroids)
    refine_rounds: int = 1  # at most this many neighbours-of-neighbours rounds after the merge (0 = none)
    refine_min_rate: float = REFINE_MIN_RATE  # ... each run only while it would change this share of entries
    block: int = BLOCK
    seed: int = 0

    @classmethod
    def from_config(cls, value: object, key: str = "knn_graph") -> GraphSettings:
        """A `knn_graph` value: a bool (on/off with defaults) or a table of the fields above."""
        if isinstance(value, bool):
            return cls(enabled=value)
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be true, false or a table, got {value!r}")
        unknown = set(value) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"{key}: unknown keys {sorted(unknown)} (known: {sorted(cls.__dataclass_fields__)})")
        settings = cls(**value)
        settings.check(key)
        return settings

    def check(self, key: str = "knn_graph") -> None:
        """ConfigError naming the first bad field."""
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"{key}.enabled must be true or false, got {self.enabled!r}")
        if self.method not in METHODS:
            raise ConfigError(f"{key}.method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name, minimum in (("partition_rows", 16), ("overlap", 1), ("refine_rounds", 0), ("block", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"{key}.{name} must be an integer >= {minimum}, got {value!r}")
        rate = self.refine_min_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise ConfigError(f"{key}.refine_min_rate must be a number in [0, 1], got {rate!r}")

    def as_params(self) -> dict[str, object]:
        """The settings a graph stage's output depends on (its cache key)."""
        return {"method": self.method, "partition_rows": self.partition_rows, "overlap": self.overlap,
                "refine_rounds": self.refine_rounds, "refine_min_rate": self.refine_min_rate, "block": self.block,
                "seed": self.seed}


def check_k(k: int, rows: int, key: str = "k") -> None:
    """k must leave at least one other point: 1 <= k < rows."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"{key} must be an integer >= 1, got {k!r}")
    if k >= rows:
        raise ConfigError(f"{key}={k} must be below the number of rows ({rows}): a point has only {rows - 1} others")


def partitions_for(rows: int, settings: GraphSettings) -> int:
    """P: enough partitions that each holds ~partition_rows points (one when everything fits in one)."""
    if settings.method == "exact":
        return 1
    return max(1, min(rows // max(1, settings.partition_rows // settings.overlap), hnsw.ceil_div(settings.overlap * rows, settings.partition_rows)))


def sample_rows(rows: int, parts: int) -> int:
    """Rows k-means trains on: SAMPLE_ROWS_PER_CELL per partition, at least SAMPLE_MIN_ROWS (all of a small
    table). Training costs rows x cells: at the 1M-row shape (1,303 cells) 64 per cell took 15 s, 32 took 7 s."""
    return min(rows, max(SAMPLE_ROWS_PER_CELL * parts, SAMPLE_MIN_ROWS))
