"""Progress from Ray workers to the driver's display: small UDP datagrams, no actor, no Ray round-trip.

A stage runs as a Ray task in another process (maybe another node), so its counts cannot reach the
driver's display by a function call. The driver listens on a UDP port of its node (`Listener`); a stage
task (`run_reporting`) or a query's search task (`sending`-like, per worker process) installs a sink that sends at most a few
datagrams a second, each a whole update (units done of total), so a lost one only delays the display.
A datagram without the run's random token, or malformed, is dropped (shardwalk.core.progress.decode).

Why not a Ray generator task yielding counts: a retried generator task's items at indices already
received are dropped, so a retry that yields fewer counts than the first attempt loses its result.
"""

from __future__ import annotations

import contextlib
import contextvars
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import ray

from shardwalk.core import progress
from shardwalk.core.errors import DataError
from shardwalk.workers import raykit

SEND_INTERVAL_S = 0.5  # a sender's updates between two datagrams are folded into the next
POLL_S = 0.5  # wait_counted asks Ray what finished this often (one ray.wait per poll, not per part)
MAX_DATAGRAM = 4096

OnUpdate = Callable[[str, str, progress.Update], None]


@dataclass(frozen=True)
class Channel:
    """Where to send progress: the driver's UDP address and the run's token."""

    host: str
    port: int
    token: str


class Listener:
    """The driver's end: a UDP socket and a daemon thread handing each valid update to `on_update`."""

    def __init__(self, host: str, on_update: OnUpdate) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.channel = Channel(host, self.sock.getsockname()[1], secrets.token_hex(16))
        self.on_update = on_update
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="shardwalk-progress", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                payload = self.sock.recv(MAX_DATAGRAM)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                stage, sender, update = progress.decode(payload, self.channel.token)
            except DataError:
                continue  # a stray or hostile datagram: not ours to show
            with contextlib.suppress(Exception):  # the display must never stop the listener
                self.on_update(stage, sender, update)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=2)
        self.sock.close()


@contextlib.contextmanager
def listening(host: str, on_update: OnUpdate) -> Iterator[Channel | None]:
    """A Listener for the body; None (no progress, the work goes on) when no UDP port can be opened there."""
    try:
        listener = Listener(host, on_update)
    except OSError:
        yield None
        return
    try:
        yield listener.channel
    finally:
        listener.close()


def driver_host() -> str:
    """The address workers reach this driver on (the node's IP; 127.0.0.1 for the embedded Ray)."""
    return ray.util.get_node_ip_address()


def new_sender() -> str:
    """A sender name for one of several processes reporting the same phase (their counts are summed)."""
    return secrets.token_hex(6)


class Sender:
    """A sink sending a sender's updates, at most one datagram per SEND_INTERVAL_S (a phase's first and last always)."""

    def __init__(self, channel: Channel, stage: str, sender: str) -> None:
        self.channel, self.stage, self.sender = channel, stage, sender
        family = socket.AF_INET6 if ":" in channel.host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.throttle = progress.Throttle(SEND_INTERVAL_S)
        self.phase: str | None = None

    def __call__(self, update: progress.Update) -> None:
        edge = update.phase != self.phase or (update.total is not None and update.done >= update.total)
        self.phase = update.phase
        if self.throttle.due(force=edge):
            with contextlib.suppress(OSError):  # a full buffer or an unreachable driver: the work goes on
                self.sock.sendto(progress.encode(self.stage, self.sender, self.channel.token, update),
                                 (self.channel.host, self.channel.port))

    def close(self) -> None:
        self.sock.close()


_TARGET: contextvars.ContextVar[tuple[Channel, str] | None] = contextvars.ContextVar("progress_target", default=None)


def target() -> tuple[Channel, str] | None:
    """(channel, stage) this context reports to: work that starts actors passes it on (e.g. a query's pool)."""
    return _TARGET.get()


@contextlib.contextmanager
def targeting(channel: Channel | None, stage: str) -> Iterator[None]:
    """Make `channel` this context's progress target without a sink of its own (the driver's side)."""
    token = _TARGET.set((channel, stage) if channel is not None else None)
    try:
        yield
    finally:
        _TARGET.reset(token)


@contextlib.contextmanager
def sending(channel: Channel | None, stage: str, sender: str = "task") -> Iterator[None]:
    """Report this context's progress to `channel` as `stage` (nothing when None)."""
    if channel is None:
        yield
        return
    sink = Sender(channel, stage, sender)
    token = _TARGET.set((channel, stage))
    try:
        with progress.reporting_to(sink):
            yield
    finally:
        _TARGET.reset(token)
        sink.close()


def run_reporting(channel: Channel | None, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` with its progress sent to the driver: what a stage's Ray task runs."""
    with sending(channel, stage):
        return fn(*args)


def wait_counted(refs: list[Any], what: str, phase: str, unit: str = "parts", rows: list[int] | None = None,
                 rows_unit: str = "rows", get: Callable[..., list[Any]] | None = None) -> list[Any]:
    """`get(refs)` (default `raykit.wait_all(refs, what)`), reporting parts done (and `rows[i]` rows of
    part i) as they finish.

    One `ray.wait` per POLL_S covers every part that finished meanwhile (nothing is fetched to count it);
    a finished part's error is raised by `get` as soon as it is seen, so the caller's error handling is
    unchanged (pass `get=ray.get` where Ray's own errors must reach the stage runner's retry). Without a
    listener it is just `get(refs)`.
    """
    get = get or (lambda refs: raykit.wait_all(refs, what))
    if not progress.active() or not refs:
        return get(refs)
    weight = dict(zip(refs, rows, strict=True)) if rows is not None else {}
    pending = list(dict.fromkeys(refs))  # ray.wait refuses a ref listed twice
    tracker = progress.Tracker(phase, len(pending), unit, rows_unit if rows is not None else None)
    while pending:
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S, fetch_local=False)
        if ready:
            get(ready)
            tracker.advance(len(ready), sum(weight.get(ref, 0) for ref in ready))
    return get(refs)
