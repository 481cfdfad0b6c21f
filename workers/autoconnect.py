"""Connecting to Ray: join a cluster (probed first) or start an embedded Ray on 127.0.0.1, with public Ray only.

The CLI connects through here, and the public Python API auto-connects on first use, as Ray's own APIs do.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import ray
from ray.util import get_node_ip_address

from shardwalk import LOOPBACK_SWITCH
from shardwalk.core import validate
from shardwalk.core.errors import ClusterUnreachableError, ConfigError, one_line
from shardwalk.workers.quiet import quiet_ray_driver

CONNECT_TIMEOUT_S = 30.0  # override with SHARDWALK_CONNECT_TIMEOUT_S
LOOPBACK = "127.0.0.1"


def connect_timeout() -> float:
    """Seconds to wait for a cluster's address to answer before giving up (SHARDWALK_CONNECT_TIMEOUT_S)."""
    return validate.env_seconds("SHARDWALK_CONNECT_TIMEOUT_S", CONNECT_TIMEOUT_S)


def ray_temp_dir() -> Path:
    """Ray's temp dir as Ray documents it: $RAY_TMPDIR/ray, else $TMPDIR/ray (Linux), else /tmp/ray."""
    base = os.environ.get("RAY_TMPDIR") or (os.environ.get("TMPDIR") if sys.platform.startswith("linux") else None)
    return Path(base or "/tmp") / "ray"


def auto_address() -> str | None:
    """The address `ray.init(address="auto")` dials first: RAY_ADDRESS, else what the last `ray start` here recorded.

    None when neither exists: Ray then looks for a running GCS process itself and fails at once if none runs.
    """
    from_env = os.environ.get("RAY_ADDRESS", "")
    if from_env and from_env != "auto":
        return from_env
    record = ray_temp_dir() / "ray_current_cluster"  # named in ray.init's documentation
    try:
        return record.read_text().strip() or None
    except OSError:
        return None


def _bootstrap_target(address: str) -> tuple[str, int] | None:
    """The (host, port) that `ray.init(address)` will dial first (None: `auto` with nothing recorded)."""
    target = auto_address() if address == "auto" else address
    if target is None:
        return None
    host, _, port = target.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"Ray address {address!r}: expected HOST:PORT, ray://HOST:PORT or 'auto'")
    return host.strip("[]"), int(port)


def probe(address: str, timeout: float) -> None:
    """Refuse an address nothing answers on within `timeout` s, instead of letting Ray retry for minutes.

    `ray.init` on a wrong address blocks inside Ray's retry loops (13 minutes, deaf to Ctrl-C); a plain
    TCP connect with a deadline tells a typo or a firewalled head from a live cluster in seconds.
    """
    target = _bootstrap_target(address)
    if target is None:
        return
    host, port = target
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


def _token_hint(address: str) -> str:
    """Ray 2.60 sends its token to an explicit address only when asked: a `ray start` cluster then refuses us."""
    if address == "auto" or os.environ.get("RAY_AUTH_MODE"):
        return ""
    return ("; if the cluster uses token authentication (Ray's default for `ray start`), export RAY_AUTH_MODE=token "
            "(Ray sends ~/.ray/auth_token or RAY_AUTH_TOKEN to an explicit address only then) or use --address auto")


def check_loopback_node() -> None:
    """Refuse to start an embedded Ray that would bind a routable address.

    Ray 2.60 binds its servers to the node IP, which is 127.0.0.1 only if RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
    was "0" when `ray` was imported (`import shardwalk` sets it; too late if ray was imported first).
    """
    node_ip = get_node_ip_address()
    if node_ip != LOOPBACK:
        raise ConfigError(
            f"the embedded Ray would listen on {node_ip}, not {LOOPBACK}: {LOOPBACK_SWITCH} was not '0' when ray was "
            f"imported ({os.environ.get(LOOPBACK_SWITCH)!r} now); import shardwalk before ray or export "
            f"{LOOPBACK_SWITCH}=0, join a cluster with --address / RAY_ADDRESS, or call ray.init() yourself"
        )


def connect(address: str | None = None, *, num_cpus: int | None = None) -> dict[str, Any]:
    """Join a cluster (`address`, or RAY_ADDRESS) or start an embedded local Ray without the dashboard.

    The embedded instance listens on 127.0.0.1 only (`check_loopback_node`) and keeps Ray's token
    authentication. A cluster that cannot be joined (unreachable, wrong token) is one ClusterUnreachableError line.
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
            raise ClusterUnreachableError(f"cannot join the Ray cluster at {address}: {one_line(exc)}"
                                          f"{_token_hint(address)}") from None
    else:
        check_loopback_node()
        # Ray starts its workers at niceness 15, so shard actors yield their CPUs to any other process; in the
        # embedded instance they are the user's own job and run at the driver's priority (export it to keep 15).
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(
            address="local",  # always a fresh embedded instance, even if `ray start` ran on this machine
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            configure_logging=True,
            **common,
        )
    return ray.cluster_resources()


def ensure_ray() -> None:
    """Connect with the CLI's safe defaults (no dashboard, RAY_ADDRESS honoured) unless Ray already runs here."""
    if not ray.is_initialized():
        connect()
