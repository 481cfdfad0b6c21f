"""Streaming queries: search tasks (the engine since issue 27) beside the actor pool they replaced, one run.

    python -m benchmarks.bench_query_stream --json benchmarks/results/query_stream.json
    python -m benchmarks.bench_query_stream --n 20000 --queries 40000 --json /tmp/q.json    # a smoke test

One index (clustered 32-d vectors, 2 shards, M8 efC64), opened for streaming once; the same Parquet query
file (the base vectors, `--queries` rows) streamed through Ray Data's `map_batches` → `write_parquet` with
`search_blocks` as tasks (`compute=TaskPoolStrategy(size=2)`) and as a 2-actor pool (`ActorPoolStrategy`,
what `SearchBlocks` did), in alternation, `--repeats` times each; the answers of both are checked equal.
Reported: queries/s of each (median of the repeats), their ratio, and whether Ray's core printed its
"constructor arguments in the object store" ERROR line (captured on the driver's stderr, fd 2). The load
average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from shardwalk.core.data.schema import from_numpy

ENGINES = ("tasks", "actor_pool")


class _PoolSearch:
    """What `SearchBlocks` was: an actor of a Ray Data pool calling the same per-block search."""

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        from shardwalk.workers.query_stream import search_blocks

        return search_blocks(batch, *self.args)


def _answers(engine: str, index: Any, dataset: Any, settings: Any) -> Any:
    import ray.data

    from shardwalk.workers import query_stream

    if engine == "tasks":
        return query_stream._answers(index, dataset, settings, "queries")
    return dataset.map_batches(
        _PoolSearch, fn_constructor_args=(index.meta, index.actors, settings, "queries", None),
        batch_size=settings.block_size, batch_format="numpy", num_cpus=query_stream.POOL_ACTOR_CPUS,
        compute=ray.data.ActorPoolStrategy(size=settings.pool))


def _stream(engine: str, index: Any, queries: Path, out: Path, settings: Any) -> float:
    import ray.data

    dataset = ray.data.read_parquet(str(queries)).select_columns(["id", "vector"])
    began = time.perf_counter()
    _answers(engine, index, dataset, settings).write_parquet(str(out))
    return time.perf_counter() - began


def _stderr_lines(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def run(n: int, queries: int, repeats: int) -> dict[str, Any]:
    import ray

    from shardwalk.pipelines.runtime import connect
    from shardwalk.workers.query_stream import QuerySettings, open_for_stream
    from shardwalk.workers.quiet import quiet_ray_data
    from shardwalk.workers.sharded_index import ShardedIndex

    load = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-query-stream-"))
    err = work / "stderr.txt"
    saved = os.dup(2)
    with open(err, "w") as handle:  # Ray's core writes to fd 2 directly
        os.dup2(handle.fileno(), 2)
    try:
        connect(num_cpus=os.cpu_count())
        quiet_ray_data()
        rng = np.random.default_rng(0)
        centers = rng.normal(size=(64, 32)).astype(np.float32) * 4
        x = (centers[rng.integers(0, 64, n)] + rng.normal(size=(n, 32))).astype(np.float32)
        with ShardedIndex.build(x, shards=2, M=8, ef_construction=64, cpus_per_actor=0) as built:
            built.save(work / "index")
        rows = np.arange(queries) % n
        pq.write_table(from_numpy(x[rows], ids=np.arange(queries)), work / "queries.parquet")
        settings = QuerySettings(k=10, ef=64, block_size=8192, pool=2)
        seconds: dict[str, list[float]] = {e: [] for e in ENGINES}
        marks: dict[str, bool] = {}
        with open_for_stream(work / "index", settings.pool) as index:
            for r in range(repeats):
                for engine in ENGINES:
                    before = len(_stderr_lines(err))
                    seconds[engine].append(_stream(engine, index, work / "queries.parquet", work / f"{engine}-{r}", settings))
                    marks[engine] = marks.get(engine, False) or "core_worker.cc" in _stderr_lines(err)[before:]
        same = all(pq.read_table(work / f"tasks-{r}").sort_by("id").equals(pq.read_table(work / f"actor_pool-{r}").sort_by("id"))
                   for r in range(repeats))
        ray.shutdown()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    qps = {e: queries / statistics.median(s) for e, s in seconds.items()}
    return {"rows": n, "queries": queries, "repeats": repeats, "load_average_before": list(load),
            "seconds": seconds, "tasks_qps": qps["tasks"], "actor_pool_qps": qps["actor_pool"],
            "tasks_vs_actor_pool_qps_ratio": qps["tasks"] / qps["actor_pool"], "same_answers": same,
            "ray_core_error_line": marks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="base vectors (default 100,000)")
    parser.add_argument("--queries", type=int, default=400_000, help="queries streamed per run (default 400,000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    result = run(args.n, args.queries, args.repeats)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "seconds"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
