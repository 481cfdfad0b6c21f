"""What a process imports: each Ray worker pays for its imports (a suite starts hundreds), so a heavy library is
imported where it is used, not by every module that names a setting or a class."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _imported(modules: list[str], libraries: list[str]) -> list[str]:
    """Which of `libraries` a fresh interpreter holds after importing `modules`."""
    code = f"import sys\nimport {', '.join(modules)}\nprint(' '.join(m for m in {libraries!r} if m in sys.modules))\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.split()


@pytest.mark.parametrize("modules, absent", [
    # numba costs ~0.15-0.3 CPU-s to import and ~0.8 s more on its first kernel call: the kNN graph's settings
    # live apart from its kernels (core/index/graph_settings.py), `plan --sample` and the graph stage import
    # them when they run, and a walk when it first draws
    (["shardwalk.core.index.spec", "shardwalk.pipelines.coreset", "shardwalk.pipelines.srrw",
      "shardwalk.pipelines.index", "shardwalk.pipelines.demo", "shardwalk.pipelines.plan",
      "shardwalk.workers.sharded_index"], ["numba"]),
    # a walker actor given its data in memory never reads Parquet: pyarrow.dataset (which imports pandas,
    # ~0.35 CPU-s) waits for a BlockLoader's first read
    (["shardwalk.workers.walker"], ["numba", "pyarrow.dataset", "pandas"]),
])
def test_heavy_libraries_wait_until_they_are_used(modules: list[str], absent: list[str]) -> None:
    assert _imported(modules, absent) == []


def test_graph_settings_are_one_class_whichever_module_a_caller_names() -> None:
    from shardwalk.core.index import knn_partition
    from shardwalk.core.index.graph_settings import GraphSettings

    assert knn_partition.GraphSettings is GraphSettings
