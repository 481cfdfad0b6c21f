"""Shared fixtures: one local Ray per session, a simulated multi-node cluster for the few tests that need it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Quiet, loopback-only, no dashboard: the same defaults the CLI uses.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run multi-node tests last, so the session's local Ray is started once and shut down once."""
    items.sort(key=lambda item: item.get_closest_marker("multinode") is not None)


@pytest.fixture(scope="session")
def _ray_session() -> Iterator[None]:
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def ray_local(_ray_session: None) -> Iterator[None]:
    """A local Ray with 2 CPUs, started on first use and shared by the whole session."""
    import ray

    from pipelines.runtime import connect

    if not ray.is_initialized():
        connect(num_cpus=2)
    yield


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[object]:
    """A simulated cluster: head with 0 CPUs plus 2 worker nodes of 1 CPU; tests may add or remove nodes."""
    from benchmarks.faultkit import simulated_cluster

    with simulated_cluster(workers=2) as cluster:
        yield cluster
