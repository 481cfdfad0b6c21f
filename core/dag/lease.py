"""Heartbeat leases: a running writer says "still here" so `gc` never removes the output it is writing.

While a stage runs, `held(location)` keeps a small lease file (a local file or an object) beside the location
it writes — `<parent>/.lease-<name>@<holder>` — and a daemon thread rewrites it every `period_s`. A lease is
live while its modification time is less than `live_periods` periods old; `gc` leaves everything named
`<name>` (its attempts, temporaries and resumable state) alone while one is. A writer that dies stops
refreshing, its lease goes stale and `gc` removes it with the rest. Refreshing never recreates a parent
that has gone: a lease only vouches for a place that still exists.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shardwalk.core.storage import store

PREFIX = ".lease-"


@dataclass(frozen=True)
class LeaseSettings:
    """How often a writer refreshes its lease and how many missed refreshes make it stale."""

    period_s: float = 30.0
    live_periods: float = 4.0

    @property
    def lifetime_s(self) -> float:
        """How long a lease holds without a refresh."""
        return self.live_periods * self.period_s

    @classmethod
    def from_env(cls) -> LeaseSettings:
        """SHARDWALK_LEASE_PERIOD_S overrides the period (tests and benchmarks shorten it)."""
        period = os.environ.get("SHARDWALK_LEASE_PERIOD_S")
        return cls(period_s=float(period)) if period else cls()


def lease_location(location: str | os.PathLike, holder: str) -> str:
    """`<parent>/.lease-<name>@<holder>` beside `location` (a path or a URI, its query string kept)."""
    text = os.fspath(location)
    if not store.is_uri(text):
        path = Path(text)
        return str(path.parent / f"{PREFIX}{path.name}@{holder}")
    base, sep, query = text.partition("?")
    parent, name = base.rstrip("/").rsplit("/", 1)
    return f"{parent}/{PREFIX}{name}@{holder}{sep}{query}"


def protected_name(lease_name: str) -> str | None:
    """The name a lease file (by its base name) protects, or None if it is not a lease."""
    if not lease_name.startswith(PREFIX) or "@" not in lease_name:
        return None
    return lease_name[len(PREFIX):].split("@", 1)[0]


def is_live(age_s: float, body: Any, settings: LeaseSettings | None = None) -> bool:
    """Whether a lease last written `age_s` seconds ago still holds (its own period if it names one)."""
    settings = settings or LeaseSettings.from_env()
    period = body.get("period_s") if isinstance(body, dict) else None
    period = float(period) if isinstance(period, int | float) and period > 0 else settings.period_s
    return age_s < settings.live_periods * period


def _write(where: str, body: dict[str, Any], create_parent: bool) -> None:
    data = json.dumps({**body, "refreshed": time.time()}).encode()
    if store.is_remote(where):
        store.write_bytes(where, data)
        return
    path = store.local_path(where)
    if create_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)  # FileNotFoundError when the parent has gone: never recreated by a refresh


def _remove(where: str) -> None:
    with contextlib.suppress(OSError):
        if store.is_remote(where):
            fs, path = store.resolve(where)
            fs.delete_file(path)
        else:
            store.local_path(where).unlink(missing_ok=True)


@contextlib.contextmanager
def held(location: str | os.PathLike, settings: LeaseSettings | None = None) -> Iterator[str]:
    """Hold a refreshed lease on `location` while the body runs; yields the lease's own location."""
    settings = settings or LeaseSettings.from_env()
    where = lease_location(location, f"{socket.gethostname()}@{os.getpid()}@{uuid.uuid4().hex[:8]}")
    body = {"location": os.fspath(location), "host": socket.gethostname(), "pid": os.getpid(),
            "period_s": settings.period_s}
    _write(where, body, create_parent=True)
    stop = threading.Event()
    thread = threading.Thread(target=_refresh, args=(where, body, settings.period_s, stop), daemon=True,
                              name=f"lease {Path(os.fspath(location)).name}")
    thread.start()
    try:
        yield where
    finally:
        stop.set()
        thread.join()
        _remove(where)


def _refresh(where: str, body: dict[str, Any], period_s: float, stop: threading.Event) -> None:
    """Rewrite the lease every period until stopped; a failed refresh is retried at the next one."""
    while not stop.wait(period_s):
        with contextlib.suppress(OSError):  # an unreachable store or a removed parent: the lease goes stale
            _write(where, body, create_parent=False)
