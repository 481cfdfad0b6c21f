"""Fault-injection helpers shared by benchmarks/bench_faults.py and tests/test_faults*.py.

A simulated cluster (0-CPU head plus 1-CPU worker nodes), waits that poll a progress marker with a
deadline (never a fixed sleep), node loss and replacement, actors found by class, a call run in a
background thread, and the small SRRW problem every walker fault runs.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

TIMEOUT_S = 300.0
ROOT = Path(__file__).resolve().parents[1]


def scenario_result(name: str, finished: bool, identical: bool, faulted_s: float, clean_s: float, note: str) -> dict[str, Any]:
    """One bench_faults row: did the faulted job finish, with the fault-free answer, how much slower."""
    return {"name": name, "finished": bool(finished), "identical": bool(identical),
            "time_ratio": round(faulted_s / clean_s, 3) if clean_s > 0 else None,
            "faulted_seconds": round(faulted_s, 3), "clean_seconds": round(clean_s, 3), "note": note}


def refusal_result(name: str, code: int, expected: int, message: str, ok: bool, seconds: float, note: str) -> dict[str, Any]:
    """A scenario whose documented outcome is a refusal: the exit code and the one line the user reads."""
    return {"name": name, "finished": False, "identical": False, "refused": True, "exit_code": code,
            "expected_exit_code": expected, "as_documented": bool(ok and code == expected), "message": message,
            "time_ratio": None, "faulted_seconds": round(seconds, 3), "clean_seconds": None, "note": note}


def poll(what: str, ready: Callable[[], Any], timeout: float = TIMEOUT_S) -> Any:
    """Call `ready` until it returns something truthy; TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (value := ready()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


@contextlib.contextmanager
def simulated_cluster(workers: int = 2, node_disks: Path | None = None) -> Iterator[Any]:
    """A `ray.cluster_utils.Cluster` (head with 0 CPUs, `workers` nodes of 1 CPU) with the driver attached.

    `node_disks`: every node, those `add_node` brings later too, gets a scratch and a download cache of its own
    under it (SHARDWALK_SCRATCH, SHARDWALK_LOCAL_CACHE), as on a cluster without shared disk (`node_disk`).
    """
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    if node_disks is not None:
        _NODE_DISKS[id(cluster)] = node_disks
    try:
        for _ in range(workers):
            _new_node(cluster)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING")
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        _NODE_DISKS.pop(id(cluster), None)


_NODE_DISKS: dict[int, Path] = {}  # id(cluster) -> the folder holding each of its nodes' own disk
_DISK_OF: dict[str, Path] = {}  # node id -> that node's own disk


def _new_node(cluster: Any) -> Any:
    """A 1-CPU node; with a disk of its own if its cluster has node disks."""
    root = _NODE_DISKS.get(id(cluster))
    if root is None:
        return cluster.add_node(num_cpus=1)
    disk = root / f"node{sum(1 for _ in root.glob('node*'))}"
    disk.mkdir(parents=True)
    node = cluster.add_node(num_cpus=1, env_vars={"SHARDWALK_SCRATCH": str(disk / "scratch"),
                                                  "SHARDWALK_LOCAL_CACHE": str(disk / "cache")})
    _DISK_OF[node.node_id] = disk
    return node


def node_disk(node_id: str) -> Path:
    """The folder of a node's own scratch and cache (a node of a cluster started with `node_disks`)."""
    return _DISK_OF[node_id]


def actors(class_name: str, state: str | None = "ALIVE") -> dict[str, str]:
    """actor id -> node id of the actors of one class (read from the GCS; no dashboard needed)."""
    import ray

    return {aid: info.get("Address", {}).get("NodeID", "") for aid, info in ray._private.state.actors().items()
            if info.get("ActorClassName", "").endswith(class_name) and (state is None or info.get("State") == state)}


def new_actors(class_name: str, before: set[str], count: int) -> dict[str, str]:
    """The live actors of `class_name` not in `before`, once there are `count` of them (else empty)."""
    alive = {k: v for k, v in actors(class_name).items() if k not in before}
    return alive if len(alive) >= count else {}


def lose_node(cluster: Any, node_id: str, timeout: float = TIMEOUT_S) -> None:
    """Hard-remove worker node `node_id` (its raylet and workers die) and wait until Ray marks it dead."""
    import ray

    victim = next(n for n in cluster.worker_nodes if n.node_id == node_id)
    cluster.remove_node(victim, allow_graceful=False)
    poll("the removed node to be marked dead",
         lambda: not any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes()), timeout)


def add_node(cluster: Any, timeout: float = TIMEOUT_S) -> str:
    """Add a 1-CPU node, as an autoscaler would replace a lost one; wait until its CPU counts."""
    import ray

    node = _new_node(cluster)
    cluster.wait_for_nodes()
    poll("the new node's CPU", lambda: ray.cluster_resources().get("CPU", 0) >= 2, timeout)
    return node.node_id


class Background(threading.Thread):
    """Runs a call in a thread and keeps its result or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn, self.result, self.error = fn, None, None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # the fault is expected to surface here: the caller reports it
            self.error = exc

    def outcome(self, timeout: float = TIMEOUT_S) -> tuple[Any, BaseException | None]:
        """(result, exception) once the call returned; TimeoutError if it is still running."""
        self.join(timeout)
        if self.is_alive():
            raise TimeoutError(f"the background call did not return within {timeout:.0f} s")
        return self.result, self.error


def walk_problem() -> tuple[Any, Any]:
    """A small logistic problem over les_miserables agents."""
    from shardwalk.core.srrw.agents import standard_graph
    from shardwalk.core.srrw.objectives import LogisticRegression, add_intercept

    graph = standard_graph("les_miserables")
    rng = np.random.default_rng(0)
    w = rng.normal(size=4)
    blocks = {}
    for node in graph.nodes():
        x = rng.normal(size=(2, 4)) + (node % 3)
        blocks[node] = (add_intercept(x), (x @ w > 0).astype(np.int64))
    return LogisticRegression(blocks, lam=0.1), graph


class CountingServer:
    """A moto S3 server on 127.0.0.1 (port 0) that records every HTTP request it receives (method and path)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.requests: list[str] = []

    def __enter__(self) -> CountingServer:
        import logging

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto logs every request otherwise
        self.server.start()
        wsgi = self.server._server  # werkzeug's server: wrap its app to see every request
        inner = wsgi.app

        def counted(environ: dict[str, Any], start_response: Any) -> Any:
            self.requests.append(f"{environ['REQUEST_METHOD']} {environ.get('PATH_INFO')}")
            return inner(environ, start_response)

        wsgi.app = counted
        self.port = self.server.get_host_and_port()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()


def run_cli(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str, float]:
    """`shardwalk ARGS` as its own process: exit code, its `shardwalk:` lines, stdout, seconds."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full_env.pop("RAY_ADDRESS", None)
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "shardwalk.pipelines.cli", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("shardwalk:")]
    return proc.returncode, " | ".join(lines), proc.stdout, time.perf_counter() - began


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound once, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
