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


# ----------------------------------------------------------------------------- S3 (moto) on loopback
def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Set before Ray starts so every Ray worker inherits the endpoint and the dummy credentials.
S3_PORT = int(os.environ.get("SHARDWALK_TEST_S3_PORT") or _free_port())
os.environ["SHARDWALK_TEST_S3_PORT"] = str(S3_PORT)
for _key, _value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                     "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}", "AWS_EC2_METADATA_DISABLED": "true"}.items():
    os.environ.setdefault(_key, _value)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3-compatible HTTP server (moto) on 127.0.0.1, started once per session; yields its endpoint."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{S3_PORT}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """A fresh, empty bucket; yields its s3:// URI."""
    import uuid

    import pyarrow.fs as pafs

    name = f"test-{uuid.uuid4().hex[:12]}"
    fs = pafs.S3FileSystem(endpoint_override=s3_server, scheme="http", allow_bucket_creation=True, region="us-east-1")
    fs.create_dir(name)
    return f"s3://{name}"
