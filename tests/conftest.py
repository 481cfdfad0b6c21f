"""Shared fixtures: one local Ray per session, a simulated multi-node cluster for the few tests that need it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

import shardwalk  # noqa: F401  (first: it sets Ray's loopback switch before a test module imports ray)

# Quiet, loopback-only, no dashboard: the same defaults the CLI uses.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Ray keeps one idle worker per CPU and kills the rest after 1 s. The suite runs hundreds of short stages and tasks
# one after another, and a worker that has imported torch or numba saves the next task 2-4 s of CPU: keep them.
# (Ray's config variables, read when a Ray starts; every Ray of the session inherits them, CLI subprocesses too.)
os.environ.setdefault("RAY_num_workers_soft_limit", "8")
os.environ.setdefault("RAY_idle_worker_killing_time_threshold_ms", "600000")
# The node-loss tests wait until the GCS marks a killed node dead: 16 s at Ray's 3 s health-check period, 8 s at
# 1 s (failure threshold and timeout unchanged, so a slow but live node is no likelier to be declared dead).
os.environ.setdefault("RAY_health_check_period_ms", "1000")
# What every Ray process reports that no test reads: task events (the state API's task list, the timeline), metrics
# (for a dashboard the suite does not start) and event-loop statistics. Off, three Ray-heavy modules took 2.5 % less
# CPU (164.8 and 166.3 CPU-s against 169.7 and 170.0, alternating runs; CHANGELOG).
for _name in ("RAY_task_events_report_interval_ms", "RAY_enable_metrics_collection", "RAY_event_stats",
              "RAY_enable_timeline"):
    os.environ.setdefault(_name, "0")


# Under pytest-xdist (`make test`: `-n <cores + 1> --dist loadgroup`) each worker is a process of its own with its
# own local Ray, S3 server and simulated cluster. The tests of one group run on one worker, one after another.
# The groups are named here by test id, not by `xdist_group` marks: xdist 3.8 marks a group by rewriting
# `item._nodeid`, which pytest 9 no longer reads, so marks would silently group nothing.
_XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
MULTINODE_GROUP = "multinode"  # every simulated cluster on one worker: one at a time, the shared one started once
GROUPS = {  # test id or module -> group
    "tests/test_faults_multinode.py": MULTINODE_GROUP,
    "tests/test_store_multinode.py": MULTINODE_GROUP,
    "tests/test_hnsw_shard.py::test_replicas_on_different_nodes_survive_a_node_loss": MULTINODE_GROUP,
    "tests/test_walker.py::test_distributed_matches_reference_on_a_multinode_cluster": MULTINODE_GROUP,
    # modules whose module-scoped fixtures run Ray or build a wheel: built once, on one worker
    "tests/test_wheel.py": "wheel",
    "tests/test_faults.py": "faults",
    "tests/test_scorer.py": "scorer",
    "tests/test_knn_graph.py": "knn_graph",
    "tests/test_query_stream.py": "query_stream",
    # numba kernels compiled on first use (a fresh clone has no cache yet): compiled once, not once per worker
    "tests/test_knn_partition.py": "numba_knn",
    "tests/test_plan_sample.py": "numba_knn",
    # torch.optim's classes import torch._dynamo (~1.2 CPU-s, 5 s under the suite's load): once, not once per worker
    "tests/test_sgd.py": "torch_optim",
}
if _XDIST_WORKER:
    # Each worker's Ray gets its own object store: 10 % of the machine's memory each rather than Ray's 30 %.
    os.environ.setdefault("RAY_DEFAULT_OBJECT_STORE_MEMORY_PROPORTION", "0.1")


def group_of(nodeid: str) -> str | None:
    """The xdist group of a test id (GROUPS by test, then by module), or None: any worker, alone."""
    base = nodeid.split("[", 1)[0]
    return GROUPS.get(base) or GROUPS.get(nodeid.split("::", 1)[0])


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """`--dist loadgroup` with the groups of `group_of` (and the order the workers collected, see below)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid) or nodeid

    return GroupScheduling(config, log)


def _order(item: pytest.Item) -> int:
    """0: local Ray or none; 1: the shared simulated cluster; 2: multi-node tests that build their own."""
    if item.get_closest_marker("multinode") is None:
        return 0
    return 1 if "start_shared_cluster" in getattr(item, "fixturenames", ()) else 2


def _dispatch_order(items: list[pytest.Item]) -> dict[str, tuple[int, int]]:
    """Under xdist, the longest work goes out first (the multi-node group, the other groups by size, slow tests,
    the rest), so the workers end together on short tests rather than one waiting on the other's long one."""
    size: dict[str, int] = {}
    for item in items:
        if (group := group_of(item.nodeid)) is not None:
            size[group] = size.get(group, 0) + (10 if item.get_closest_marker("slow") else 1)  # a slow test ~ 10
    order = {}
    for item in items:
        group = group_of(item.nodeid)
        if group == MULTINODE_GROUP:
            order[item.nodeid] = (0, 0)
        elif group is not None:
            order[item.nodeid] = (1, -size[group])
        else:
            order[item.nodeid] = (2 if item.get_closest_marker("slow") else 3, 0)
    return order


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Local-Ray tests first, then every test on the shared simulated cluster, so each Ray starts once.

    Under xdist every multi-node test is in one group (one worker runs the clusters, one at a time) and the
    order is by expected length instead (`_dispatch_order`; `make test` keeps it: --no-loadscope-reorder).
    """
    if not _XDIST_WORKER:
        items.sort(key=_order)
        return
    for item in items:
        if (item.get_closest_marker("multinode") is not None) != (group_of(item.nodeid) == MULTINODE_GROUP):
            raise pytest.UsageError(f"{item.nodeid}: a multi-node test, and only one, goes in the {MULTINODE_GROUP!r} "
                                    "group (tests/conftest.py GROUPS)")
    order = _dispatch_order(items)
    items.sort(key=lambda item: (order[item.nodeid], group_of(item.nodeid) or "", _order(item)))


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

    from shardwalk.pipelines.runtime import connect

    if not ray.is_initialized():
        connect(num_cpus=2)
    yield


@pytest.fixture
def ray_address(ray_local: None) -> dict[str, str]:
    """The environment that has a CLI subprocess join the session's Ray instead of starting its own.

    For tests about what the CLI does rather than about Ray starting: an embedded start costs ~5 s of CPU."""
    import ray

    return {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}


_SHARED: dict[str, object] = {}  # the one simulated cluster of the session, while tests use it


@pytest.fixture(scope="session")
def start_shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], object]:
    """Starts the session's simulated cluster (0-CPU head + 2 worker nodes of 1 CPU), or returns it if running.

    Started on first use and kept across modules (each start costs ~10 s); a test that removes a worker node adds
    one back, so every test begins with two live 1-CPU workers. Each node has a disk of its own (scratch and
    download cache, `benchmarks.faultkit.node_disk`), as on a cluster without shared disk.
    """
    from benchmarks.faultkit import simulated_cluster

    def start() -> object:
        if "cluster" not in _SHARED:
            context = simulated_cluster(workers=2, node_disks=tmp_path_factory.mktemp("nodes"))
            _SHARED["context"], _SHARED["cluster"] = context, context.__enter__()
        return _SHARED["cluster"]

    return start


@pytest.fixture
def ray_cluster(start_shared_cluster: Callable[[], object]) -> Iterator[object]:
    """The session's simulated cluster, shared by every test that asks for it (`start_shared_cluster`)."""
    yield start_shared_cluster()


def _stop_shared_cluster() -> None:
    context = _SHARED.pop("context", None)
    _SHARED.pop("cluster", None)
    if context is not None:
        context.__exit__(None, None, None)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Stop the shared cluster once the tests that use it are done (tests are ordered by `_order`)."""
    if _SHARED and _order(item) != 1:
        _stop_shared_cluster()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _stop_shared_cluster()


# ----------------------------------------------------------------------------- S3 (moto) on loopback
def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _reserve_port() -> object:
    """A loopback port bound (not listening) by this process: no other process binding port 0 can be given it."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


# Set before Ray starts so every Ray worker inherits the endpoint and the dummy credentials. Each pytest-xdist
# worker runs its own server: it takes a port of its own rather than the one its parent process chose (and
# keeps it when a test imports this module a second time as `tests.conftest`). The port stays bound here until
# the server starts: Ray's processes bind ports meanwhile, and moto's start waits for ever on a taken one.
_PORT_VARIABLE = f"SHARDWALK_TEST_S3_PORT_{_XDIST_WORKER}" if _XDIST_WORKER else "SHARDWALK_TEST_S3_PORT"
_RESERVED: list = [] if os.environ.get(_PORT_VARIABLE) else [_reserve_port()]
S3_PORT = int(os.environ.get(_PORT_VARIABLE) or _RESERVED[0].getsockname()[1])
os.environ[_PORT_VARIABLE] = str(S3_PORT)
for _key, _value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                     "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}", "AWS_EC2_METADATA_DISABLED": "true"}.items():
    if _XDIST_WORKER and _key == "AWS_ENDPOINT_URL":
        os.environ[_key] = _value
    else:
        os.environ.setdefault(_key, _value)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3-compatible HTTP server (moto) on 127.0.0.1, started once per session; yields its endpoint."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    while _RESERVED:
        _RESERVED.pop().close()  # free for the server, an instant before it binds
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


@pytest.fixture
def second_server(s3_server: str) -> Iterator[object]:
    """A second moto server on 127.0.0.1 that a hostile name would redirect to: tests assert it saw nothing.

    Checked to count a request before a test relies on it; `.endpoint`, `.port` and `.requests`.
    """
    import contextlib
    import urllib.error
    import urllib.request

    from benchmarks.faultkit import CountingServer

    with CountingServer() as server:
        with contextlib.suppress(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/no-such-bucket/probe", timeout=10).read()
        assert server.requests == ["GET /no-such-bucket/probe"]  # the counter sees requests
        server.requests.clear()
        yield server
