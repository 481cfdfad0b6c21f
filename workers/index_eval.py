"""Evaluation tasks of an index (a seeded sample, exact top-k per part) and a process's memory figures."""

from __future__ import annotations

import dataclasses
import os
import resource
from typing import Any

import numpy as np
import ray

from shardwalk.core.data.builtin import hash_unit
from shardwalk.core.data.schema import to_numpy
from shardwalk.core.index import hnsw
from shardwalk.core.storage.sources import read_shard, releasing_arrow_memory

EXACT_ROWS = 65_536  # rows of a part read and searched at once by the exact evaluation


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
    # read and search EXACT_ROWS at a time: a task's memory stays flat whatever the part's size (a whole
    # 500,000-row part took ~1 GB a task at 1M x 128), and 8,192-row distance blocks keep the temporaries small
    step = EXACT_ROWS if spec.table is None else max(spec.num_rows, 1)  # an in-memory spec is read whole
    found = []
    for lo in range(spec.start, spec.stop, step):
        piece = dataclasses.replace(spec, start=lo, stop=min(lo + step, spec.stop))
        ids, vecs = to_numpy(read_shard(piece, ["id", "vector"]))
        found.append(hnsw.exact_search(queries, vecs, ids, k, space, data_block=8192))
    return hnsw.merge_results(found, k)
