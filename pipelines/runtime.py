"""The Ray side of running a pipeline: connecting, and submitting stages as Ray tasks."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import ray

from shardwalk.core.dag.runner import StageOptions
from shardwalk.core.errors import ClusterUnreachableError, ConfigError, one_line
from shardwalk.workers.quiet import quiet_ray_driver

log = logging.getLogger("shardwalk")

CONNECT_TIMEOUT_S = 30.0  # override with SHARDWALK_CONNECT_TIMEOUT_S


def connect_timeout() -> float:
    """Seconds to wait for a cluster's address to answer before giving up (SHARDWALK_CONNECT_TIMEOUT_S)."""
    text = os.environ.get("SHARDWALK_CONNECT_TIMEOUT_S", "")
    try:
        value = float(text) if text else CONNECT_TIMEOUT_S
    except ValueError:
        raise ConfigError(f"SHARDWALK_CONNECT_TIMEOUT_S must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise ConfigError(f"SHARDWALK_CONNECT_TIMEOUT_S must be > 0, got {text!r}")
    return value


def _bootstrap_target(address: str) -> tuple[str, int]:
    """The (host, port) that `ray.init(address)` will dial first."""
    target = address.removeprefix("ray://")
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        try:
            target = canonicalize_bootstrap_address("auto") or ""
        except (ConnectionError, ValueError) as exc:
            raise ClusterUnreachableError(f"--address auto: no Ray cluster is running on this host ({one_line(exc)})") from None
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"Ray address {address!r}: expected HOST:PORT, ray://HOST:PORT or 'auto'")
    return host.strip("[]"), int(port)


def probe(address: str, timeout: float) -> None:
    """Refuse an address nothing answers on within `timeout` s, instead of letting Ray retry for minutes.

    `ray.init` on a wrong address blocks inside Ray's retry loops (13 minutes, deaf to Ctrl-C); a plain
    TCP connect with a deadline tells a typo or a firewalled head from a live cluster in seconds.
    """
    host, port = _bootstrap_target(address)
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            _expect_grpc(sock, max(0.1, deadline - time.monotonic()))
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or one_line(exc))
        raise ClusterUnreachableError(
            f"cannot reach the Ray cluster at {address} ({host}:{port}: {reason} after at most {timeout:g} s); "
            "check --address / RAY_ADDRESS"
        ) from None


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


def _expect_grpc(sock: socket.socket, timeout: float) -> None:
    """Ray's GCS (and Ray Client) speak gRPC: an HTTP/2 server answers the client preface with a frame.

    A peer that accepts and never answers would keep `ray.init` in its retry loops for many minutes.
    """
    sock.settimeout(timeout)
    sock.sendall(HTTP2_PREFACE)
    if not sock.recv(9):
        raise ConnectionResetError(104, "closed the connection without answering (not a Ray cluster?)")


LOOPBACK = "127.0.0.1"
CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # Ray's name; "0" keeps a node's IP on loopback


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Start the embedded Ray on 127.0.0.1 with no fixed port, then put Ray's settings back.

    Ray 2.60 binds its servers (GCS, raylet, workers, dashboard agent, runtime-env agent) to the node's IP,
    but resolves a node IP of 127.0.0.1 to the routable address unless cluster mode is off
    (`services.get_node_ip_address` reads `ray_constants.ENABLE_RAY_CLUSTER`, set from
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER). The dashboard agent's HTTP port defaults to the fixed 52365 (on the
    node IP and on 127.0.0.1), which `ray.init` cannot change and which a `ray start` on the same host
    needs too: RayParams gets 0 instead (a free port).
    """
    from ray._private import parameter, ray_constants

    original_init, original_switch = parameter.RayParams.__init__, ray_constants.ENABLE_RAY_CLUSTER
    previous_env = os.environ.get(CLUSTER_SWITCH)

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("dashboard_agent_listen_port", 0)
        original_init(self, *args, **kwargs)

    parameter.RayParams.__init__ = init
    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ[CLUSTER_SWITCH] = "0"  # inherited by the raylet, the agents and the workers
    try:
        yield
    finally:
        parameter.RayParams.__init__ = original_init
        ray_constants.ENABLE_RAY_CLUSTER = original_switch
        if previous_env is None:
            os.environ.pop(CLUSTER_SWITCH, None)
        else:
            os.environ[CLUSTER_SWITCH] = previous_env


def connect(address: str | None = None, *, num_cpus: int | None = None) -> dict[str, Any]:
    """Join a cluster (`address`, or RAY_ADDRESS) or start an embedded local Ray without the dashboard.

    The embedded instance listens on 127.0.0.1 only, on free ports (`_loopback_only`), and keeps Ray's
    token authentication. A cluster that cannot be joined (unreachable, wrong token) is one
    ClusterUnreachableError line.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet_ray_driver()
    if ray.is_initialized():
        return ray.cluster_resources()
    address = address or os.environ.get("RAY_ADDRESS") or None
    common: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        probe(address, connect_timeout())
        try:
            ray.init(address=address, **common)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, auth errors ... as chained tracebacks
            ray.shutdown()
            raise ClusterUnreachableError(f"cannot join the Ray cluster at {address}: {one_line(exc)}") from None
    else:
        with _loopback_only():
            ray.init(
                address="local",  # always a fresh embedded instance, even if `ray start` ran on this machine
                num_cpus=num_cpus or os.cpu_count(),
                include_dashboard=False,
                configure_logging=True,
                _node_ip_address=LOOPBACK,
                **common,
            )
    return ray.cluster_resources()


# A stage whose own worker or node dies is retried by Ray; one whose actors died on a lost node sees one of
# these and is retried too (its temporary output is discarded, so a retry starts clean). Errors of the
# stage's own logic are not retried.
RETRIED_ERRORS = [ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.NodeDiedError,
                  ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError]


def ray_submit(fn: Callable[..., Any], args: tuple[Any, ...], options: StageOptions) -> cf.Future:
    """Run `fn(*args)` as a Ray task, retried when a worker, node or actor it depends on is lost."""
    remote = ray.remote(fn).options(
        num_cpus=options.num_cpus, max_retries=options.max_retries, retry_exceptions=RETRIED_ERRORS,
        name=f"stage:{options.name}",
    )
    return remote.remote(*args).future()
