"""Evaluation tasks of an index (a seeded sample, exact top-k per part) and a process's memory figures."""

from __future__ import annotations

import os
import resource
from typing import Any

import numpy as np
import ray

from core import hnsw
from core.datasets import hash_unit
from core.io import read_shard, releasing_arrow_memory
from core.schema import to_numpy


def rss_bytes() -> int:
    """Resident memory of this process now (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """The highest resident memory this process has had."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@ray.remote(num_cpus=1)
@releasing_arrow_memory
def sample_part(spec: Any, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows of one part whose seeded id hash falls below `fraction` (layout-independent sample)."""
    ids, vecs = to_numpy(read_shard(spec, ["id", "vector"]))
    keep = hash_unit(ids, seed) < fraction
    return ids[keep].copy(), vecs[keep].copy()


@ray.remote(num_cpus=1)
@releasing_arrow_memory
def exact_part(spec: Any, queries: np.ndarray, k: int, space: str) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k of `queries` within one part (merged by the caller into the exact answer)."""
    ids, vecs = to_numpy(read_shard(spec, ["id", "vector"]))
    # 8,192 rows a block: the distance block and its temporaries stay ~50 MB (32,768 took ~200 MB a task)
    return hnsw.exact_search(queries, vecs, ids, k, space, data_block=8192)
