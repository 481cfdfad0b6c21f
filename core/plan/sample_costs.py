"""The data's own per-row costs for `shardwalk plan --sample`: a few tens of thousands of the user's rows
built and graphed in-process, timed on one core, and the growth laws that carry them to the full size.

Constants measured on generated data miss what makes real data hard (text embeddings cost ~2.5× more per
HNSW insert than bench_scale's clusters did), so the plan can measure the user's rows instead. Every
measurement runs on one thread and counts CPU seconds (`time.process_time`), like the calibration's
one-core constants, so the cost model's thread and cluster arithmetic applies unchanged and a busy machine
does not inflate the figures (contention still costs some cache). The laws (docs/design.md, "Sizing and plan"):

- HNSW build: T(n) = α·n + β·n·ln n (each insert searches ~ln n layers' worth of candidates), so the
  mean insert over a build of n rows is α + β·(ln n − 1). The sample is inserted in two halves, which fixes
  α and β; the growth per ln n relative to the sample's mean, g = β / (α + β·(ln n_s − 1)), is kept within
  [1 / (ln n_s − 1) (pure n·ln n, α = 0), MAX_BUILD_GROWTH] (memory no longer fitting a cache makes real
  builds grow faster than ln n; a noisy split must not extrapolate wildly), and the mean insert at n is the
  sample's × (1 + g·ln(n / n_s));
- HNSW query: seconds per query ~ ln n (the index it searches);
- both HNSW laws take the machine's growth per ln n (the calibration's `build_log_growth` / `query_log_growth`,
  full builds of 10k and 50k rows) as a floor on the slope: a sample of ~30k rows fits the caches and cannot
  see an index outgrowing them (text-like 200k × 128: mean insert 1.6× the 30k sample's, slope 0.31 from
  200k-row chunk timings, where the sample's halves fitted 0.16);
- partition graph: each row meets the ~overlap·R rows of its overlap cells (R = rows per cell, fixed by
  `partition_rows`), so local work ~ n·overlap²·R; assigning rows to P = overlap·n/R cells ~ n·P·d and
  k-means on 32·P rows ~ P²·d grow faster but stay small below ~10⁷ rows; merge and refinement ~ n·k²;
- exact graph: every pair, T ~ n²·d.

Pure: no Ray; numpy, numba and hnswlib (the same kernels the actors run).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from shardwalk.core.data.builtin import is_builtin, load_builtin, parse_builtin
from shardwalk.core.data.schema import VECTOR, to_numpy, validate_vectors
from shardwalk.core.errors import ConfigError, DataError
from shardwalk.core.index.graph_settings import GraphSettings, partitions_for, sample_rows
from shardwalk.core.storage.sources import plan_shards, read_shard

MAX_BUILD_GROWTH = 0.3  # per ln n, as benchmarks.calibrate's cap (calibrations measured up to it at 10k-50k)
SAMPLE_ROWS = 30_000  # rows a sample reads by default: a 128-d HNSW build of them takes seconds on one core
MAX_SAMPLE_ROWS = 200_000
SLICES = 8  # evenly spaced row ranges a sample is read from (data sorted by topic or time is still mixed)
EXACT_ROWS = 6_000  # the exact graph is timed on this many sample rows (its cost grows with n²)
QUERY_ROWS = 5_000  # sample rows queried against the sample's index


@dataclass(frozen=True)
class SampleCosts:
    """One-core seconds measured on a sample of the user's data, at the job's settings."""

    source: str
    rows: int  # sample rows the index and the partition graph were built on
    dim: int
    build_s_per_row: float  # average HNSW insert over a build of `rows` rows, at the job's M / ef_construction
    query_s_per_row: float  # one query for k + 1 at the job's ef against that index
    local_s_per_pair: float  # partition graph: local graphs' seconds per (row, cell row) pair of equal cells
    assign_s_per_row_cell: float  # assigning a row to its cells: seconds per (row × cell)
    train_s_per_unit: float  # k-means: seconds per (training row × cell)
    rest_s_per_row: float  # merge + refinement, per row
    exact_s_per_pair: float  # exact graph: seconds per (row, row) pair, timed on `exact_rows`
    exact_rows: int
    read_seconds: float  # reading the sample (wall)
    seconds: float  # reading + every measurement (wall)
    build_log_growth: float = 0.0  # g of the build law fitted on the sample's two halves (0: pure n·ln n)

    def as_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- growth laws


def build_growth(sample_rows: float, rows: float, slope: float = 0.0) -> float:
    """Mean-insert cost of a build of `rows` over that of `sample_rows`: 1 + slope·ln(rows / sample_rows), with
    slope 0 meaning pure n·ln n (mean insert ~ ln n − 1)."""
    pure = max(math.log(max(rows, 3.0)) - 1.0, 0.1) / max(math.log(max(sample_rows, 3.0)) - 1.0, 0.1)
    if slope <= 0:
        return pure
    return max(0.1, 1.0 + slope * math.log(max(rows, 3.0) / max(sample_rows, 3.0)))


def fit_build_growth(first_half: float, second_half: float, rows: int) -> float:
    """g of the build law from the mean insert of a build's first and second halves (rows/2 each): with
    c(s) = α + β·ln s, the halves' means are α + β·(ln(n/2) − 1) and α + β·(ln n + ln 2 − 1)."""
    pure = 1.0 / max(math.log(max(rows, 3.0)) - 1.0, 0.1)
    beta = (second_half - first_half) / (2.0 * math.log(2.0))
    mean = (first_half + second_half) / 2.0  # = α + β·(ln n − 1)
    if not (mean > 0 and math.isfinite(beta)):
        return pure
    return min(MAX_BUILD_GROWTH, max(pure, beta / mean))


def query_growth(sample_rows: float, rows: float, slope: float = 0.0) -> float:
    """One query's cost on an index of `rows` over one on `sample_rows` rows: ~ ln n, or 1 + slope·ln(rows /
    sample_rows) when that is steeper (the machine's law: an index outgrowing the caches)."""
    pure = math.log(max(rows, 2.0)) / math.log(max(sample_rows, 2.0))
    return max(pure, 1.0 + slope * math.log(max(rows, 2.0) / max(sample_rows, 2.0))) if rows > sample_rows else pure


def partition_pairs_per_row(rows: int, settings: GraphSettings) -> float:
    """Pairs a row meets in its local graphs: overlap cells of overlap·rows / P rows each."""
    parts = partitions_for(rows, settings)
    overlap = min(settings.overlap, parts)
    return overlap * overlap * rows / parts


def partition_seconds(costs: SampleCosts, rows: int, settings: GraphSettings) -> dict[str, float]:
    """One-core seconds of the partition method's steps at `rows` (train runs once, on the driver)."""
    parts = partitions_for(rows, settings)
    if parts == 1:
        return {"train": 0.0, "assign": 0.0, "local": exact_seconds(costs, rows), "rest": 0.0}
    return {"train": costs.train_s_per_unit * sample_rows(rows, parts) * parts,
            "assign": costs.assign_s_per_row_cell * rows * parts,
            "local": costs.local_s_per_pair * rows * partition_pairs_per_row(rows, settings),
            "rest": costs.rest_s_per_row * rows * max(1, settings.refine_rounds)}


def exact_seconds(costs: SampleCosts, rows: int) -> float:
    """One-core seconds of the exact graph: every pair."""
    return costs.exact_s_per_pair * float(rows) * float(rows)


# ----------------------------------------------------------------------------- reading the sample


def read_sample(source: str, rows: int = SAMPLE_ROWS, vector_column: str = VECTOR, slices: int = SLICES
                ) -> np.ndarray:
    """Up to `rows` vectors of `source`: the first rows of `slices` evenly spaced row ranges, reading only
    the Parquet row groups they touch (a built-in generated dataset is generated at the sample's size)."""
    where = f"sample of {source}"
    if is_builtin(source):
        name, params = parse_builtin(source)
        sized = {**params, "n": min(params.get("n", rows), rows)} if name in ("synthetic", "mnist1d") else params
        query = "&".join(f"{k}={v}" for k, v in sized.items())
        table = load_builtin(f"builtin:{name}" + (f"?{query}" if query else ""))
        specs = plan_shards(table.slice(0, rows), 1)
        vector_column = VECTOR
    else:
        specs = plan_shards(source, slices)
    per = math.ceil(rows / len(specs))
    pieces = [read_shard(dataclasses.replace(s, stop=min(s.stop, s.start + per)), [vector_column]) for s in specs]
    column = pa.concat_tables(pieces).column(vector_column)
    table = pa.table({"id": pa.array(np.arange(len(column), dtype=np.int64)), VECTOR: column})
    return to_numpy(validate_vectors(table, where=where))[1]


# ----------------------------------------------------------------------------- measuring


def measure(source: str, *, k: int, M: int, ef_construction: int, ef: int, settings: GraphSettings,
            space: str = "l2", rows: int = SAMPLE_ROWS, vector_column: str = VECTOR) -> SampleCosts:
    """Read a sample of `source` and time, on one core, an HNSW build and queries at the job's settings, the
    partition graph's steps and the exact graph on part of it. DataError if the sample is unusable."""
    if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= MAX_SAMPLE_ROWS:
        raise ConfigError(f"--sample-rows must be an integer in [1, {MAX_SAMPLE_ROWS}], got {rows!r}")
    began = time.perf_counter()
    x = read_sample(source, rows, vector_column)
    read_seconds = time.perf_counter() - began
    if len(x) < k + 1:
        raise DataError(f"sample of {source}: {len(x)} rows, but a kNN graph with k={k} needs at least k + 1 = {k + 1}")
    costs = measure_arrays(x, k=k, M=M, ef_construction=ef_construction, ef=ef, settings=settings, space=space)
    return dataclasses.replace(costs, source=source, read_seconds=read_seconds, seconds=time.perf_counter() - began)


def measure_arrays(x: np.ndarray, *, k: int, M: int, ef_construction: int, ef: int, settings: GraphSettings,
                   space: str = "l2") -> SampleCosts:
    """The one-core costs of `x`'s rows (k + 1 of them at least); `benchmarks.calibrate` runs it on generated data."""
    from threadpoolctl import threadpool_limits

    from shardwalk.core.index import knn_partition as kp  # numba: only a measurement needs the kernels

    began = time.perf_counter()
    with threadpool_limits(limits=1), _numba_threads(1):
        build, query, growth = _time_hnsw(x, k, M, ef_construction, ef, space)
        graph = _time_partition(x, k, settings, space)
        exact_rows = min(len(x), EXACT_ROWS)
        exact = _timed(kp.local_graph, np.arange(exact_rows), x[:exact_rows], k, space, settings.block)
    return SampleCosts("arrays", len(x), x.shape[1], build, query, exact_s_per_pair=exact / exact_rows**2,
                       exact_rows=exact_rows, read_seconds=0.0, seconds=time.perf_counter() - began,
                       build_log_growth=growth, **graph)


def _timed(fn: Callable[..., object], *args: object) -> float:
    began = time.process_time()
    fn(*args)
    return time.process_time() - began


class _numba_threads:
    """numba's thread count set for a block and restored (the kernels are prange loops)."""

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def __enter__(self) -> None:
        import numba

        self.before = numba.get_num_threads()
        numba.set_num_threads(self.threads)

    def __exit__(self, *exc: object) -> None:
        import numba

        numba.set_num_threads(self.before)


def _time_hnsw(x: np.ndarray, k: int, M: int, ef_construction: int, ef: int, space: str
               ) -> tuple[float, float, float]:
    """(seconds per insert, seconds per query, the build law's fitted growth) of hnswlib on one thread."""
    import hnswlib

    index = hnswlib.Index(space=space, dim=x.shape[1])
    index.init_index(max_elements=len(x), M=M, ef_construction=ef_construction, random_seed=100)
    index.set_num_threads(1)
    half = len(x) // 2
    first = _timed(index.add_items, x[:half], np.arange(half))
    second = _timed(index.add_items, x[half:], np.arange(half, len(x)))
    index.set_ef(max(ef, k + 1))
    queries = x[np.random.default_rng(0).choice(len(x), min(len(x), QUERY_ROWS), replace=False)]
    query = _timed(index.knn_query, queries, min(k + 1, len(x)))
    growth = fit_build_growth(first / max(half, 1), second / max(len(x) - half, 1), len(x))
    return (first + second) / len(x), query / len(queries), growth


def _time_partition(x: np.ndarray, k: int, settings: GraphSettings, space: str) -> dict[str, float]:
    """Per-unit seconds of the partition method's steps on the sample (the steps kp.build_graph runs)."""
    from shardwalk.core.index import knn_partition as kp  # numba: only a measurement needs the kernels

    n = len(x)
    ids = np.arange(n, dtype=np.int64)
    parts = max(2, partitions_for(n, dataclasses.replace(settings, method="partition")))  # a sample small enough for one cell is still timed in cells
    # every kernel the steps run is compiled (or loaded from numba's cache) before the clock starts: on a cold
    # cache ~4 s of compiling went into the 30k sample's k-means (0.17 s warm) and ~3 s into its local graphs (0.8 s)
    kp.warm_kernels(1, "partition")
    clock = time.process_time  # CPU seconds: on one thread, the one-core cost even on a busy machine
    began = clock()
    router = kp.train_partitions(x[kp.training_rows(n, parts, settings.seed)], parts, space, settings.seed, settings.overlap)
    train = clock() - began
    member = kp.assign(router, x, settings.overlap)
    assign = clock() - began - train
    nb, d = kp.local_candidates(ids, x, member, range(parts), k, space, settings.block)
    local = clock() - began - train - assign
    kp.refine_home(ids, nb, d, ids, x, max(1, settings.refine_rounds), space, min_update_rate=0.0)
    rest = clock() - began - train - assign - local
    # per pair of ideal equal cells (overlap²·n/P a row): the sample's cell imbalance (k-means cells may hold
    # 1.5× the mean; measured Σ size² ≈ 1.7× ideal at 100k) stays inside the unit cost
    overlap = min(settings.overlap, parts)
    pairs = n * overlap * overlap * n / parts
    return {"local_s_per_pair": local / max(pairs, 1.0), "assign_s_per_row_cell": assign / (n * parts),
            "train_s_per_unit": train / (sample_rows(n, parts) * parts),
            "rest_s_per_row": rest / n / max(1, settings.refine_rounds)}
