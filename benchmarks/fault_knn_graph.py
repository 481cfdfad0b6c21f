"""bench_faults scenario "shard killed during knn_graph" (issue 17 item 2), kept in its own file for merging."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np


def knn_graph_kill(quick: bool) -> dict[str, Any]:
    """Kill shard 1's actor while the all-points graph runs; the graph must equal a fault-free one."""
    import pyarrow.parquet as pq
    import ray

    from shardwalk.core.data.builtin import synthetic
    from shardwalk.workers.sharded_index import ShardedIndex

    n, d = (1500, 16) if quick else (5000, 32)
    data = synthetic(n=n, d=d, seed=11)[0]
    with tempfile.TemporaryDirectory(prefix="bench-faults-graph-") as tmp, \
            ShardedIndex.build(data, shards=2, M=8, ef_construction=64, cpus_per_actor=0) as index:
        began = time.perf_counter()
        index.knn_graph(Path(tmp) / "clean", k=5, batch_size=100)
        clean_s = time.perf_counter() - began
        victim = index.actors[1][0]
        victim.search.remote(np.random.default_rng(0).normal(size=(40_000, d)).astype(np.float32), 10, 400)
        real_wait, killed = ray.wait, []

        def wait(*args: Any, **kwargs: Any) -> Any:
            if not killed:
                killed.append(True)
                ray.kill(victim, no_restart=False)
            return real_wait(*args, **kwargs)

        began, err = time.perf_counter(), ""
        try:
            with mock.patch.object(ray, "wait", wait):
                index.knn_graph(Path(tmp) / "faulted", k=5, batch_size=100)
        except Exception as exc:  # the scenario reports it
            err = f"{type(exc).__name__}: {str(exc)[:200]}"
        faulted_s = time.perf_counter() - began
        same = not err and pq.read_table(Path(tmp) / "clean").sort_by("id").equals(pq.read_table(Path(tmp) / "faulted").sort_by("id"))
    return {"name": "hnsw_kill_during_knn_graph", "finished": not err, "identical": bool(same),
            "time_ratio": round(faulted_s / clean_s, 3) if clean_s > 0 else None,
            "faulted_seconds": round(faulted_s, 3), "clean_seconds": round(clean_s, 3),
            "note": err or "the lost batches were redone on the restarted actor"}
